//! The three parts of a vision-language model and the data that crosses them.
//!
//! ```text
//! image ─► VisionEncoder ─► VisualFeatures ─┐
//! query ─► LanguageModel::embed_tokens ─► TextContext ─► Connector ─► ConnectorOutput
//! prompt + visual tokens ─► LanguageModel::forward (mask, KV cache, decoder hooks) ─► hidden ─► logits
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{Result, Tensor};

use crate::error::{Error, LayerIndex};
use crate::nn::LayerKv;

/// What a vision encoder is, as far as a connector needs to know before any tensor
/// exists (so a recipe that cannot work is refused up front).
#[derive(Debug, Clone, PartialEq)]
pub struct VisionInfo {
    /// Number of blocks (stages): hidden states are `hs[0] ..= hs[depth]`.
    pub depth: usize,
    /// Width of each hidden state, `depth + 1` entries.
    pub widths: Vec<usize>,
    /// Patch grid of each hidden state, `depth + 1` entries.
    pub grids: Vec<(usize, usize)>,
    /// Whether the encoder has a class token.
    pub has_cls: bool,
    /// Input resolution (square).
    pub image_size: usize,
    /// Per-channel normalisation of pixel values.
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl VisionInfo {
    /// Resolves a Hugging Face style index (negative counts from the end: `-1` is the
    /// last block) to an absolute hidden-state index.
    pub fn resolve(&self, index: i64) -> std::result::Result<usize, Error> {
        let count = self.depth as i64 + 1;
        let abs = if index < 0 { count + index } else { index };
        if abs < 0 || abs >= count {
            return Err(Error::LayerOutOfRange {
                index: LayerIndex(index),
                depth: self.depth,
            });
        }
        Ok(abs as usize)
    }
}

/// The selected hidden states of a batch of images.
#[derive(Debug, Clone)]
pub struct VisualFeatures {
    /// Patch tokens of each selected layer (`B×N×d`), in the recipe's order.
    pub layers: Vec<Tensor>,
    /// Absolute hidden-state index of each entry of `layers`.
    pub layer_ids: Vec<usize>,
    /// Class token of each selected layer (`B×d`), when the encoder has one.
    pub cls: Option<Vec<Tensor>>,
    /// The encoder's depth (`hs` has `depth + 1` entries).
    pub depth: usize,
    /// Patch grid (h, w) of the selected layers (`N = h·w`).
    pub grid: (usize, usize),
}

impl VisualFeatures {
    /// The patch tokens of hidden state `index` (HF indexing, negative from the end),
    /// which must be one of the selected layers.
    pub fn layer(&self, index: i64) -> std::result::Result<&Tensor, Error> {
        let pos = self.position(index)?;
        Ok(&self.layers[pos])
    }

    /// Position in `layers` of hidden state `index`.
    pub fn position(&self, index: i64) -> std::result::Result<usize, Error> {
        let count = self.depth as i64 + 1;
        let abs = if index < 0 { count + index } else { index };
        if abs < 0 || abs >= count {
            return Err(Error::LayerOutOfRange {
                index: LayerIndex(index),
                depth: self.depth,
            });
        }
        self.layer_ids
            .iter()
            .position(|&l| l as i64 == abs)
            .ok_or_else(|| Error::LayerNotSelected {
                index: LayerIndex(index),
                absolute: abs as usize,
                selected: self.layer_ids.clone(),
            })
    }

    /// All selected layers stacked: `B×L×N×d`. Fails, naming the shapes, when the
    /// layers differ in shape (e.g. the stages of a ConvNeXt).
    pub fn stacked(&self) -> std::result::Result<Tensor, Error> {
        if let Some(first) = self.layers.first() {
            for (l, t) in self.layer_ids.iter().zip(&self.layers) {
                if t.dims() != first.dims() {
                    return Err(Error::Shape {
                        what: format!(
                            "hidden state hs[{l}] (layers must share one shape to be stacked)"
                        ),
                        expected: first.dims().to_vec(),
                        got: t.dims().to_vec(),
                    });
                }
            }
        }
        Ok(Tensor::stack(&self.layers, 1)?)
    }

    /// Splits a stacked `B×L×N×d` tensor (and optional `B×L×d` CLS tensor) into
    /// features, as the parity harness receives them from a file.
    pub fn from_stacked(
        stacked: &Tensor,
        cls: Option<&Tensor>,
        layer_ids: Vec<usize>,
        depth: usize,
        grid: (usize, usize),
    ) -> Result<Self> {
        let (_b, l, _n, _d) = stacked.dims4()?;
        let layers = (0..l)
            .map(|i| stacked.get_on_dim(1, i))
            .collect::<Result<Vec<_>>>()?;
        let cls = cls
            .map(|c| {
                (0..l)
                    .map(|i| c.get_on_dim(1, i))
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()?;
        Ok(Self {
            layers,
            layer_ids,
            cls,
            depth,
            grid,
        })
    }

    pub fn batch_size(&self) -> Result<usize> {
        match self.layers.first() {
            Some(t) => t.dim(0),
            None => candle_core::bail!("no visual layers selected"),
        }
    }
}

/// A vision encoder: pixels in, the hidden states a recipe selects out.
pub trait VisionEncoder: Send + Sync {
    fn info(&self) -> &VisionInfo;

    /// Runs the encoder on `pixels` (`B×3×H×W`, normalised) and returns the hidden
    /// states at `layers` (absolute indices, in the given order). Blocks past the
    /// deepest requested layer are not run.
    fn forward(&self, pixels: &Tensor, layers: &[usize]) -> Result<VisualFeatures>;

    /// Parameter-name prefixes (relative to the encoder) that cannot influence the
    /// given layers — blocks past the deepest one, a final norm no connector reads —
    /// and so never receive a gradient. The trainer freezes them.
    fn unused_params(&self, layers: &[usize]) -> Vec<String>;
}

/// The user's query as the language model embeds it (`B×T×d_t`), with a mask
/// (`B×T`, 1 = token, 0 = padding), and as text (one string per sample; empty
/// where the text is not known, e.g. a context read from a tensor file).
#[derive(Debug, Clone)]
pub struct TextContext {
    pub embeds: Tensor,
    pub mask: Tensor,
    pub queries: Vec<String>,
}

/// Blocks an interleaved connector runs inside the language model.
pub trait DecoderHooks: Send + Sync {
    /// Called with the hidden states entering decoder layer `layer` (0-based);
    /// returns the hidden states to feed it.
    fn before_layer(&self, layer: usize, hidden: &Tensor) -> Result<Tensor>;

    /// Attention maps recorded during the last forward pass.
    fn maps(&self) -> BTreeMap<String, Tensor> {
        BTreeMap::new()
    }
}

/// What a connector produces.
#[derive(Clone, Default)]
pub struct ConnectorOutput {
    /// Visual tokens placed at the image placeholder (`B×N'×d_llm`), for prefix
    /// connectors.
    pub tokens: Option<Tensor>,
    /// Blocks the language model runs between its layers, for interleaved connectors.
    pub hooks: Option<Arc<dyn DecoderHooks>>,
    /// Named attention maps, for analysis and grounding losses (computed anyway; free
    /// to ignore).
    pub maps: BTreeMap<String, Tensor>,
    /// Named auxiliary losses (scalars), weighted by the recipe's `losses` table.
    pub aux_losses: BTreeMap<String, Tensor>,
}

impl std::fmt::Debug for ConnectorOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorOutput")
            .field("tokens", &self.tokens.as_ref().map(|t| t.dims().to_vec()))
            .field("hooks", &self.hooks.is_some())
            .field("maps", &self.maps.keys().collect::<Vec<_>>())
            .field("aux_losses", &self.aux_losses.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Where a connector's output enters the language model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Visual tokens at the image placeholder.
    Prefix,
    /// Blocks inside the decoder; no visual tokens in the sequence.
    Interleaved,
}

/// What a connector needs, declared before any tensor is made.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConnectorNeeds {
    /// Hidden states it reads when the recipe does not select layers (HF indices,
    /// negative from the end).
    pub default_layers: Vec<i64>,
    pub reads_text: bool,
    pub reads_cls: bool,
    /// Whether every selected layer must have the same shape.
    pub equal_layer_shapes: bool,
    pub placement: Placement,
    /// Names of the auxiliary losses it reports. Each counts with weight 1 unless
    /// a stage's `losses` table weights it otherwise (0 turns it off).
    pub aux_losses: Vec<String>,
    /// Pretrained weights it loads itself: (setting key within the connector
    /// section, directory as written, relative to the recipe).
    pub weight_dirs: Vec<(String, String)>,
    /// The map a grounding (Dice) loss reads: text→patch attention over the
    /// token grid of the first selected layer, `B×N`, `B×K×N` (K maps, e.g. one
    /// per block) or `B×K×S×N` (per decoder position; the host averages over the
    /// sequence's tokens). `None`: the connector exposes no such map.
    pub grounding_map: Option<String>,
}

impl ConnectorNeeds {
    /// A prefix connector that reads `default_layers` and nothing else: no text,
    /// no class token, layers of any shape, no auxiliary losses, no weights of
    /// its own to load. Connectors that need more change those fields.
    pub fn prefix(default_layers: Vec<i64>) -> Self {
        Self {
            default_layers,
            reads_text: false,
            reads_cls: false,
            equal_layer_shapes: false,
            placement: Placement::Prefix,
            aux_losses: Vec::new(),
            weight_dirs: Vec::new(),
            grounding_map: None,
        }
    }
}

/// The module between the vision encoder and the language model.
pub trait Connector: Send + Sync {
    /// Runs on the selected visual features and, if the connector reads text, the
    /// query context.
    fn forward(
        &self,
        vision: &VisualFeatures,
        text: Option<&TextContext>,
    ) -> Result<ConnectorOutput>;
}

/// What a language model is.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmInfo {
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub num_layers: usize,
    pub max_positions: usize,
}

/// Positions and mask for one decoder call.
#[derive(Debug, Clone)]
pub struct DecoderInput {
    /// Position of each new token (`B×T`, u32).
    pub positions: Tensor,
    /// Additive attention mask over cached + new keys (`B×T×S`).
    pub mask: Tensor,
}

/// Key/value cache of every decoder layer.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub layers: Vec<LayerKv>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![LayerKv::default(); num_layers],
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.kv.as_ref())
            .map_or(0, |(k, _)| k.dims()[2])
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A decoder-only language model over input embeddings.
pub trait LanguageModel: Send + Sync {
    fn info(&self) -> &LlmInfo;

    /// Token embeddings of `ids` (any shape, u32): one more dimension of width `d`.
    fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor>;

    /// Runs the decoder over `embeds` (`B×T×d`) and returns the final (normalised)
    /// hidden states, `B×T×d`. With a cache, the new keys/values are appended.
    fn forward(
        &self,
        embeds: &Tensor,
        input: &DecoderInput,
        cache: Option<&mut KvCache>,
        hooks: Option<&dyn DecoderHooks>,
    ) -> Result<Tensor>;

    /// Vocabulary logits of hidden states (`…×d` → `…×V`).
    fn logits(&self, hidden: &Tensor) -> Result<Tensor>;
}
