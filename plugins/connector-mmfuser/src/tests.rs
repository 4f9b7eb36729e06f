//! MMFuser against a literal reading of the spec, its identity at
//! initialisation, finite differences, and the reference size.

use super::*;
use vlmkit_core::gradcheck::{
    check_every_param_learns, check_store_gradients, max_abs_diff, random_projection, GradCheck,
};
use vlmkit_core::params::{Missing, ParamStore, ShapeRecorder};

const B: usize = 2;
const DEPTH: usize = 4;
const N: usize = 3;
const DV: usize = 4;
const HEADS: usize = 2;
const DLLM: usize = 5;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    vlmkit_core::gradcheck::randn(shape, 1.0, seed).unwrap()
}

fn config() -> MmfuserConfig {
    MmfuserConfig {
        base_layer: -2,
        levels: vec![1, 2],
        heads: HEADS,
        attention: AttentionKind::Dense,
    }
}

fn features() -> VisualFeatures {
    VisualFeatures {
        layers: [1usize, 2, 3]
            .iter()
            .map(|&l| {
                randn(&[B, N, DV], 20 + l as u64)
                    .affine(1.0 + 0.5 * l as f64, 0.2)
                    .unwrap()
            })
            .collect(),
        layer_ids: vec![1, 2, 3],
        cls: None,
        depth: DEPTH,
        grid: (1, N),
    }
}

fn build() -> (ParamStore, MmfuserConnector) {
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let connector = MmfuserConnector::new(&config(), DV, DLLM, store.init_builder(5)).unwrap();
    (store, connector)
}

/// Opens the gates (they start at zero) so that every weight matters.
fn open_gates(store: &ParamStore) {
    for (name, seed) in [("gamma1", 1), ("gamma2", 2)] {
        store
            .get(name)
            .unwrap()
            .set(&randn(&[DV], 60 + seed))
            .unwrap();
    }
}

#[test]
fn the_block_is_the_identity_at_initialisation() {
    let (store, connector) = build();
    let x = features();
    let q = x.layer(-2).unwrap();
    assert_eq!(max_abs_diff(&connector.fuse(&x).unwrap(), q).unwrap(), 0.0);
    // So the connector is LLaVA's MLP on hs[-2], with the same projector weights.
    let existing = store.builder(Missing::Error, std::sync::Arc::new(|_: &str| true));
    let mlp = nn::mlp_projector(DV, DLLM, existing.pp("proj")).unwrap();
    let y = connector.forward(&x, None).unwrap().tokens.unwrap();
    assert_eq!(max_abs_diff(&y, &mlp.forward(q).unwrap()).unwrap(), 0.0);
}

/// A literal reading of the spec for one sample: per-head attention with explicit
/// score matrices, norms from their definition.
fn literal_fuse(store: &ParamStore, x: &VisualFeatures, b: usize) -> Tensor {
    let w = |name: &str| store.get(name).unwrap().as_tensor().clone();
    let linear = |prefix: &str, x: &Tensor| {
        x.matmul(&w(&format!("{prefix}.weight")).t().unwrap())
            .unwrap()
            .broadcast_add(&w(&format!("{prefix}.bias")))
            .unwrap()
    };
    let norm = |prefix: &str, x: &Tensor| {
        let mu = x.mean_keepdim(1).unwrap();
        let c = x.broadcast_sub(&mu).unwrap();
        let var = c.sqr().unwrap().mean_keepdim(1).unwrap();
        c.broadcast_div(&(var + NORM_EPS).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w(&format!("{prefix}.weight")))
            .unwrap()
            .broadcast_add(&w(&format!("{prefix}.bias")))
            .unwrap()
    };
    let mha = |prefix: &str, queries: &Tensor, memory: &Tensor| {
        let q = linear(&format!("{prefix}.q"), queries);
        let k = linear(&format!("{prefix}.k"), memory);
        let v = linear(&format!("{prefix}.v"), memory);
        let hd = DV / HEADS;
        let heads: Vec<Tensor> = (0..HEADS)
            .map(|h| {
                let (q, k, v) = (
                    q.narrow(1, h * hd, hd).unwrap(),
                    k.narrow(1, h * hd, hd).unwrap(),
                    v.narrow(1, h * hd, hd).unwrap(),
                );
                let scores = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
                let e = scores
                    .broadcast_sub(&scores.max_keepdim(1).unwrap())
                    .unwrap()
                    .exp()
                    .unwrap();
                let p = e.broadcast_div(&e.sum_keepdim(1).unwrap()).unwrap();
                p.matmul(&v).unwrap()
            })
            .collect();
        linear(&format!("{prefix}.o"), &Tensor::cat(&heads, 1).unwrap())
    };
    let sample = |l: i64| x.layer(l).unwrap().get(b).unwrap();
    let q = sample(-2);
    let s = Tensor::cat(&[sample(1), sample(2)], 0).unwrap();
    let a = mha("cross", &norm("norm_q", &q), &norm("norm_f", &s));
    let n1 = norm("norm_1", &a);
    let a2 = mha("self_attn", &n1, &n1);
    let a = (a + a2.broadcast_mul(&w("gamma2")).unwrap()).unwrap();
    (q + a.broadcast_mul(&w("gamma1")).unwrap()).unwrap()
}

#[test]
fn fusion_matches_a_literal_reading_of_the_spec() {
    let (store, connector) = build();
    open_gates(&store);
    let x = features();
    let fused = connector.fuse(&x).unwrap();
    for b in 0..B {
        let diff = max_abs_diff(&fused.get(b).unwrap(), &literal_fuse(&store, &x, b)).unwrap();
        assert!(diff < 1e-10, "sample {b}: {diff}");
    }
}

#[test]
fn gradients_match_finite_differences_and_reach_every_parameter() {
    let (store, connector) = build();
    let x = features();
    let loss = || random_projection(connector.forward(&x, None)?.tokens.as_ref().unwrap(), 3);
    // Closed gates: only γ1 and the projector can learn at the first step (γ2
    // and the attentions reach the output through γ1 only).
    let attention: Vec<String> = store
        .vars()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !n.starts_with("proj.") && n != "gamma1")
        .collect();
    let closed: Vec<&str> = attention.iter().map(String::as_str).collect();
    check_every_param_learns(&store, loss, &closed).unwrap();
    // Open gates: everything learns, and matches finite differences.
    open_gates(&store);
    check_store_gradients(
        &store,
        loss,
        &GradCheck {
            max_elems: 6,
            ..GradCheck::default()
        },
    )
    .unwrap();
    check_every_param_learns(&store, loss, &MmfuserConfig::softmax_invariant_params()).unwrap();
}

#[test]
fn reference_size_with_dense_attention() {
    let recorder = ShapeRecorder::new();
    MmfuserConnector::new(&MmfuserConfig::default(), 1024, 4096, recorder.builder()).unwrap();
    let shapes = recorder.shapes();
    let count = |keep: &dyn Fn(&str) -> bool| -> usize {
        shapes
            .iter()
            .filter(|(n, _)| keep(n))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    };
    // Two attentions of four 1024×1024 projections with biases, three norms, two gates.
    let fusion = 2 * 4 * (1024 * 1024 + 1024) + 3 * 2 * 1024 + 2 * 1024;
    assert_eq!(count(&|n| !n.starts_with("proj.")), fusion);
    assert_eq!(fusion, 8_404_992);
    assert_eq!(count(&|n| n.starts_with("proj.")), 20_979_712);
}
