//! The Dense Connector against the spec's layer choices, hand-computed fusions,
//! finite differences, and the reference sizes.

use super::*;
use vlmkit_core::gradcheck::{
    check_every_param_learns, check_store_gradients, max_abs_diff, randn_var, random_projection,
    GradCheck,
};
use vlmkit_core::params::{ParamStore, ShapeRecorder};

const B: usize = 2;
const DEPTH: usize = 4;
const N: usize = 6;
const DV: usize = 3;
const DLLM: usize = 5;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    vlmkit_core::gradcheck::randn(shape, 1.0, seed).unwrap()
}

/// Every hidden state `hs[0..=DEPTH]` of a `B×N×DV` batch, each distinct.
fn features() -> VisualFeatures {
    VisualFeatures {
        layers: (0..=DEPTH)
            .map(|l| randn(&[B, N, DV], 10 + l as u64))
            .collect(),
        layer_ids: (0..=DEPTH).collect(),
        cls: None,
        depth: DEPTH,
        grid: (2, 3),
    }
}

fn config(variant: Variant) -> DenseConfig {
    DenseConfig {
        variant,
        pool: 4,
        ..DenseConfig::default()
    }
}

fn build(variant: Variant) -> (ParamStore, DenseConnector) {
    let cfg = config(variant);
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let connector = DenseConnector::new(
        cfg.base_layer,
        cfg.integration(DEPTH).unwrap(),
        DV,
        DLLM,
        store.init_builder(3),
    )
    .unwrap();
    (store, connector)
}

#[test]
fn layer_choices_follow_the_spec_at_24_blocks() {
    let dci = config(Variant::Dci).integration(24).unwrap();
    assert_eq!(
        dci,
        Integration::Channels {
            groups: [(0..12).collect(), (12..24).collect()]
        }
    );
    let sci = DenseConfig {
        variant: Variant::Sci,
        ..DenseConfig::default()
    }
    .integration(24)
    .unwrap();
    assert_eq!(
        sci,
        Integration::Sparse {
            layers: [7, 15],
            pool: None
        }
    );
    let sti = DenseConfig {
        variant: Variant::Sti,
        ..DenseConfig::default()
    }
    .integration(24)
    .unwrap();
    assert_eq!(sti.tokens(576), 720);
    assert_eq!(sti.input_width(1024), 1024);
    assert_eq!(dci.input_width(1024), 3 * 1024);
    assert!(config(Variant::Sci).integration(2).is_err());
    assert!(config(Variant::Dci).integration(1).is_err());
}

#[test]
fn fusions_match_their_definitions() {
    let x = features();
    let hs = |l: usize| x.layers[l].clone();
    // DEPTH = 4: V0 = hs[3]; DCI groups {hs[0], hs[1]} and {hs[2], hs[3]}.
    let (_, dci) = build(Variant::Dci);
    let g1 = ((hs(0) + hs(1)).unwrap() / 2.0).unwrap();
    let g2 = ((hs(2) + hs(3)).unwrap() / 2.0).unwrap();
    let expected = Tensor::cat(&[hs(3), g1, g2], 2).unwrap();
    assert!(max_abs_diff(&dci.fuse(&x).unwrap(), &expected).unwrap() < 1e-12);
    // SCI: hs[4/3 - 1] = hs[0], hs[8/3 - 1] = hs[1].
    let (_, sci) = build(Variant::Sci);
    let expected = Tensor::cat(&[hs(3), hs(0), hs(1)], 2).unwrap();
    assert!(max_abs_diff(&sci.fuse(&x).unwrap(), &expected).unwrap() < 1e-12);
    // STI with a window of 4 over 6 tokens: one window, the last two dropped.
    let (_, sti) = build(Variant::Sti);
    let window_mean = |l: usize| hs(l).narrow(1, 0, 4).unwrap().mean_keepdim(1).unwrap();
    let expected = Tensor::cat(&[hs(3), window_mean(0), window_mean(1)], 1).unwrap();
    let fused = sti.fuse(&x).unwrap();
    assert_eq!(fused.dims(), [B, N + 2, DV]);
    assert!(max_abs_diff(&fused, &expected).unwrap() < 1e-12);
}

#[test]
fn average_pooling_of_a_known_sequence() {
    let x = Tensor::arange(0f64, 10.0, &Device::Cpu)
        .unwrap()
        .reshape((1, 10, 1))
        .unwrap();
    let pooled = avg_pool_tokens(&x, 4).unwrap();
    assert_eq!(
        pooled.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        [1.5, 5.5]
    );
}

#[test]
fn gradients_match_finite_differences_and_reach_every_parameter() {
    for variant in [Variant::Dci, Variant::Sci, Variant::Sti] {
        let (store, connector) = build(variant);
        let x = features();
        let loss = || {
            let out = connector.forward(&x, None)?;
            random_projection(out.tokens.as_ref().unwrap(), 1)
        };
        check_store_gradients(
            &store,
            loss,
            &GradCheck {
                max_elems: 8,
                ..GradCheck::default()
            },
        )
        .unwrap_or_else(|e| panic!("{variant:?}: {e}"));
        check_every_param_learns(&store, loss, &[]).unwrap_or_else(|e| panic!("{variant:?}: {e}"));
    }
}

#[test]
fn inputs_get_gradients_through_the_fusion() {
    // The vision encoder trains through the parameter-free fusion: each fused
    // layer's gradient is checked against finite differences.
    let (_, connector) = build(Variant::Dci);
    let vars: Vec<_> = (0..=DEPTH)
        .map(|l| randn_var(&[B, N, DV], 1.0, 40 + l as u64).unwrap())
        .collect();
    let loss = || {
        let x = VisualFeatures {
            layers: vars.iter().map(|v| v.as_tensor().clone()).collect(),
            ..features()
        };
        random_projection(connector.forward(&x, None)?.tokens.as_ref().unwrap(), 2)
    };
    let names: Vec<String> = (0..=DEPTH).map(|l| format!("hs[{l}]")).collect();
    let named: Vec<(&str, &vlmkit_plugin::candle_core::Var)> =
        names.iter().map(String::as_str).zip(vars.iter()).collect();
    // hs[4], the last block, is not among DCI's layers: it gets no gradient.
    vlmkit_core::gradcheck::check_gradients(&named, loss, &GradCheck::default()).unwrap();
}

#[test]
fn reference_sizes() {
    let count = |variant: Variant| {
        let cfg = DenseConfig {
            variant,
            ..DenseConfig::default()
        };
        let recorder = ShapeRecorder::new();
        DenseConnector::new(
            -2,
            cfg.integration(24).unwrap(),
            1024,
            4096,
            recorder.builder(),
        )
        .unwrap();
        recorder
            .shapes()
            .values()
            .map(|s| s.iter().product::<usize>())
            .sum::<usize>()
    };
    assert_eq!(count(Variant::Dci), 29_368_320);
    assert_eq!(count(Variant::Sci), 29_368_320);
    assert_eq!(count(Variant::Sti), 20_979_712);
}
