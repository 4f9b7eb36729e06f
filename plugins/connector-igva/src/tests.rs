//! IGVA against the spec's groups, a literal reading of its allocator, finite
//! differences, and the reference size.

use super::*;
use vlmkit_core::gradcheck::{
    check_every_param_learns, check_store_gradients, max_abs_diff, random_projection, GradCheck,
};
use vlmkit_core::params::{Missing, ParamStore, ShapeRecorder};

const B: usize = 2;
const DEPTH: usize = 4;
const N: usize = 3;
const DV: usize = 4;
const DT: usize = 5;
const DLLM: usize = 6;
const T: usize = 4;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    vlmkit_core::gradcheck::randn(shape, 1.0, seed).unwrap()
}

fn vision_info(depth: usize) -> VisionInfo {
    VisionInfo {
        depth,
        widths: vec![DV; depth + 1],
        grids: vec![(1, N); depth + 1],
        has_cls: true,
        image_size: 8,
        image_mean: [0.5; 3],
        image_std: [0.5; 3],
    }
}

fn config() -> IgvaConfig {
    IgvaConfig {
        groups: Groups::Listed(vec![vec![1, 2], vec![3, 4]]),
        depth: 2,
        heads: 2,
        ..IgvaConfig::default()
    }
}

/// hs[1..=4] with class tokens, and a query whose second sample is padded.
fn inputs(with_cls: bool) -> (VisualFeatures, TextContext) {
    let layers: Vec<Tensor> = (1..=DEPTH)
        .map(|l| randn(&[B, N, DV], 30 + l as u64))
        .collect();
    let cls = with_cls.then(|| {
        (1..=DEPTH)
            .map(|l| randn(&[B, DV], 50 + l as u64))
            .collect()
    });
    let mask =
        Tensor::from_vec(vec![1f64, 1., 1., 1., 1., 1., 0., 0.], (B, T), &Device::Cpu).unwrap();
    (
        VisualFeatures {
            layers,
            layer_ids: (1..=DEPTH).collect(),
            cls,
            depth: DEPTH,
            grid: (1, N),
        },
        TextContext {
            embeds: randn(&[B, T, DT], 70),
            mask,
            queries: Vec::new(),
        },
    )
}

fn build(cfg: &IgvaConfig) -> (ParamStore, IgvaConnector) {
    build_with_text(cfg, DT, TextSource::QueryEmbeddings)
}

fn build_with_text(
    cfg: &IgvaConfig,
    text_width: usize,
    text: TextSource,
) -> (ParamStore, IgvaConnector) {
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let groups = cfg.resolve_groups(&vision_info(DEPTH)).unwrap();
    let dims = IgvaDims {
        vision: DV,
        text: text_width,
        llm: DLLM,
    };
    let connector = IgvaConnector::new(cfg, groups, dims, text, store.init_builder(9)).unwrap();
    (store, connector)
}

/// A tiny random BERT (width 24) in a temporary directory, loaded.
fn sentence_encoder() -> (tempfile::TempDir, Arc<SentenceEncoder>) {
    let dir = tempfile::tempdir().unwrap();
    let words = [
        "what", "color", "is", "the", "circle", "how", "many", "squares",
    ];
    vlmkit_text::fixture::write_random_bert(dir.path(), &words, &Default::default()).unwrap();
    let encoder = SentenceEncoder::load_shared(dir.path(), None).unwrap();
    (dir, encoder)
}

const BERT_WIDTH: usize = 24;

#[test]
fn groups_follow_the_spec_and_refuse_what_cannot_work() {
    let groups = IgvaConfig::default()
        .resolve_groups(&vision_info(24))
        .unwrap();
    let expected: Vec<Vec<usize>> = vec![
        (1..=6).collect(),
        (7..=12).collect(),
        (13..=18).collect(),
        (19..=24).collect(),
    ];
    assert_eq!(groups, expected);
    let five = IgvaConfig {
        groups: Groups::Equal(5),
        ..IgvaConfig::default()
    };
    let (key, message) = five.resolve_groups(&vision_info(24)).unwrap_err();
    assert_eq!(key, "groups");
    assert!(
        message.contains("24 blocks do not split into 5"),
        "{message}"
    );
    // Groups written for a 24-block encoder, on a 4-block one.
    let deep = IgvaConfig {
        groups: Groups::Listed(vec![vec![1, 2, 3], vec![19, 20, 21]]),
        ..IgvaConfig::default()
    };
    let (key, message) = deep.resolve_groups(&vision_info(4)).unwrap_err();
    assert_eq!(key, "groups");
    assert!(
        message.contains("[19, 20, 21]") && message.contains("19"),
        "{message}"
    );
}

/// A literal reading of the spec for sample `b`: explicit per-head attention,
/// post-norm blocks, softmax group weights, the weighted sum of group patches.
fn literal(
    store: &ParamStore,
    cfg: &IgvaConfig,
    x: &VisualFeatures,
    t: &TextContext,
    b: usize,
) -> (Tensor, Tensor) {
    let w = |name: &str| store.get(name).unwrap().as_tensor().clone();
    let linear = |prefix: &str, x: &Tensor| {
        x.matmul(&w(&format!("{prefix}.weight")).t().unwrap())
            .unwrap()
            .broadcast_add(&w(&format!("{prefix}.bias")))
            .unwrap()
    };
    let norm = |prefix: &str, x: &Tensor| {
        let c = x.broadcast_sub(&x.mean_keepdim(1).unwrap()).unwrap();
        let var = c.sqr().unwrap().mean_keepdim(1).unwrap();
        c.broadcast_div(&(var + NORM_EPS).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w(&format!("{prefix}.weight")))
            .unwrap()
            .broadcast_add(&w(&format!("{prefix}.bias")))
            .unwrap()
    };
    let softmax = |x: &Tensor| {
        let e = x
            .broadcast_sub(&x.max_keepdim(1).unwrap())
            .unwrap()
            .exp()
            .unwrap();
        e.broadcast_div(&e.sum_keepdim(1).unwrap()).unwrap()
    };
    // s: the mean of the valid query tokens.
    let valid = t
        .mask
        .get(b)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap() as usize;
    let s = t
        .embeds
        .get(b)
        .unwrap()
        .narrow(0, 0, valid)
        .unwrap()
        .mean_keepdim(0)
        .unwrap();
    let groups = [[0usize, 1], [2, 3]]; // positions of hs[1,2] and hs[3,4]
    let mean_of = |g: &[usize; 2], get: &dyn Fn(usize) -> Tensor| {
        ((get(g[0]) + get(g[1])).unwrap() / 2.0).unwrap()
    };
    let cls: Vec<Tensor> = groups
        .iter()
        .map(|g| {
            mean_of(g, &|p| {
                x.cls.as_ref().unwrap()[p]
                    .get(b)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap()
            })
        })
        .collect();
    let patches: Vec<Tensor> = groups
        .iter()
        .map(|g| mean_of(g, &|p| x.layers[p].get(b).unwrap()))
        .collect();
    let mut q = linear("text_proj", &s);
    let c = linear("cls_proj", &Tensor::cat(&cls, 0).unwrap());
    let hd = DV / cfg.heads;
    for i in 0..cfg.depth {
        let p = format!("blocks.{i}");
        let (qq, k, v) = (
            linear(&format!("{p}.attn.q"), &q),
            linear(&format!("{p}.attn.k"), &c),
            linear(&format!("{p}.attn.v"), &c),
        );
        let heads: Vec<Tensor> = (0..cfg.heads)
            .map(|h| {
                let (qh, kh, vh) = (
                    qq.narrow(1, h * hd, hd).unwrap(),
                    k.narrow(1, h * hd, hd).unwrap(),
                    v.narrow(1, h * hd, hd).unwrap(),
                );
                let scores = (qh.matmul(&kh.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
                softmax(&scores).matmul(&vh).unwrap()
            })
            .collect();
        let att = linear(&format!("{p}.attn.o"), &Tensor::cat(&heads, 1).unwrap());
        q = norm(&format!("{p}.norm1"), &(q + att).unwrap());
        let ff = linear(
            &format!("{p}.ffn.2"),
            &linear(&format!("{p}.ffn.0"), &q).relu().unwrap(),
        );
        q = norm(&format!("{p}.norm2"), &(q + ff).unwrap());
    }
    let weights = softmax(&linear("head", &q)).squeeze(0).unwrap();
    let wv = weights.to_vec1::<f64>().unwrap();
    let fused = ((&patches[0] * wv[0]).unwrap() + (&patches[1] * wv[1]).unwrap()).unwrap();
    let base = x.layer(-2).unwrap().get(b).unwrap();
    let h = linear("proj.0", &Tensor::cat(&[base, fused], 1).unwrap())
        .gelu_erf()
        .unwrap();
    (linear("proj.2", &h), weights)
}

#[test]
fn output_matches_a_literal_reading_of_the_spec() {
    let cfg = config();
    let (store, connector) = build(&cfg);
    let (x, t) = inputs(true);
    let out = connector.forward(&x, Some(&t)).unwrap();
    let tokens = out.tokens.unwrap();
    for b in 0..B {
        let (expected, weights) = literal(&store, &cfg, &x, &t, b);
        let diff = max_abs_diff(&tokens.get(b).unwrap(), &expected).unwrap();
        assert!(diff < 1e-10, "sample {b}: {diff}");
        let diff = max_abs_diff(&out.maps["groups"].get(b).unwrap(), &weights).unwrap();
        assert!(diff < 1e-12, "sample {b} weights: {diff}");
    }
}

#[test]
fn padded_query_tokens_change_nothing() {
    let (_, connector) = build(&config());
    let (x, t) = inputs(true);
    let before = connector.forward(&x, Some(&t)).unwrap().tokens.unwrap();
    // Overwrite the second sample's padding with something else.
    let noise = randn(&[B, T, DT], 99)
        .broadcast_mul(&(1.0 - &t.mask).unwrap().unsqueeze(2).unwrap())
        .unwrap();
    let t2 = TextContext {
        embeds: (t
            .embeds
            .broadcast_mul(&t.mask.unsqueeze(2).unwrap())
            .unwrap()
            + noise)
            .unwrap(),
        mask: t.mask.clone(),
        queries: Vec::new(),
    };
    let after = connector.forward(&x, Some(&t2)).unwrap().tokens.unwrap();
    assert!(max_abs_diff(&before, &after).unwrap() < 1e-12);
}

#[test]
fn descriptors_fall_back_to_the_mean_patch_without_a_class_token() {
    let (_, connector) = build(&config());
    let (x, _) = inputs(false);
    let (c, p) = connector.group_means(&x).unwrap();
    assert!(max_abs_diff(&c, &p.mean(2).unwrap()).unwrap() < 1e-12);
}

#[test]
fn the_mean_aggregate_weighs_groups_equally_and_adds_no_loss() {
    let cfg = IgvaConfig {
        aggregate: Aggregate::Mean,
        ..config()
    };
    let (_, connector) = build(&cfg);
    let (x, t) = inputs(true);
    let out = connector.forward(&x, Some(&t)).unwrap();
    let w = out.maps["groups"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert!(w.iter().all(|&v| (v - 0.5).abs() < 1e-15), "{w:?}");
    assert!(out.aux_losses.is_empty());
}

#[test]
fn the_entropy_term_is_minus_lambda_times_the_mean_entropy() {
    let cfg = config();
    let (_, connector) = build(&cfg);
    let (x, t) = inputs(true);
    let out = connector.forward(&x, Some(&t)).unwrap();
    let w = out.maps["groups"].to_vec2::<f64>().unwrap();
    let mean_entropy: f64 = w
        .iter()
        .map(|row| -row.iter().map(|p| p * p.ln()).sum::<f64>())
        .sum::<f64>()
        / B as f64;
    let term = out.aux_losses["entropy"].to_scalar::<f64>().unwrap();
    assert!((term + cfg.entropy_weight * mean_entropy).abs() < 1e-12);
}

/// Finite differences on a loss of the tokens and the entropy term, then every
/// parameter but the softmax-invariant key biases must get a gradient.
fn check_gradients(
    cfg: &IgvaConfig,
    store: &ParamStore,
    connector: &IgvaConnector,
    (x, t): (&VisualFeatures, &TextContext),
    max_elems: usize,
) {
    let loss = || {
        let out = connector.forward(x, Some(t))?;
        random_projection(out.tokens.as_ref().unwrap(), 4)? + (&out.aux_losses["entropy"] * 10.0)?
    };
    let check = GradCheck {
        max_elems,
        ..GradCheck::default()
    };
    check_store_gradients(store, loss, &check).unwrap();
    let invariant = IgvaConfig::softmax_invariant_params(cfg.depth);
    let invariant: Vec<&str> = invariant.iter().map(String::as_str).collect();
    check_every_param_learns(store, loss, &invariant).unwrap();
}

#[test]
fn gradients_match_finite_differences_and_reach_every_parameter() {
    let cfg = config();
    let (store, connector) = build(&cfg);
    let (x, t) = inputs(true);
    check_gradients(&cfg, &store, &connector, (&x, &t), 6);
}

#[test]
fn reference_size_with_a_768_wide_sentence_encoder() {
    let recorder = ShapeRecorder::new();
    let cfg = IgvaConfig::default();
    let groups = cfg.resolve_groups(&vision_info(24)).unwrap();
    let dims = IgvaDims {
        vision: 1024,
        text: 768,
        llm: 4096,
    };
    IgvaConnector::new(
        &cfg,
        groups,
        dims,
        TextSource::NotLoaded,
        recorder.builder(),
    )
    .unwrap();
    let total: usize = recorder
        .shapes()
        .values()
        .map(|s| s.iter().product::<usize>())
        .sum();
    assert_eq!(total, 52_221_956);
}

#[test]
fn the_projector_sees_the_base_layer_unchanged_when_groups_are_equal() {
    // With every group equal to the base layer, F = hs[-2] whatever the weights.
    let (store, connector) = build(&config());
    let (mut x, t) = inputs(true);
    let base = x.layers[2].clone(); // hs[3] = hs[-2]
    x.layers = vec![base.clone(); DEPTH];
    let out = connector.forward(&x, Some(&t)).unwrap().tokens.unwrap();
    let existing = store.builder(Missing::Error, std::sync::Arc::new(|_: &str| true));
    let proj = nn::mlp_projector(2 * DV, DLLM, existing.pp("proj")).unwrap();
    let expected = proj
        .forward(&Tensor::cat(&[&base, &base], 2).unwrap())
        .unwrap();
    assert!(max_abs_diff(&out, &expected).unwrap() < 1e-12);
}

#[test]
fn a_sentence_encoder_turns_the_query_text_into_the_group_weights() {
    let (_dir, encoder) = sentence_encoder();
    let cfg = config();
    let (store, connector) =
        build_with_text(&cfg, BERT_WIDTH, TextSource::Encoder(encoder.clone()));
    let (x, mut t) = inputs(true);
    t.queries = vec![
        "what color is the circle?".into(),
        "how many squares?".into(),
    ];
    let weights = |t: &TextContext| {
        connector.forward(&x, Some(t)).unwrap().maps["groups"]
            .to_vec2::<f64>()
            .unwrap()
    };
    let w = weights(&t);
    assert!(
        (w[0][0] - w[1][0]).abs() > 1e-9,
        "two queries, one weighting: {w:?}"
    );
    // The language model's embeddings no longer matter: only the text does.
    let mut other_embeds = t.clone();
    other_embeds.embeds = randn(&[B, T, DT], 71);
    assert_eq!(weights(&other_embeds), w);
    // Another question for the second sample moves its weights only.
    let mut asked = t.clone();
    asked.queries[1] = "what color is the square?".into();
    let wa = weights(&asked);
    assert_eq!(wa[0], w[0]);
    assert!((wa[1][0] - w[1][0]).abs() > 1e-9, "{wa:?} vs {w:?}");

    // Every trainable parameter still learns; the encoder has none to learn.
    check_gradients(&cfg, &store, &connector, (&x, &t), 4);
    assert!(store.vars().iter().all(|(n, _)| !n.contains("embeddings")));
}

#[test]
fn a_sentence_encoder_needs_the_query_text_and_its_own_width() {
    let (_dir, encoder) = sentence_encoder();
    let (_, connector) =
        build_with_text(&config(), BERT_WIDTH, TextSource::Encoder(encoder.clone()));
    let (x, t) = inputs(true);
    let err = connector.forward(&x, Some(&t)).err().unwrap().to_string();
    assert!(err.contains("0 texts for 2 samples"), "{err}");

    let groups = config().resolve_groups(&vision_info(DEPTH)).unwrap();
    let dims = IgvaDims {
        vision: DV,
        text: DT,
        llm: DLLM,
    };
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let err = IgvaConnector::new(
        &config(),
        groups,
        dims,
        TextSource::Encoder(encoder),
        store.init_builder(1),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("width is 24") && err.contains("input 5"),
        "{err}"
    );

    let (_, unloaded) = build_with_text(&config(), BERT_WIDTH, TextSource::NotLoaded);
    let err = unloaded.forward(&x, Some(&t)).err().unwrap().to_string();
    assert!(err.contains("not loaded"), "{err}");
}
