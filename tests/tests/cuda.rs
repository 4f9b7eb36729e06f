//! GPU tests of the assembled model: CPU↔GPU parity of the loss and of every
//! gradient for each connector, and the first training steps of
//! `recipes/ccra.toml` on `cuda:0` against the CPU. Built only with
//! `--features cuda` and they need a GPU:
//! `cargo test --release --features cuda -p vlmkit-tests --test cuda`.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device};
use vlmkit_core::gradcheck::{max_abs, max_abs_diff};
use vlmkit_core::params::{Missing, ParamStore};
use vlmkit_pipeline::{Plan, RunDir};
use vlmkit_recipe::Recipe;
use vlmkit_tests::{components, examples, open_gates, repo, tiny, CONNECTORS};
use vlmkit_train::step::{forward_backward, Parallelism};
use vlmkit_train::trainer::{Observer, StageModel, StepRecord};

fn plan(recipe: &str, overrides: &[String]) -> Plan {
    let recipe = Recipe::load(&repo().join(recipe), overrides).unwrap();
    Plan::new(recipe, &components(), None).unwrap()
}

#[test]
fn every_connector_gives_the_same_loss_and_gradients_on_the_gpu() {
    let gpu = Device::new_cuda(0).expect("these tests need a CUDA device");
    let ex = examples(16);
    for case in CONNECTORS {
        let name = case.name;
        for dtype in ["f32", "bf16"] {
            let mut overrides = tiny(1);
            overrides.extend(case.overrides.iter().map(|s| s.to_string()));
            overrides.push(format!("run.dtype=\"{dtype}\""));
            let plan = plan("recipes/mlp.toml", &overrides);
            let cpu_store = ParamStore::new(Device::Cpu, DType::F32);
            let unused = plan
                .model
                .create_params(&cpu_store, Missing::Initialize { seed: 3 })
                .unwrap();
            // Gates that start closed are opened so that every block computes.
            open_gates(&cpu_store, case.closed_gates);
            let gpu_store = ParamStore::new(gpu.clone(), DType::F32);
            gpu_store
                .insert_tensors(cpu_store.to_cpu_tensors(|_| true).unwrap())
                .unwrap();
            let run = |store: &ParamStore, device: &Device| {
                let model =
                    StageModel::build(&plan, store, &plan.recipe.stages[0], &unused).unwrap();
                let builder = plan.batch_builder(device.clone()).unwrap();
                forward_backward(
                    &model.vlm,
                    &builder,
                    &ex,
                    &model.params,
                    1.0,
                    Parallelism::new(1),
                )
                .unwrap()
            };
            let (c, g) = (run(&cpu_store, &Device::Cpu), run(&gpu_store, &gpu));
            let tolerance = if dtype == "f32" { 1e-4 } else { 3e-2 };
            assert!(
                (c.loss - g.loss).abs() <= tolerance * c.loss.abs(),
                "{name} {dtype}: loss {} on the CPU, {} on the GPU",
                c.loss,
                g.loss
            );
            assert_eq!(
                c.grads.keys().collect::<Vec<_>>(),
                g.grads.keys().collect::<Vec<_>>()
            );
            for (param, gc) in &c.grads {
                let gg = g.grads[param].to_device(&Device::Cpu).unwrap();
                let scale = max_abs(gc).unwrap().max(1e-8);
                let d = max_abs_diff(gc, &gg).unwrap() / scale;
                // bf16 rounds differently on the two devices: compare directions loosely.
                assert!(
                    d < tolerance * 10.0,
                    "{name} {dtype}: gradient of {param} differs by {d} (relative)"
                );
            }
        }
    }
}

struct Losses(Vec<f64>);
impl Observer for Losses {
    fn step(&mut self, record: &StepRecord) {
        self.0.push(record.loss);
    }
}

#[test]
fn ccra_recipe_trains_on_the_gpu_as_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let train = |device: &str, dtype: &str| {
        let overrides = vec![
            "stage.0.steps=8".to_string(),
            "run.log_every=1".to_string(),
            format!("run.device=\"{device}\""),
            format!("run.dtype=\"{dtype}\""),
        ];
        let plan = plan("recipes/ccra.toml", &overrides);
        let mut losses = Losses(Vec::new());
        let run = RunDir::new(
            dir.path()
                .join(format!("{device}-{dtype}").replace(':', "")),
        );
        vlmkit_train::train(&plan, &run, &mut losses).unwrap();
        losses.0
    };
    let cpu = train("cpu", "f32");
    assert_eq!(cpu.len(), 8);
    for (dtype, tolerance) in [("f32", 1e-3), ("bf16", 3e-2)] {
        let gpu = train("cuda:0", dtype);
        for (step, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
            assert!(
                (c - g).abs() <= tolerance * c.abs(),
                "{dtype} step {step}: loss {c} on the CPU, {g} on the GPU"
            );
        }
    }
}
