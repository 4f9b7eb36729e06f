//! The assembled model: every trainable parameter receives a gradient, frozen
//! components receive none, splitting a batch does not change its gradient, and a
//! batch without supervision is refused.

use candle_core::{DType, Device, Tensor, Var};
use vlmkit_core::gradcheck::{max_abs, max_abs_diff};
use vlmkit_core::params::{Missing, ParamStore};
use vlmkit_data::Example;
use vlmkit_pipeline::batch::BatchBuilder;
use vlmkit_pipeline::Plan;
use vlmkit_recipe::Recipe;
use vlmkit_tests::{
    components, examples, open_gates, repo, tiny, AGE_WITH_DICE, CCRA_WITH_DICE, CONNECTORS,
};
use vlmkit_train::step::{forward_backward, Parallelism};
use vlmkit_train::trainer::StageModel;

fn plan(extra: &[&str]) -> Plan {
    let mut overrides = tiny(1);
    overrides.extend(extra.iter().map(|s| s.to_string()));
    let recipe = Recipe::load(&repo().join("recipes/mlp.toml"), &overrides).unwrap();
    Plan::new(recipe, &components(), None).unwrap()
}

struct Built {
    plan: Plan,
    store: ParamStore,
    vlm: vlmkit_core::Vlm,
    params: Vec<(String, Var)>,
    builder: BatchBuilder,
}

fn build(extra: &[&str]) -> Built {
    let plan = plan(extra);
    let store = ParamStore::new(Device::Cpu, DType::F32);
    let unused = plan
        .model
        .create_params(&store, Missing::Initialize { seed: 3 })
        .unwrap();
    let StageModel { vlm, params } =
        StageModel::build(&plan, &store, &plan.recipe.stages[0], &unused).unwrap();
    let builder = plan.batch_builder(Device::Cpu).unwrap();
    Built {
        plan,
        store,
        vlm,
        params,
        builder,
    }
}

fn norm(t: &Tensor) -> f64 {
    t.sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap() as f64
}

/// Runs one backward pass and lists trainable parameters with no gradient, or a
/// zero one unless `zero_expected` names them.
fn params_without_gradient(b: &Built, zero_expected: &[String]) -> Vec<String> {
    let out = forward_backward(
        &b.vlm,
        &b.builder,
        &examples(16),
        &b.params,
        1.0,
        Parallelism::new(1),
    )
    .unwrap();
    let mut missing = Vec::new();
    for (name, _) in &b.params {
        match out.grads.get(name) {
            None => missing.push(format!("{name} (no gradient)")),
            Some(g) if norm(g) == 0.0 && !zero_expected.contains(name) => {
                missing.push(format!("{name} (zero gradient)"))
            }
            Some(_) => {}
        }
    }
    missing
}

#[test]
fn every_trainable_parameter_receives_a_nonzero_gradient() {
    let b = build(&[]);
    let missing = params_without_gradient(&b, &[]);
    assert!(missing.is_empty(), "{missing:#?}");
    // Every component trains in this stage, except what cannot influence the loss:
    // encoder blocks past the selected layer and the pooled-output norm.
    let trainable: Vec<&str> = b.params.iter().map(|(n, _)| n.as_str()).collect();
    for component in ["vision.", "connector.", "llm."] {
        assert!(
            trainable.iter().any(|n| n.starts_with(component)),
            "{component} not trained"
        );
    }
    let last_block = format!(
        "vision.vision_model.encoder.layers.{}.",
        b.plan.model.vision.info().depth - 1
    );
    assert!(
        !trainable.iter().any(|n| n.starts_with(&last_block)),
        "hs[-2] does not read the last block"
    );
    assert!(!trainable.iter().any(|n| n.contains("post_layernorm")));
    assert!(b.store.len() > b.params.len());
}

#[test]
fn every_parameter_trains_through_the_baseline_connectors() {
    // Dense Connector, each variant: parameter-free fusions of several layers.
    for variant in ["dci", "sci", "sti"] {
        let b = build(&[
            "connector.kind=\"dense\"",
            &format!("connector.variant=\"{variant}\""),
            "connector.pool=4",
            "vision.num_hidden_layers=3",
        ]);
        let missing = params_without_gradient(&b, &[]);
        assert!(missing.is_empty(), "{variant}: {missing:#?}");
    }
    // MMFuser: its gates start closed, which leaves the attentions without a
    // gradient at the first step by design; opened, everything trains except the
    // key biases a softmax cancels.
    let b = build(&[
        "connector.kind=\"mmfuser\"",
        "connector.levels=[0, 1]",
        "connector.heads=2",
        "vision.num_hidden_layers=3",
    ]);
    for gate in ["connector.gamma1", "connector.gamma2"] {
        let var = b.store.get(gate).unwrap();
        var.set(&var.ones_like().unwrap().affine(0.5, 0.0).unwrap())
            .unwrap();
    }
    let invariant: Vec<String> = connector_mmfuser::MmfuserConfig::softmax_invariant_params()
        .iter()
        .map(|n| format!("connector.{n}"))
        .collect();
    let missing = params_without_gradient(&b, &invariant);
    assert!(missing.is_empty(), "{missing:#?}");
    // IGVA: the aggregator reads the query embeddings; its entropy term counts
    // by default.
    let b = build(&[
        "connector.kind=\"igva\"",
        "connector.groups=2",
        "connector.heads=2",
        "connector.depth=2",
    ]);
    assert_eq!(b.vlm.loss_weights.get("entropy"), Some(&1.0));
    let invariant: Vec<String> = connector_igva::IgvaConfig::softmax_invariant_params(2)
        .iter()
        .map(|n| format!("connector.{n}"))
        .collect();
    let missing = params_without_gradient(&b, &invariant);
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn every_parameter_trains_through_the_interleaved_connector_once_its_gates_open() {
    let b = build(&AGE_WITH_DICE);
    assert_eq!(
        b.plan.model.visual_tokens, 0,
        "no visual tokens in the sequence"
    );
    // Closed gates (step 0): what lies behind them gets no gradient yet. The
    // gates, and through the Dice term the attention's queries and keys, do.
    let behind_gates: Vec<String> = b
        .params
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| {
            n.starts_with("connector.")
                && [".v.", ".o.", ".ff.", "norm_ff", "adapter.bias"]
                    .iter()
                    .any(|p| n.contains(p))
        })
        .collect();
    assert!(!behind_gates.is_empty());
    let missing = params_without_gradient(&b, &behind_gates);
    assert!(missing.is_empty(), "{missing:#?}");
    for gate in ["gate_attn", "gate_ff"] {
        let var = b.store.get(&format!("connector.blocks.0.{gate}")).unwrap();
        var.set(&Tensor::new(&[0.5f32], &Device::Cpu).unwrap())
            .unwrap();
    }
    let missing = params_without_gradient(&b, &[]);
    assert!(missing.is_empty(), "{missing:#?}");
    let batch = b.builder.train(&examples(16)).unwrap();
    let out = b.vlm.loss(&batch).unwrap();
    assert_eq!(out.maps["xattn"].dims()[..2], [16, 1]);
    assert!(out.terms.contains_key("dice"));
}

/// A sequence longer than the language model's positions is refused (it used
/// to be accepted), and generation stops at the last position, with or without
/// the KV cache, rather than run past it.
/// Generation with the KV cache, checked against generation without it.
fn generate_both(
    b: &Built,
    batch: &vlmkit_core::VlmBatch,
    opts: &vlmkit_core::GenerateOptions,
) -> Vec<Vec<u32>> {
    let cached = b
        .vlm
        .generate(&batch.pixels, &batch.sequences, opts)
        .unwrap();
    let recomputed = b
        .vlm
        .generate_without_cache(&batch.pixels, &batch.sequences, opts)
        .unwrap();
    assert_eq!(cached, recomputed);
    cached
}

#[test]
fn nothing_runs_past_the_model_s_positions() {
    let b = build(&["llm.max_position_embeddings=40"]);
    let batch = b.builder.prompts(&examples(2)).unwrap();
    let prompt = batch.sequences[0].ids.len() + b.plan.model.visual_tokens - 1;
    assert!(prompt < 40, "{prompt}");
    let opts = vlmkit_core::GenerateOptions {
        max_new_tokens: 100,
        ..Default::default()
    };
    let cached = generate_both(&b, &batch, &opts);
    assert!(
        cached.iter().all(|tokens| prompt + tokens.len() <= 41),
        "{prompt} + {cached:?}"
    );
    let mut long = batch.sequences[0].clone();
    long.ids.extend(std::iter::repeat_n(long.ids[1], 40));
    long.labels.extend(std::iter::repeat_n(-100, 40));
    let err = b
        .vlm
        .logits(&batch.pixels.narrow(0, 0, 1).unwrap(), &[long])
        .unwrap_err()
        .to_string();
    assert!(err.contains("positions") && err.contains("has 40"), "{err}");
}

#[test]
fn generation_with_the_kv_cache_equals_generation_without_it() {
    let age = [
        "connector.kind=\"age\"",
        "connector.layers=[0]",
        "connector.heads=2",
        "vision.layers=[-1]",
    ];
    for extra in [&[][..], &age[..]] {
        let b = build(extra);
        // Open AGE's gates so its blocks take part (no-op for the MLP).
        for gate in ["gate_attn", "gate_ff"] {
            if let Some(var) = b.store.get(&format!("connector.blocks.0.{gate}")) {
                var.set(&Tensor::new(&[0.7f32], &Device::Cpu).unwrap())
                    .unwrap();
            }
        }
        let mut batch_examples = examples(3);
        batch_examples.push(Example::single_turn(
            "t",
            None,
            "What color is the circle?",
            "red",
        ));
        let batch = b.builder.prompts(&batch_examples).unwrap();
        let opts = vlmkit_core::GenerateOptions {
            max_new_tokens: 6,
            ..Default::default()
        };
        let cached = generate_both(&b, &batch, &opts);
        assert!(
            cached.iter().all(|tokens| tokens.len() == 6),
            "{extra:?} {cached:?}"
        );
    }
}

#[test]
fn text_only_samples_do_not_read_a_blank_image_through_interleaved_blocks() {
    let b = build(&[
        "connector.kind=\"age\"",
        "connector.layers=[0]",
        "connector.heads=2",
        "vision.layers=[-1]",
    ]);
    let text_only = Example::single_turn("t", None, "What color is the circle?", "red");
    let with_image = examples(1).remove(0);
    let lm = |batch: &[Example]| {
        let out = b.vlm.loss(&b.builder.train(batch).unwrap()).unwrap();
        out.terms["lm"].to_scalar::<f32>().unwrap()
    };
    let closed = (
        lm(std::slice::from_ref(&text_only)),
        lm(std::slice::from_ref(&with_image)),
    );
    for gate in ["gate_attn", "gate_ff"] {
        let var = b.store.get(&format!("connector.blocks.0.{gate}")).unwrap();
        var.set(&Tensor::new(&[0.5f32], &Device::Cpu).unwrap())
            .unwrap();
    }
    // Open gates change what a sample with an image sees, not a text-only one,
    // alone or beside an image sample.
    assert_eq!(lm(std::slice::from_ref(&text_only)), closed.0);
    assert_ne!(lm(std::slice::from_ref(&with_image)), closed.1);
    let mixed = b
        .vlm
        .loss(&b.builder.train(&[text_only.clone(), with_image]).unwrap())
        .unwrap();
    assert!(mixed.terms["lm"].to_scalar::<f32>().unwrap().is_finite());
}

#[test]
fn every_parameter_trains_through_a_text_reading_connector() {
    // CCRA reads every block and the query embeddings: all of them get gradients,
    // the last vision block and the token embeddings included.
    let b = build(&["connector.kind=\"ccra\"", "connector.d_hidden=8"]);
    // Biases that shift every score of a softmax alike cannot get a gradient.
    let invariant: Vec<String> = connector_ccra::CcraConfig::default()
        .softmax_invariant_params()
        .iter()
        .map(|n| format!("connector.{n}"))
        .collect();
    let missing = params_without_gradient(&b, &invariant);
    assert!(missing.is_empty(), "{missing:#?}");
    let trainable: Vec<&str> = b.params.iter().map(|(n, _)| n.as_str()).collect();
    let last_block = format!(
        "vision.vision_model.encoder.layers.{}.",
        b.plan.model.vision.info().depth - 1
    );
    assert!(trainable.iter().any(|n| n.starts_with(&last_block)));
    assert!(trainable
        .iter()
        .any(|n| n.starts_with("connector.token_attn.")));
}

#[test]
fn a_connector_only_stage_trains_only_the_connector() {
    let b = build(&["stage.0.trainable=[\"connector\"]"]);
    assert!(b.params.iter().all(|(n, _)| n.starts_with("connector.")));
    let out = forward_backward(
        &b.vlm,
        &b.builder,
        &examples(8),
        &b.params,
        1.0,
        Parallelism::new(1),
    )
    .unwrap();
    assert_eq!(out.grads.len(), b.params.len());
    assert!(out.grads.values().all(|g| norm(g) > 0.0));
}

#[test]
fn splitting_a_batch_across_threads_keeps_its_gradient() {
    // The language-model loss alone, and with the Dice term (which averages over
    // the samples that carry a mask, not over all of them).
    for extra in [&[][..], &CCRA_WITH_DICE[..]] {
        check_split_gradient(&build(extra));
    }
}

#[test]
fn the_dice_term_reaches_the_patch_map_and_counts_only_masked_samples() {
    let b = build(&CCRA_WITH_DICE);
    let ex = examples(24);
    let masked = ex.iter().filter(|e| e.mask.is_some()).count();
    assert!(masked > 0 && masked < ex.len(), "{masked} of {}", ex.len());
    assert_eq!(b.builder.masked(&ex), masked);
    let batch = b.builder.train(&ex).unwrap();
    let out = b.vlm.loss(&batch).unwrap();
    assert_eq!(out.masked_samples, masked);
    let dice = out.terms["dice"].to_scalar::<f32>().unwrap();
    assert!((0.0..1.0).contains(&dice), "{dice}");

    // Trained on Dice alone, the patch map's projections learn; the decoder
    // layers do not (the embeddings do: CCRA reads the query through them).
    let only = build(&[
        "connector.kind=\"ccra\"",
        "stage.0.losses={lm=0.0,dice=1.0}",
    ]);
    let result = forward_backward(
        &only.vlm,
        &only.builder,
        &ex,
        &only.params,
        1.0,
        Parallelism::new(1),
    )
    .unwrap();
    for name in ["connector.pwca.q.weight", "connector.pwca.k.weight"] {
        assert!(
            result.grads.get(name).is_some_and(|g| norm(g) > 0.0),
            "{name}"
        );
    }
    assert!(result
        .grads
        .iter()
        .filter(|(n, _)| n.starts_with("llm.model.layers."))
        .all(|(_, g)| norm(g) == 0.0));
    // Without masks in the batch there is no Dice term at all.
    let unmasked: Vec<Example> = ex.iter().filter(|e| e.mask.is_none()).cloned().collect();
    let out = b.vlm.loss(&b.builder.train(&unmasked).unwrap()).unwrap();
    assert!(!out.terms.contains_key("dice"));
}

fn check_split_gradient(b: &Built) {
    let ex = examples(24);
    let one = forward_backward(
        &b.vlm,
        &b.builder,
        &ex,
        &b.params,
        1.0,
        Parallelism {
            workers: 1,
            parts: 1,
        },
    )
    .unwrap();
    let many = forward_backward(
        &b.vlm,
        &b.builder,
        &ex,
        &b.params,
        1.0,
        Parallelism {
            workers: 2,
            parts: 5,
        },
    )
    .unwrap();
    assert!(
        (one.loss - many.loss).abs() < 1e-5 * one.loss.abs().max(1.0),
        "{} vs {}",
        one.loss,
        many.loss
    );
    assert_eq!(one.tokens, many.tokens);
    for (name, g) in &one.grads {
        let h = &many.grads[name];
        let diff = max_abs_diff(g, h).unwrap();
        let scale = max_abs(g).unwrap();
        assert!(
            diff <= 1e-4 * scale.max(1e-3),
            "{name}: {diff} (scale {scale})"
        );
    }
}

#[test]
fn a_batch_without_supervision_is_refused_with_the_reason() {
    let b = build(&[]);
    let mut ex = examples(4);
    for e in &mut ex {
        e.turns.truncate(1); // questions only, no answer
    }
    let err = forward_backward(&b.vlm, &b.builder, &ex, &b.params, 1.0, Parallelism::new(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no supervised token"), "{err}");
}

/// Mixed precision (`run.dtype = "bf16"`): activations in bf16, every parameter an
/// f32 master that receives an f32 gradient through the casts, the loss in f32.
#[test]
fn bf16_compute_trains_the_f32_master_weights_through_every_connector() {
    let ex = examples(16);
    for case in CONNECTORS {
        let name = case.name;
        let mut half = case.overrides.to_vec();
        half.push("run.dtype=\"bf16\"");
        let (full, half) = (build(case.overrides), build(&half));
        assert_eq!(half.vlm.compute_dtype, DType::BF16);
        // Gates that start closed are opened so that every block is exercised.
        for b in [&full, &half] {
            open_gates(&b.store, case.closed_gates);
        }
        let run = |b: &Built| {
            forward_backward(&b.vlm, &b.builder, &ex, &b.params, 1.0, Parallelism::new(1)).unwrap()
        };
        let (f, h) = (run(&full), run(&half));
        assert_ne!(f.loss, h.loss, "{name}: the bf16 run computed in f32");
        assert!(
            (f.loss - h.loss).abs() <= 0.02 * f.loss.abs(),
            "{name}: loss {} in f32, {} in bf16",
            f.loss,
            h.loss
        );
        assert_eq!(
            f.terms.keys().collect::<Vec<_>>(),
            h.terms.keys().collect::<Vec<_>>()
        );
        assert!(half
            .store
            .vars()
            .iter()
            .all(|(_, v)| v.dtype() == DType::F32));
        // The same parameters get a gradient, in f32, pointing the same way.
        assert_eq!(
            f.grads.keys().collect::<Vec<_>>(),
            h.grads.keys().collect::<Vec<_>>(),
            "{name}"
        );
        let (mut dot, mut nf, mut nh) = (0.0, 0.0, 0.0);
        for (param, gf) in &f.grads {
            let gh = &h.grads[param];
            assert_eq!(gh.dtype(), DType::F32, "{name}: {param}");
            let a = gf.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let b = gh.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (x, y) in a.iter().zip(&b) {
                dot += f64::from(*x) * f64::from(*y);
                nf += f64::from(*x).powi(2);
                nh += f64::from(*y).powi(2);
            }
            assert!(
                nf == 0.0 || b.iter().any(|&v| v != 0.0) || a.iter().all(|&v| v.abs() < 1e-6),
                "{name}: {param} has a gradient in f32 and none in bf16"
            );
        }
        let cosine = dot / (nf.sqrt() * nh.sqrt());
        assert!(cosine > 0.99, "{name}: gradient cosine f32/bf16 {cosine}");
    }
}

/// The point of f32 masters: an update far below bf16's resolution at the
/// weight's magnitude still lands in the weight.
#[test]
fn f32_master_weights_keep_updates_smaller_than_bf16_can_represent() {
    let b = build(&["run.dtype=\"bf16\""]);
    let ex = examples(16);
    let as_bf16 = |t: &Tensor| {
        t.to_dtype(DType::BF16)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let before: Vec<Tensor> = b
        .params
        .iter()
        .map(|(_, v)| v.as_tensor().copy().unwrap())
        .collect();
    let mut opt = vlmkit_train::optim::AdamW::new(
        b.params.clone(),
        vlmkit_train::optim::AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )
    .unwrap();
    // Adam's first step moves every weight with a gradient by about `lr`: 1e-5 is
    // below half of bf16's spacing (2⁻⁸·|w|) for every |w| above 0.005.
    let out =
        forward_backward(&b.vlm, &b.builder, &ex, &b.params, 1.0, Parallelism::new(1)).unwrap();
    opt.step(&out.grads, 1e-5, 1.0).unwrap();
    let (mut moved, mut invisible) = (0usize, 0usize);
    for ((_, var), old) in b.params.iter().zip(&before) {
        assert_eq!(var.dtype(), DType::F32);
        let (new_values, old_values) = (values(var.as_tensor()), values(old));
        let (new_half, old_half) = (as_bf16(var.as_tensor()), as_bf16(old));
        for i in 0..new_values.len() {
            if new_values[i] != old_values[i] {
                moved += 1;
                if new_half[i] == old_half[i] {
                    invisible += 1;
                }
            }
        }
    }
    assert!(moved > 1_000, "{moved} weights moved");
    assert!(
        invisible * 2 > moved,
        "{invisible} of {moved} updates are below bf16's resolution"
    );
}

/// A non-square image and its region mask through a stage that pads to a square:
/// the pixels are the exact processor's, and each grid cell's target is the
/// covered share of what the cell shows, padding counted as outside.
#[test]
fn a_padding_stage_moves_the_mask_with_the_image() {
    use image::{GrayImage, Luma, Rgb, RgbImage};
    use vlmkit_data::processor::ImageProcessor;
    let mut extra: Vec<&str> = CCRA_WITH_DICE.to_vec();
    extra.push("stage.0.image_aspect_ratio=\"pad\"");
    let plan = plan(&extra);
    let builder = plan.stage_batch_builder(0, Device::Cpu).unwrap();
    let (rows, cols) = builder.grounding_grid.expect("ccra with dice reads masks");
    // 40 wide, 24 tall: padded to 40×40 (8 rows above), then resized to 32.
    let mut image = RgbImage::from_pixel(40, 24, Rgb([200, 30, 90]));
    let mut mask = GrayImage::new(40, 24);
    for y in 0..10 {
        for x in 0..15 {
            mask.put_pixel(x, y, Luma([255]));
            image.put_pixel(x, y, Rgb([10, 240, 10]));
        }
    }
    let mut example = examples(1).remove(0);
    example.image = Some(image.clone());
    example.mask = Some(mask.clone());
    let batch = builder.train(&[example]).unwrap();

    let mut expected = ImageProcessor::clip(32, 32).with_pad_to_square();
    expected.normalize = Some((
        plan.model.env.vision.image_mean,
        plan.model.env.vision.image_std,
    ));
    let (pixels, _) = expected.pixel_values(&image);
    let ours = batch
        .pixels
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(ours, pixels);

    let mut padded = GrayImage::new(40, 40);
    for (x, y, p) in mask.enumerate_pixels() {
        padded.put_pixel(x, y + 8, *p);
    }
    let want = vlmkit_data::mask::grid_coverage(&padded, rows as u32, cols as u32).unwrap();
    let got = batch.regions[0].clone().unwrap();
    assert_eq!(got, want);
    // The top row of cells shows mostly padding: less covered than the same cells
    // of the unpadded mask would say.
    let unpadded = vlmkit_data::mask::grid_coverage(&mask, rows as u32, cols as u32).unwrap();
    assert!(got[0] < unpadded[0], "{} vs {}", got[0], unpadded[0]);
}
