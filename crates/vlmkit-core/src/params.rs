//! Named parameters: creation with seeded initialisation, loading, saving, freezing.
//!
//! Every model is built through a candle `VarBuilder` backed by a [`ParamStore`]:
//! one code path serves fresh initialisation, loading a checkpoint, and training.
//!
//! - A parameter that the store already holds (loaded, or created by an earlier
//!   build) is reused; a shape that differs is an error that names both shapes.
//! - A missing parameter is initialised from a random stream keyed by the seed and
//!   the parameter's *name*, so initial values do not depend on construction order.
//!   In strict mode (loading a checkpoint), a missing parameter is an error instead.
//! - Trainable parameters are handed out as `Var`s; frozen ones as plain tensors
//!   sharing the same storage, which keeps them out of the autograd graph entirely.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::rng::Rng;

#[derive(Default)]
struct Inner {
    vars: BTreeMap<String, Var>,
    /// Names handed out by the builders since the last `begin_build`.
    requested: BTreeSet<String>,
    /// Values that parameters start from instead of their `Init` when a builder
    /// creates them (structured initialisations such as a position table).
    initial_values: BTreeMap<String, Tensor>,
}

/// The model's parameters by full dotted name (`llm.model.layers.0.mlp.up_proj.weight`).
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<Inner>>,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("ParamStore")
            .field("params", &inner.vars.len())
            .field("device", &self.device)
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// What a builder does with a parameter the store does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Initialise it from the seeded stream for its name.
    Initialize { seed: u64 },
    /// Refuse: every parameter must come from loaded weights.
    Error,
}

impl ParamStore {
    pub fn new(device: Device, dtype: DType) -> Self {
        Self {
            inner: Arc::default(),
            device,
            dtype,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map itself consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// All parameters, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        self.lock()
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.lock().vars.get(name).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().vars.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts tensors (e.g. read from a checkpoint) as parameters, converted to the
    /// store's dtype and device. Existing entries with the same name are replaced.
    pub fn insert_tensors(
        &self,
        tensors: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<()> {
        let mut inner = self.lock();
        for (name, t) in tensors {
            let t = t.to_dtype(self.dtype)?.to_device(&self.device)?;
            inner.vars.insert(name, Var::from_tensor(&t)?);
        }
        Ok(())
    }

    /// Loads every tensor of a safetensors file, under `prefix` (e.g. `"vision."`).
    pub fn load_safetensors(&self, path: &Path, prefix: &str) -> Result<Vec<String>> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
        let names: Vec<String> = tensors.keys().map(|k| format!("{prefix}{k}")).collect();
        self.insert_tensors(
            tensors
                .into_iter()
                .map(|(k, t)| (format!("{prefix}{k}"), t)),
        )?;
        Ok(names)
    }

    /// Parameters as f32 CPU tensors, by name, for saving.
    pub fn to_cpu_tensors(
        &self,
        filter: impl Fn(&str) -> bool,
    ) -> Result<BTreeMap<String, Tensor>> {
        self.lock()
            .vars
            .iter()
            .filter(|(k, _)| filter(k))
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    v.as_tensor()
                        .to_dtype(DType::F32)?
                        .to_device(&Device::Cpu)?,
                ))
            })
            .collect()
    }

    /// Sets the value each named parameter starts from when a builder creates it,
    /// instead of drawing from its `Init` (candle's `Init` cannot carry a table).
    /// Parameters the store already holds, loaded or created, are left as they are.
    pub fn set_initial_values(&self, values: impl IntoIterator<Item = (String, Tensor)>) {
        self.lock().initial_values.extend(values);
    }

    /// Removes parameters whose names were not requested by the last build, and
    /// returns their names (a checkpoint's leftovers are "unexpected weights").
    pub fn unrequested(&self) -> Vec<String> {
        let inner = self.lock();
        inner
            .vars
            .keys()
            .filter(|k| !inner.requested.contains(*k))
            .cloned()
            .collect()
    }

    /// Starts tracking which names a build requests (see [`ParamStore::unrequested`]).
    pub fn begin_build(&self) {
        self.lock().requested.clear();
    }

    /// A `VarBuilder` over this store. `trainable(name)` decides whether a parameter
    /// is handed out as a tracked `Var` or as a frozen plain tensor.
    pub fn builder(
        &self,
        missing: Missing,
        trainable: Arc<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> VarBuilder<'static> {
        let backend = Builder {
            store: self.clone(),
            missing,
            trainable,
        };
        VarBuilder::from_backend(Box::new(backend), self.dtype, self.device.clone())
    }

    /// A builder that initialises what is missing and trains everything.
    pub fn init_builder(&self, seed: u64) -> VarBuilder<'static> {
        self.builder(Missing::Initialize { seed }, Arc::new(|_| true))
    }

    /// Total number of scalar parameters whose names satisfy `filter`.
    pub fn count(&self, filter: impl Fn(&str) -> bool) -> usize {
        self.lock()
            .vars
            .iter()
            .filter(|(k, _)| filter(k))
            .map(|(_, v)| v.elem_count())
            .sum()
    }
}

struct Builder {
    store: ParamStore,
    missing: Missing,
    trainable: Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

impl SimpleBackend for Builder {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let mut inner = self.store.lock();
        inner.requested.insert(name.to_string());
        let var = match inner.vars.get(name) {
            Some(var) => {
                if var.shape() != &shape {
                    candle_core::bail!(
                        "parameter `{name}` has shape {:?}, but the model expects {:?}",
                        var.dims(),
                        shape.dims()
                    );
                }
                var.clone()
            }
            None => {
                let seed = match self.missing {
                    Missing::Initialize { seed } => seed,
                    Missing::Error => candle_core::bail!(
                        "parameter `{name}` (shape {:?}) is missing from the loaded weights",
                        shape.dims()
                    ),
                };
                let t = match inner.initial_values.get(name) {
                    Some(value) if value.shape() != &shape => candle_core::bail!(
                        "initial value of `{name}` has shape {:?}, but the model expects {:?}",
                        value.dims(),
                        shape.dims()
                    ),
                    Some(value) => value.clone(),
                    None => initial_value(&shape, name, &init, seed)?,
                }
                .to_dtype(self.store.dtype)?
                .to_device(&self.store.device)?;
                let var = Var::from_tensor(&t)?;
                inner.vars.insert(name.to_string(), var.clone());
                var
            }
        };
        let t = var.as_tensor().to_dtype(dtype)?.to_device(dev)?;
        // `to_dtype`/`to_device` to the same dtype/device are no-ops returning the
        // variable itself; otherwise they record an op back to the master variable.
        if (self.trainable)(name) {
            Ok(t)
        } else {
            Ok(t.detach())
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        match self.store.get(name) {
            Some(v) => {
                self.store.lock().requested.insert(name.to_string());
                let t = v.as_tensor().to_dtype(dtype)?.to_device(dev)?;
                Ok(if (self.trainable)(name) {
                    t
                } else {
                    t.detach()
                })
            }
            None => candle_core::bail!("parameter `{name}` is missing"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.store.lock().vars.contains_key(name)
    }
}

/// The initial value of parameter `name`, drawn from its own seeded stream.
fn initial_value(shape: &Shape, name: &str, init: &Init, seed: u64) -> Result<Tensor> {
    let n = shape.elem_count();
    let mut rng = Rng::stream(seed, name);
    let data: Vec<f32> = match *init {
        Init::Const(v) => vec![v as f32; n],
        Init::Randn { mean, stdev } => (0..n)
            .map(|_| (mean + stdev * rng.normal()) as f32)
            .collect(),
        Init::Uniform { lo, up } => (0..n)
            .map(|_| (lo + (up - lo) * rng.uniform()) as f32)
            .collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = fan.for_shape(shape) as f64;
            let gain = non_linearity.gain();
            let std = gain / fan.sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Normal => {
                    (0..n).map(|_| (std * rng.normal()) as f32).collect()
                }
                candle_nn::init::NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (0..n)
                        .map(|_| (bound * (2.0 * rng.uniform() - 1.0)) as f32)
                        .collect()
                }
            }
        }
    };
    Tensor::from_vec(data, shape.clone(), &Device::Cpu)
}

/// Writes `tensors` to `path` atomically: a temporary file in the same directory,
/// flushed to disk, then renamed over the target (and the directory synced), so a
/// crash leaves either the old file or the new one, never a torn one.
pub fn save_safetensors_atomic(
    tensors: &BTreeMap<String, Tensor>,
    metadata: Option<std::collections::HashMap<String, String>>,
    path: &Path,
) -> std::io::Result<()> {
    let data: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let bytes = safetensors::serialize(data, metadata).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(path, &bytes)
}

/// Records the name and shape of every parameter a model asks for, without
/// allocating any (each request gets a stride-0 view of one zero), so parameter
/// counts of paper-scale models cost nothing.
#[derive(Clone, Default)]
pub struct ShapeRecorder {
    shapes: Arc<Mutex<BTreeMap<String, Vec<usize>>>>,
}

impl ShapeRecorder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, Device::Cpu)
    }

    /// Recorded parameters, sorted by name.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.shapes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl SimpleBackend for ShapeRecorder {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        self.shapes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), shape.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("parameter `{name}` has no known shape")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}
