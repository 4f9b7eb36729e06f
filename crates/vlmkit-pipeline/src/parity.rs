//! Running a connector on its own, on tensors from a file (`shared/spec/parity.md`):
//! an author holds an implementation against a reference one on identical weights
//! and inputs. Nothing is silently initialised or ignored: a missing, unknown or
//! mis-shaped tensor or weight is an error that names the key and both shapes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use vlmkit_core::params::{save_safetensors_atomic, Missing, ParamStore};
use vlmkit_core::{Connector, ConnectorOutput, TextContext, VisualFeatures};

use crate::Plan;

#[derive(Debug, thiserror::Error)]
pub enum ParityError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{path}: tensor `{key}` is missing; expected shape {expected}")]
    MissingTensor {
        path: PathBuf,
        key: &'static str,
        expected: String,
    },
    #[error("{path}: tensor `{key}` has shape {got:?}, expected {expected}")]
    Shape {
        path: PathBuf,
        key: String,
        got: Vec<usize>,
        expected: String,
    },
    #[error("{path}: tensor `{key}` is {got:?}; the inputs are f32")]
    DType {
        path: PathBuf,
        key: String,
        got: DType,
    },
    #[error("{path}: unknown tensor `{key}` (expected: {expected})")]
    UnknownTensor {
        path: PathBuf,
        key: String,
        expected: String,
    },
    #[error("{path}: {message}")]
    Weights { path: PathBuf, message: String },
    #[error("{path}: the weights hold keys the connector does not have: {keys}")]
    UnknownWeights { path: PathBuf, keys: String },
    #[error("connector: {0}")]
    Connector(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The connector's inputs, as `parity.md` lays them out.
#[derive(Debug, Clone)]
pub struct ParityInputs {
    pub features: VisualFeatures,
    pub text: Option<TextContext>,
}

/// Where the connector's weights come from.
#[derive(Debug, Clone)]
pub enum Weights {
    /// A safetensors file with the spec's keys (no `connector.` prefix); every key
    /// must be used and every weight present.
    File(PathBuf),
    /// Initialised from the recipe seed, exactly as training initialises them.
    Seeded,
}

/// A connector built for a plan, with the store holding its weights.
pub struct StandaloneConnector {
    pub connector: Box<dyn Connector>,
    pub store: ParamStore,
}

/// Under this prefix the connector's weights live in a whole model; using it here
/// gives seeded weights the same values a training run starts from.
const PREFIX: &str = "connector";

impl StandaloneConnector {
    pub fn build(plan: &Plan, weights: &Weights, device: &Device) -> Result<Self, ParityError> {
        let store = ParamStore::new(device.clone(), DType::F32);
        let (missing, path) = match weights {
            Weights::Seeded => (
                Missing::Initialize {
                    seed: plan.recipe.run.seed,
                },
                None,
            ),
            Weights::File(path) => {
                let tensors = candle_core::safetensors::load(path, &Device::Cpu)
                    .map_err(|e| file_error(path, e))?;
                store.insert_tensors(
                    tensors
                        .into_iter()
                        .map(|(k, t)| (format!("{PREFIX}.{k}"), t)),
                )?;
                (Missing::Error, Some(path))
            }
        };
        store.begin_build();
        let vb = store.builder(missing, Arc::new(|_| false)).pp(PREFIX);
        let connector = plan.model.build_connector(vb).map_err(|e| match path {
            Some(path) => ParityError::Weights {
                path: path.clone(),
                message: e.to_string().replace(&format!("`{PREFIX}."), "`"),
            },
            None => ParityError::Connector(e.to_string()),
        })?;
        if let Some(path) = path {
            let unknown = store.unrequested();
            if !unknown.is_empty() {
                return Err(ParityError::UnknownWeights {
                    path: path.clone(),
                    keys: unknown
                        .iter()
                        .map(|k| format!("`{}`", strip(k)))
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(Self { connector, store })
    }

    /// The weights under the spec's keys (no `connector.` prefix), as f32 on the CPU.
    pub fn weights(&self) -> Result<BTreeMap<String, Tensor>, ParityError> {
        Ok(self
            .store
            .to_cpu_tensors(|_| true)?
            .into_iter()
            .map(|(k, t)| (strip(&k).to_owned(), t))
            .collect())
    }

    pub fn save_weights(&self, path: &Path) -> Result<(), ParityError> {
        save(&self.weights()?, path)
    }

    pub fn run(&self, inputs: &ParityInputs) -> Result<ConnectorOutput, ParityError> {
        Ok(self
            .connector
            .forward(&inputs.features, inputs.text.as_ref())?)
    }
}

/// A store name without the [`PREFIX`] (the spec's key).
fn strip(name: &str) -> &str {
    name.strip_prefix(PREFIX)
        .and_then(|n| n.strip_prefix('.'))
        .unwrap_or(name)
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> ParityError {
    ParityError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Reads and checks `vision`, `vision_cls`, `text` and `text_mask` against what
/// the plan's connector reads.
pub fn load_inputs(plan: &Plan, path: &Path, device: &Device) -> Result<ParityInputs, ParityError> {
    let mut tensors =
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| file_error(path, e))?;
    let env = &plan.model.env;
    let l = env.layers.len();
    let (gh, gw) = env.vision.grids[env.layers[0]];
    let n = gh * gw;
    let dv = env.width(env.layers[0]);
    let dt = env.text_hidden;
    let mut expected: Vec<&str> = vec!["vision"];
    if plan.model.needs.reads_cls {
        expected.push("vision_cls");
    }
    if plan.model.needs.reads_text {
        expected.extend(["text", "text_mask"]);
    }
    if let Some(key) = tensors.keys().find(|k| !expected.contains(&k.as_str())) {
        return Err(ParityError::UnknownTensor {
            path: path.to_path_buf(),
            key: key.clone(),
            expected: expected.join(", "),
        });
    }
    // Sizes fixed by the recipe are numbers; B and T are read from the inputs and
    // must agree between tensors.
    let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut take = |key: &'static str, dims: &[Dim]| -> Result<Tensor, ParityError> {
        let expected_text = describe(dims, &sizes);
        let t = tensors
            .remove(key)
            .ok_or_else(|| ParityError::MissingTensor {
                path: path.to_path_buf(),
                key,
                expected: expected_text.clone(),
            })?;
        if t.dtype() != DType::F32 {
            return Err(ParityError::DType {
                path: path.to_path_buf(),
                key: key.into(),
                got: t.dtype(),
            });
        }
        let shape_error = || ParityError::Shape {
            path: path.to_path_buf(),
            key: key.into(),
            got: t.dims().to_vec(),
            expected: expected_text.clone(),
        };
        if t.rank() != dims.len() {
            return Err(shape_error());
        }
        for (&got, dim) in t.dims().iter().zip(dims) {
            match *dim {
                Dim::Fixed(_, want) if got != want => return Err(shape_error()),
                Dim::Free(name) => match sizes.get(name) {
                    Some(&want) if want != got => return Err(shape_error()),
                    _ => {
                        sizes.insert(name, got);
                    }
                },
                Dim::Fixed(..) => {}
            }
        }
        Ok(t.to_device(device)?)
    };
    let vision = take(
        "vision",
        &[
            Dim::Free("B"),
            Dim::Fixed("L", l),
            Dim::Fixed("N", n),
            Dim::Fixed("d_v", dv),
        ],
    )?;
    let cls = if plan.model.needs.reads_cls {
        Some(take(
            "vision_cls",
            &[Dim::Free("B"), Dim::Fixed("L", l), Dim::Fixed("d_v", dv)],
        )?)
    } else {
        None
    };
    let text = if plan.model.needs.reads_text {
        let embeds = take(
            "text",
            &[Dim::Free("B"), Dim::Free("T"), Dim::Fixed("d_t", dt)],
        )?;
        let mask = take("text_mask", &[Dim::Free("B"), Dim::Free("T")])?;
        // A tensor file carries embeddings, not text.
        Some(TextContext {
            embeds,
            mask,
            queries: Vec::new(),
        })
    } else {
        None
    };
    let unstack = |t: &Tensor| -> candle_core::Result<Vec<Tensor>> {
        (0..l).map(|i| t.get_on_dim(1, i)?.contiguous()).collect()
    };
    Ok(ParityInputs {
        features: VisualFeatures {
            layers: unstack(&vision)?,
            layer_ids: env.layers.clone(),
            cls: cls.as_ref().map(unstack).transpose()?,
            depth: env.vision.depth,
            grid: (gh, gw),
        },
        text,
    })
}

/// One axis of an expected input shape.
enum Dim {
    /// A size the recipe fixes, with its name.
    Fixed(&'static str, usize),
    /// A size the inputs choose (batch, text length), equal across tensors.
    Free(&'static str),
}

/// `[B=2, L=4, N=16, d_v=64]`: the expected shape, with sizes seen so far.
fn describe(dims: &[Dim], seen: &BTreeMap<&str, usize>) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| match *d {
            Dim::Fixed(name, n) => format!("{name}={n}"),
            Dim::Free(name) => match seen.get(name) {
                Some(n) => format!("{name}={n}"),
                None => name.to_owned(),
            },
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// What `vlmkit connector run` writes: `tokens` (prefix connectors) and every
/// exposed map as `maps.<name>`, f32 on the CPU.
pub fn outputs(output: &ConnectorOutput) -> Result<BTreeMap<String, Tensor>, ParityError> {
    let cpu = |t: &Tensor| -> candle_core::Result<Tensor> {
        t.to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .contiguous()
    };
    let mut out = BTreeMap::new();
    if let Some(tokens) = &output.tokens {
        out.insert("tokens".to_owned(), cpu(tokens)?);
    }
    for (name, map) in &output.maps {
        out.insert(format!("maps.{name}"), cpu(map)?);
    }
    for (name, loss) in &output.aux_losses {
        out.insert(format!("aux_losses.{name}"), cpu(loss)?);
    }
    Ok(out)
}

/// Writes named tensors (weights, or [`outputs`]) as safetensors, atomically.
pub fn save(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<(), ParityError> {
    save_safetensors_atomic(tensors, None, path).map_err(|e| file_error(path, e))
}
