//! Extending vlmkit from outside the crates that define its built-in parts: a
//! vision encoder and a host loss, each one small trait and one registration,
//! planned, trained and loaded back by the same code as the built-in ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use vlmkit_core::loss::{Average, HostLoss, LossInput};
use vlmkit_core::nn::{self, FeedForward, FeedForwardConfig, LinearInit};
use vlmkit_core::ops::Activation;
use vlmkit_core::{VisionEncoder, VisionInfo, VisualFeatures};
use vlmkit_data::processor::ImageProcessor;
use vlmkit_eval::{
    evaluate_and_save, EvalOptions, EvalReport, FamilyScorer, Prediction, Scorer, ScorerRegistry,
};
use vlmkit_models::{VisionArch, VisionConfig, VisionFactory};
use vlmkit_pipeline::{load_model, Components, Plan, RunDir};
use vlmkit_recipe::{Recipe, Settings, SettingsError};
use vlmkit_train::{train, Observer, StepRecord};

/// `[vision]` settings of `kind = "patch-mlp"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PatchMlpConfig {
    image_size: usize,
    patch_size: usize,
    hidden_size: usize,
    num_blocks: usize,
}

impl Default for PatchMlpConfig {
    fn default() -> Self {
        Self {
            image_size: 32,
            patch_size: 8,
            hidden_size: 16,
            num_blocks: 2,
        }
    }
}

/// A patch embedding, then residual MLP blocks; each block's output is a hidden
/// state. Weights `stem.{weight,bias}`, `blocks.N.{fc1,fc2}.*`.
struct PatchMlpFactory;

impl VisionFactory for PatchMlpFactory {
    fn kinds(&self) -> &'static [(&'static str, &'static str)] {
        &[("patch-mlp", "patch-mlp")]
    }

    fn summary(&self) -> &'static str {
        "patch embedding and residual MLP blocks (a test encoder)"
    }

    fn parse_settings(
        &self,
        _kind: &str,
        settings: &Settings,
    ) -> std::result::Result<VisionConfig, SettingsError> {
        let cfg: PatchMlpConfig = settings.parse()?;
        if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
            return Err(settings.error("patch_size", "must divide image_size"));
        }
        Ok(VisionConfig::new(cfg))
    }
}

impl VisionArch for PatchMlpConfig {
    fn family(&self) -> &'static str {
        "patch-mlp"
    }

    fn info(&self) -> VisionInfo {
        let g = self.image_size / self.patch_size;
        VisionInfo {
            depth: self.num_blocks,
            widths: vec![self.hidden_size; self.num_blocks + 1],
            grids: vec![(g, g); self.num_blocks + 1],
            has_cls: false,
            image_size: self.image_size,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
        }
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn VisionEncoder>> {
        let d = self.hidden_size;
        let stem_weight = vb.pp("stem").get_with_hints(
            (d, 3, self.patch_size, self.patch_size),
            "weight",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 0.2,
            },
        )?;
        let stem_bias = vb
            .pp("stem")
            .get_with_hints(d, "bias", candle_nn::Init::Const(0.0))?;
        let blocks = (0..self.num_blocks)
            .map(|i| {
                FeedForward::new(
                    FeedForwardConfig {
                        in_dim: d,
                        hidden_dim: 2 * d,
                        out_dim: d,
                        act: Activation::Gelu,
                        bias: true,
                        names: ("fc1", "fc2"),
                        init: LinearInit::Normal(0.2),
                    },
                    vb.pp(format!("blocks.{i}")),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(PatchMlp {
            cfg: self.clone(),
            info: VisionArch::info(self),
            stem_weight,
            stem_bias,
            blocks,
        }))
    }

    fn set_normalisation(&mut self, _mean: [f32; 3], _std: [f32; 3]) {}

    fn default_processor(&self) -> ImageProcessor {
        ImageProcessor::siglip(self.image_size as u32)
    }

    fn blocks_prefix(&self) -> &'static str {
        "blocks"
    }

    fn describe(&self) -> Vec<(&'static str, String)> {
        vec![("blocks", self.num_blocks.to_string())]
    }
}

struct PatchMlp {
    cfg: PatchMlpConfig,
    info: VisionInfo,
    stem_weight: Tensor,
    stem_bias: Tensor,
    blocks: Vec<FeedForward>,
}

impl VisionEncoder for PatchMlp {
    fn info(&self) -> &VisionInfo {
        &self.info
    }

    fn forward(&self, pixels: &Tensor, layers: &[usize]) -> Result<VisualFeatures> {
        let x = pixels.permute((0, 2, 3, 1))?;
        let x = nn::patch_conv(
            &x,
            &self.stem_weight,
            Some(&self.stem_bias),
            self.cfg.patch_size,
        )?;
        let (b, gh, gw, d) = x.dims4()?;
        let mut x = x.reshape((b, gh * gw, d))?;
        let deepest = layers.iter().copied().max().unwrap_or(0);
        let mut states = vec![x.clone()];
        for block in &self.blocks[..deepest] {
            x = (&x + block.forward(&x)?)?;
            states.push(x.clone());
        }
        Ok(VisualFeatures {
            layers: layers.iter().map(|&l| states[l].clone()).collect(),
            layer_ids: layers.to_vec(),
            cls: None,
            depth: self.cfg.num_blocks,
            grid: (gh, gw),
        })
    }

    fn unused_params(&self, layers: &[usize]) -> Vec<String> {
        let deepest = layers.iter().copied().max().unwrap_or(0);
        (deepest..self.cfg.num_blocks)
            .map(|i| format!("blocks.{i}."))
            .collect()
    }
}

/// The mean squared decoder state per token (an activation penalty), averaged
/// over samples.
struct HiddenL2;

impl HostLoss for HiddenL2 {
    fn name(&self) -> &'static str {
        "hidden_l2"
    }

    fn summary(&self) -> &'static str {
        "mean squared decoder state of each sample's tokens"
    }

    fn averages_over(&self) -> Average {
        Average::Samples
    }

    fn compute(&self, input: &LossInput) -> Result<Option<Tensor>> {
        let (b, s, d) = input.hidden.dims3()?;
        let mut weights = vec![0f32; b * s];
        for (i, row) in input.valid.iter().enumerate() {
            let count = row.iter().filter(|&&v| v).count().max(1) as f32;
            for (p, &v) in row.iter().enumerate() {
                if v {
                    weights[i * s + p] = 1.0 / (count * d as f32 * b as f32);
                }
            }
        }
        let weights = Tensor::from_vec(weights, (b, s, 1), input.hidden.device())?;
        let squares = input.hidden.to_dtype(DType::F32)?.sqr()?;
        Ok(Some(squares.broadcast_mul(&weights)?.sum_all()?))
    }
}

/// Mean words per reply, per question family.
struct ReplyWords;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct ReplyWordsOutput {
    reply_words: BTreeMap<String, f64>,
}

impl Scorer for ReplyWords {
    type Output = ReplyWordsOutput;
    const NAME: &'static str = "reply_words";

    fn score(&self, predictions: &[Prediction]) -> Option<ReplyWordsOutput> {
        let mut sums: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for p in predictions {
            let entry = sums.entry(p.family.clone()).or_default();
            entry.0 += p.prediction.split_whitespace().count();
            entry.1 += 1;
        }
        Some(ReplyWordsOutput {
            reply_words: sums
                .into_iter()
                .map(|(family, (words, n))| (family, words as f64 / n as f64))
                .collect(),
        })
    }

    fn table(&self, output: &ReplyWordsOutput) -> String {
        output
            .reply_words
            .iter()
            .map(|(family, words)| format!("reply words {family}: {words:.2}\n"))
            .collect()
    }
}

const RECIPE: &str = r#"
[run]
name = "extended"
seed = 3
device = "cpu"
log_every = 1
threads = 1

[vision]
kind = "patch-mlp"
hidden_size = 16
num_blocks = 3

[llm]
kind = "llama"
tokenizer = "builtin"
hidden_size = 16
intermediate_size = 32
num_hidden_layers = 1
num_attention_heads = 2
num_key_value_heads = 1
max_position_embeddings = 128

[connector]
kind = "mlp"
base_layer = -2

[data.train]
kind = "shapes"
families = { color = 1, existence = 1 }

[data.eval]
kind = "shapes"
samples = 8
families = { color = 1 }

[eval]
batch_size = 8

[[stage]]
name = "joint"
trainable = ["vision.blocks.1", "connector", "llm"]
steps = 3
batch_size = 8
lr = 1e-3
losses = { lm = 1.0, hidden_l2 = 0.1 }
"#;

struct Steps(Vec<StepRecord>);

impl Observer for Steps {
    fn step(&mut self, record: &StepRecord) {
        self.0.push(record.clone());
    }
}

fn extended() -> Components {
    let mut components = vlmkit_tests::components();
    components
        .vision
        .register(Arc::new(PatchMlpFactory))
        .unwrap();
    components.losses.register(Arc::new(HiddenL2)).unwrap();
    components
}

#[test]
fn an_encoder_and_a_loss_registered_from_outside_train_like_built_in_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extended.toml");
    std::fs::write(&path, RECIPE).unwrap();

    // Without the registrations the recipe names what vlmkit does not know.
    let refused = Plan::new(
        Recipe::load(&path, &[]).unwrap(),
        &vlmkit_tests::components(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("unknown vision encoder `patch-mlp`"),
        "{refused}"
    );

    let components = extended();
    let plan = Plan::new(Recipe::load(&path, &[]).unwrap(), &components, None).unwrap();
    // `vision.blocks.1` names the new encoder's block 1, wherever it keeps it;
    // block 2 feeds no selected layer and is never trained.
    let shapes = plan.model.param_shapes().unwrap();
    let trainable = plan
        .stages
        .trainable(&plan.recipe.stages[0], &shapes.unused);
    let vision: Vec<&String> = shapes
        .shapes
        .keys()
        .filter(|n| n.starts_with("vision.") && trainable(n))
        .collect();
    assert!(
        !vision.is_empty() && vision.iter().all(|n| n.starts_with("vision.blocks.1.")),
        "{vision:?}"
    );
    assert!(shapes.unused.contains(&"vision.blocks.2.".to_string()));

    let run_dir = dir.path().join("run");
    let mut steps = Steps(Vec::new());
    let summary = train(&plan, &RunDir::new(&run_dir), &mut steps).unwrap();
    assert_eq!(summary.global_step, 3);
    for record in &steps.0 {
        assert!(record.loss.is_finite(), "{record:?}");
        let penalty = record.terms["hidden_l2"];
        assert!(penalty > 0.0, "{record:?}");
        // The objective is lm + 0.1 · hidden_l2 (summed in f32).
        let expected = record.terms["lm"] + 0.1 * penalty;
        assert!(
            (record.loss - expected).abs() < 1e-6 * expected,
            "{record:?}"
        );
    }

    // The run loads back with the same components, and is evaluated with a
    // scorer registered here beside the built-in ones.
    let model = load_model(&run_dir, &components, None, &[]).unwrap();
    let source = model.plan.eval_data().open().unwrap();
    let mut scorers = ScorerRegistry::default();
    scorers.register(ReplyWords).unwrap();
    let opts = EvalOptions {
        scorers,
        ..EvalOptions::from_config(&model.plan.recipe.eval)
    };
    let eval_dir = dir.path().join("eval");
    let report =
        evaluate_and_save(&model, source.as_ref(), &opts, &eval_dir, "t", |_, _| {}).unwrap();
    let words = report.section::<ReplyWords>().expect("its section");
    assert_eq!(words.reply_words.keys().collect::<Vec<_>>(), ["color"]);
    assert!(report.families().score_of("color").is_some());
    let table = report.table_with(&opts.scorers);
    assert!(
        table.starts_with("family") && table.contains("reply words color: "),
        "{table}"
    );
    let written: EvalReport =
        serde_json::from_str(&std::fs::read_to_string(eval_dir.join("report.json")).unwrap())
            .unwrap();
    assert_eq!(written.section::<ReplyWords>(), Some(words));
    assert_eq!(written, report);
    // One name per scorer.
    assert!(ScorerRegistry::default().register(FamilyScorer).is_err());
    let trained: BTreeMap<String, Tensor> = candle_core::safetensors::load(
        run_dir.join("final/model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap()
    .into_iter()
    .collect();
    assert!(trained.contains_key("vision.blocks.1.fc1.weight"));
    assert!(trained.contains_key("vision.stem.weight"));
}
