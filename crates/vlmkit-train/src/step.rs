//! One batch's forward and backward, split into length-sorted parts that run on
//! several threads.
//!
//! Tiny models leave a CPU's cores idle inside each op (candle's per-op threading
//! costs more than it saves at these sizes), and padding every sequence to the
//! batch's longest wastes work when short questions share a batch with long
//! descriptions. So the batch is sorted by length and cut into parts; each part is
//! padded only to its own longest sequence and runs forward and backward on a worker
//! thread with single-threaded ops. Each part's objective carries its share of the
//! batch's supervised tokens (and samples, for per-sample terms), so the parts'
//! gradients sum to exactly the whole batch's gradient. Parts are assigned to
//! workers and summed in a fixed order: the result does not depend on timing.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use vlmkit_core::loss::BatchCounts;
use vlmkit_core::{TokenSequence, Vlm};
use vlmkit_data::Example;

use vlmkit_pipeline::batch::BatchBuilder;

use crate::TrainError;

/// The summed result of a batch.
#[derive(Debug, Default)]
pub struct BatchResult {
    /// Gradient of the batch objective for every trainable parameter that has one.
    pub grads: BTreeMap<String, Tensor>,
    /// The batch objective (weighted sum of terms).
    pub loss: f64,
    /// Each term over the whole batch (unweighted).
    pub terms: BTreeMap<String, f64>,
    pub tokens: usize,
}

/// How a batch is split.
#[derive(Debug, Clone, Copy)]
pub struct Parallelism {
    /// Worker threads.
    pub workers: usize,
    /// Parts per batch (at least `workers`; more parts pad less).
    pub parts: usize,
}

impl Parallelism {
    pub fn new(workers: usize) -> Self {
        let workers = workers.max(1);
        Self {
            workers,
            parts: 2 * workers,
        }
    }
}

/// Cuts `order` (indices sorted by length) into `parts` contiguous runs and deals
/// them to workers, longest-processing-time first, by estimated cost.
fn schedule(lengths: &[usize], parts: usize, workers: usize) -> Vec<Vec<Vec<usize>>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let parts = parts.clamp(1, lengths.len().max(1));
    let chunk = lengths.len().div_ceil(parts);
    let chunks: Vec<Vec<usize>> = order.chunks(chunk.max(1)).map(|c| c.to_vec()).collect();
    // Cost of a part: its rows padded to its longest sequence, plus attention.
    let cost = |c: &Vec<usize>| {
        let l = c.iter().map(|&i| lengths[i]).max().unwrap_or(0) as f64;
        c.len() as f64 * (l + l * l / 64.0)
    };
    let mut by_cost: Vec<usize> = (0..chunks.len()).collect();
    by_cost.sort_by(|&a, &b| {
        cost(&chunks[b])
            .total_cmp(&cost(&chunks[a]))
            .then(a.cmp(&b))
    });
    let mut loads = vec![0f64; workers];
    let mut assigned: Vec<Vec<usize>> = vec![Vec::new(); workers];
    for c in by_cost {
        let w = (0..workers)
            .min_by(|&a, &b| loads[a].total_cmp(&loads[b]).then(a.cmp(&b)))
            .unwrap_or(0);
        loads[w] += cost(&chunks[c]);
        assigned[w].push(c);
    }
    assigned
        .into_iter()
        .map(|mut cs| {
            cs.sort();
            cs.into_iter().map(|c| chunks[c].clone()).collect()
        })
        .collect()
}

struct PartOutput {
    grads: BTreeMap<String, Tensor>,
    loss: f64,
    terms: BTreeMap<String, f64>,
}

fn add_into(acc: &mut BTreeMap<String, Tensor>, name: &str, g: Tensor) -> candle_core::Result<()> {
    let g = match acc.remove(name) {
        Some(prev) => (prev + g)?,
        None => g,
    };
    acc.insert(name.to_string(), g);
    Ok(())
}

/// Runs forward and backward over `examples`, scaling the objective by `scale`
/// (e.g. `1 / grad_accum`).
pub fn forward_backward(
    vlm: &Vlm,
    builder: &BatchBuilder,
    examples: &[Example],
    params: &[(String, Var)],
    scale: f64,
    parallelism: Parallelism,
) -> Result<BatchResult, TrainError> {
    let sequences: Vec<TokenSequence> = examples
        .iter()
        .map(|e| builder.collator.sequence(e))
        .collect::<Result<_, _>>()?;
    forward_backward_tokenised(
        vlm,
        builder,
        examples,
        sequences,
        params,
        scale,
        parallelism,
    )
}

/// As [`forward_backward`], with each example's tokens already made
/// (`sequences[i]` of `examples[i]`).
pub fn forward_backward_tokenised(
    vlm: &Vlm,
    builder: &BatchBuilder,
    examples: &[Example],
    sequences: Vec<TokenSequence>,
    params: &[(String, Var)],
    scale: f64,
    parallelism: Parallelism,
) -> Result<BatchResult, TrainError> {
    let tokens: usize = sequences.iter().map(TokenSequence::supervised).sum();
    if tokens == 0 && vlm.trains_on_tokens() {
        return Err(TrainError::NoSupervisedToken {
            examples: examples.len(),
            ids: examples
                .iter()
                .take(3)
                .map(|e| e.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let whole = BatchCounts {
        supervised_tokens: tokens,
        samples: examples.len(),
        masked_samples: builder.masked(examples),
    };
    let lengths: Vec<usize> = sequences.iter().map(|s| s.ids.len()).collect();
    let plan = schedule(&lengths, parallelism.parts, parallelism.workers);

    let run_part = |indices: &[usize]| -> Result<PartOutput, TrainError> {
        let part_examples: Vec<Example> = indices.iter().map(|&i| examples[i].clone()).collect();
        let part_sequences: Vec<TokenSequence> =
            indices.iter().map(|&i| sequences[i].clone()).collect();
        let batch = builder.assemble(&part_examples, part_sequences)?;
        let out = vlm.loss(&batch)?;
        // This part's share of what each term averages over in the whole batch.
        let share = |name: &str| {
            let whole = out.averages.get(name).map_or(0, |a| a.count(&whole));
            if whole == 0 {
                0.0
            } else {
                out.count_of(name) as f64 / whole as f64
            }
        };
        let mut terms = BTreeMap::new();
        for (name, t) in &out.terms {
            terms.insert(
                name.clone(),
                share(name) * t.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            );
        }
        let mut grads = BTreeMap::new();
        let mut loss = 0.0;
        if let Some(objective) = out.objective(&vlm.loss_weights, |name| share(name) * scale)? {
            loss = objective.to_dtype(DType::F64)?.to_scalar::<f64>()? / scale;
            let store = objective.backward()?;
            for (name, var) in params {
                if let Some(g) = store.get(var.as_tensor()) {
                    grads.insert(name.clone(), g.clone());
                }
            }
        }
        Ok(PartOutput { grads, loss, terms })
    };

    let worker_outputs: Vec<Result<Vec<PartOutput>, TrainError>> = if plan.len() == 1 {
        vec![plan[0].iter().map(|p| run_part(p)).collect()]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = plan
                .iter()
                .map(|parts| {
                    let run_part = &run_part;
                    scope.spawn(move || {
                        parts
                            .iter()
                            .map(|p| run_part(p))
                            .collect::<Result<Vec<_>, _>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(r) => r,
                    Err(_) => Err(TrainError::WorkerPanicked),
                })
                .collect()
        })
    };

    let mut result = BatchResult {
        tokens,
        ..BatchResult::default()
    };
    for outputs in worker_outputs {
        for part in outputs? {
            result.loss += part.loss;
            for (k, v) in part.terms {
                *result.terms.entry(k).or_default() += v;
            }
            for (name, g) in part.grads {
                add_into(&mut result.grads, &name, g)?;
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_covers_every_sample_once_and_balances() {
        let lengths: Vec<usize> = (0..64).map(|i| 10 + (i * 37) % 50).collect();
        let plan = schedule(&lengths, 4, 2);
        assert_eq!(plan.len(), 2);
        let mut all: Vec<usize> = plan.iter().flatten().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..64).collect::<Vec<_>>());
        // Parts are contiguous in length order: a part's lengths do not interleave
        // with another part's.
        for worker in &plan {
            for part in worker {
                assert_eq!(part.len(), 16);
            }
        }
        assert_eq!(plan, schedule(&lengths, 4, 2), "deterministic");
    }

    #[test]
    fn schedule_handles_tiny_batches() {
        let plan = schedule(&[5], 4, 2);
        let parts: usize = plan.iter().map(|w| w.len()).sum();
        assert_eq!(parts, 1);
    }
}
