//! AGE's blocks: identity at initialisation, a literal reading of the spec once
//! the gates open, finite differences, incremental decoding over the cached
//! keys and values, and the settings' refusals.

use super::*;
use vlmkit_core::gradcheck::{
    check_every_param_learns, check_store_gradients, max_abs_diff, random_projection, GradCheck,
};
use vlmkit_core::params::{Missing, ParamStore};
use vlmkit_plugin::vlmkit_core::ConnectorOutput;

const B: usize = 2;
const N: usize = 3;
const DV: usize = 4;
const DLLM: usize = 6;
const HEADS: usize = 2;
const T: usize = 5;
/// Blocks run before decoder layers 1 and 3.
const POSITIONS: [usize; 2] = [1, 3];

fn randn(shape: &[usize], seed: u64) -> Tensor {
    vlmkit_core::gradcheck::randn(shape, 1.0, seed).unwrap()
}

fn config() -> AgeConfig {
    AgeConfig {
        layer: -1,
        layers: Some(POSITIONS.to_vec()),
        heads: HEADS,
    }
}

fn features() -> VisualFeatures {
    VisualFeatures {
        layers: vec![randn(&[B, N, DV], 21)],
        layer_ids: vec![4],
        cls: None,
        depth: 4,
        grid: (1, N),
    }
}

fn build() -> (ParamStore, AgeConnector) {
    let store = ParamStore::new(Device::Cpu, DType::F64);
    let dims = AgeDims {
        vision: DV,
        llm: DLLM,
    };
    let connector =
        AgeConnector::new(&config(), POSITIONS.to_vec(), dims, store.init_builder(5)).unwrap();
    (store, connector)
}

/// Opens every gate (they start at zero) so that every weight matters.
fn open_gates(store: &ParamStore) {
    for j in 0..POSITIONS.len() {
        for (k, gate) in ["gate_attn", "gate_ff"].iter().enumerate() {
            let value = Tensor::new(&[0.3 + 0.2 * (j + k) as f64], &Device::Cpu).unwrap();
            store
                .get(&format!("blocks.{j}.{gate}"))
                .unwrap()
                .set(&value)
                .unwrap();
        }
    }
}

fn hooks(out: &ConnectorOutput) -> Arc<dyn DecoderHooks> {
    out.hooks
        .clone()
        .expect("an interleaved connector returns hooks")
}

/// Runs the hooks of decoder layers 0..4 over `x` (no decoder layers between:
/// the blocks alone).
fn through_blocks(hooks: &dyn DecoderHooks, x: &Tensor) -> Tensor {
    (0..4).fold(x.clone(), |h, layer| hooks.before_layer(layer, &h).unwrap())
}

#[test]
fn closed_gates_leave_the_language_model_unchanged() {
    let (_store, connector) = build();
    let out = connector.forward(&features(), None).unwrap();
    assert!(out.tokens.is_none(), "no visual tokens in the sequence");
    let hooks = hooks(&out);
    let x = randn(&[B, T, DLLM], 30);
    for layer in 0..4 {
        let y = hooks.before_layer(layer, &x).unwrap();
        assert_eq!(max_abs_diff(&x, &y).unwrap(), 0.0, "layer {layer}");
    }
}

/// The spec read literally: per block, `x + tanh(a)·softmax(q kᵀ/√d_h) v Wo`, then
/// `x + tanh(a_ff)·W2 GELU(W1 LN(x))`, with the weights taken from the store.
fn literal(store: &ParamStore, x: &Tensor) -> Tensor {
    let w = |name: &str| store.get(name).unwrap().as_tensor().clone();
    let ln = |x: &Tensor, p: &str| -> Tensor {
        let mean = x.mean_keepdim(2).unwrap();
        let centred = x.broadcast_sub(&mean).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(2).unwrap();
        centred
            .broadcast_div(&(var + NORM_EPS).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w(&format!("{p}.weight")))
            .unwrap()
            .broadcast_add(&w(&format!("{p}.bias")))
            .unwrap()
    };
    let lin = |x: &Tensor, name: &str| x.broadcast_matmul(&w(name).t().unwrap()).unwrap();
    let memory = lin(&features().layers[0], "adapter.weight")
        .broadcast_add(&w("adapter.bias"))
        .unwrap();
    let dh = DLLM / HEADS;
    let heads = |t: &Tensor| {
        let (b, s, _) = t.dims3().unwrap();
        t.reshape((b, s, HEADS, dh))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
    };
    let mut x = x.clone();
    for (j, _) in POSITIONS.iter().enumerate() {
        let p = format!("blocks.{j}");
        let h = ln(&x, &format!("{p}.norm_attn"));
        let q = heads(&lin(&h, &format!("{p}.q.weight")));
        let k = heads(&lin(&memory, &format!("{p}.k.weight")));
        let v = heads(&lin(&memory, &format!("{p}.v.weight")));
        let scores = (q
            .contiguous()
            .unwrap()
            .matmul(&k.t().unwrap().contiguous().unwrap())
            .unwrap()
            / (dh as f64).sqrt())
        .unwrap();
        let e = scores.exp().unwrap();
        let probs = e.broadcast_div(&e.sum_keepdim(3).unwrap()).unwrap();
        let att = probs
            .contiguous()
            .unwrap()
            .matmul(&v.contiguous().unwrap())
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((B, T, DLLM))
            .unwrap();
        let att = lin(&att, &format!("{p}.o.weight"));
        let gate = |g: &str| w(&format!("{p}.{g}")).tanh().unwrap();
        x = (&x + att.broadcast_mul(&gate("gate_attn")).unwrap()).unwrap();
        let h = ln(&x, &format!("{p}.norm_ff"));
        let ff = lin(
            &lin(&h, &format!("{p}.ff.0.weight")).gelu_erf().unwrap(),
            &format!("{p}.ff.2.weight"),
        );
        x = (&x + ff.broadcast_mul(&gate("gate_ff")).unwrap()).unwrap();
    }
    x
}

#[test]
fn open_gates_match_a_literal_reading_of_the_spec() {
    let (store, connector) = build();
    open_gates(&store);
    let x = randn(&[B, T, DLLM], 31);
    let out = connector.forward(&features(), None).unwrap();
    let y = through_blocks(hooks(&out).as_ref(), &x);
    let expected = literal(&store, &x);
    assert!(max_abs_diff(&y, &expected).unwrap() < 1e-10);
    assert!(max_abs_diff(&y, &x).unwrap() > 1e-3);
}

#[test]
fn the_attention_map_covers_every_block_and_sums_to_one_over_the_image() {
    let (_store, connector) = build();
    let out = connector.forward(&features(), None).unwrap();
    let hooks = hooks(&out);
    assert!(hooks.maps().is_empty(), "nothing ran yet");
    through_blocks(hooks.as_ref(), &randn(&[B, T, DLLM], 32));
    let maps = hooks.maps();
    let map = &maps[GROUNDING_MAP];
    assert_eq!(map.dims(), &[B, POSITIONS.len(), T, N]);
    let sums = map
        .sum(3)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-12), "{sums:?}");
}

#[test]
fn one_new_token_over_the_cached_image_matches_the_full_pass() {
    // Decoding feeds one position at a time; the blocks reuse the image's keys and
    // values, and a position's output does not depend on the others.
    let (store, connector) = build();
    open_gates(&store);
    let out = connector.forward(&features(), None).unwrap();
    let hooks = hooks(&out);
    let x = randn(&[B, T, DLLM], 33);
    let full = through_blocks(hooks.as_ref(), &x);
    let last = through_blocks(hooks.as_ref(), &x.narrow(1, T - 1, 1).unwrap());
    let expected = full.narrow(1, T - 1, 1).unwrap();
    assert!(max_abs_diff(&last, &expected).unwrap() < 1e-12);
}

#[test]
fn gradients_match_finite_differences_and_reach_every_parameter() {
    let (store, connector) = build();
    let x = randn(&[B, T, DLLM], 34);
    let loss = || {
        let out = connector.forward(&features(), None)?;
        let hooks = hooks(&out);
        let y = through_blocks(hooks.as_ref(), &x);
        let map = hooks.maps()[GROUNDING_MAP].clone();
        random_projection(&y, 1)? + random_projection(&map, 2)?
    };
    // Closed gates: what lies behind them is multiplied by tanh(0) = 0. The gates
    // learn, and so does what shapes the attention map (queries, keys, the
    // adapter's weight); the adapter's bias only shifts every key alike, which the
    // softmax cancels.
    let shapes_the_map = |n: &str| {
        n.contains("gate")
            || n.contains(".q.")
            || n.contains(".k.")
            || n.contains("norm_attn")
            || n == "adapter.weight"
    };
    let closed: Vec<String> = store
        .vars()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| !shapes_the_map(n))
        .collect();
    let closed: Vec<&str> = closed.iter().map(String::as_str).collect();
    check_every_param_learns(&store, loss, &closed).unwrap();

    open_gates(&store);
    let check = GradCheck {
        max_elems: 5,
        ..GradCheck::default()
    };
    check_store_gradients(&store, loss, &check).unwrap();
    check_every_param_learns(&store, loss, &[]).unwrap();
}

#[test]
fn the_weights_have_the_spec_s_names() {
    let (store, _) = build();
    let mut names: Vec<String> = store
        .vars()
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| n.starts_with("blocks.0.") || n.starts_with("adapter."))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "adapter.bias",
            "adapter.weight",
            "blocks.0.ff.0.weight",
            "blocks.0.ff.2.weight",
            "blocks.0.gate_attn",
            "blocks.0.gate_ff",
            "blocks.0.k.weight",
            "blocks.0.norm_attn.bias",
            "blocks.0.norm_attn.weight",
            "blocks.0.norm_ff.bias",
            "blocks.0.norm_ff.weight",
            "blocks.0.o.weight",
            "blocks.0.q.weight",
            "blocks.0.v.weight",
        ]
    );
    let existing = store.builder(Missing::Error, Arc::new(|_: &str| true));
    assert!(existing.get(1, "blocks.1.gate_ff").is_ok());
}

#[test]
fn block_positions_default_to_every_fourth_layer_from_the_third() {
    let cfg = AgeConfig::default();
    assert_eq!(cfg.block_positions(16), vec![2, 6, 10, 14]);
    assert_eq!(cfg.block_positions(4), vec![2]);
    assert_eq!(cfg.block_positions(2), Vec::<usize>::new());
}
