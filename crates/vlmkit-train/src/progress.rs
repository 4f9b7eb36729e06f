//! A progress display: an indicatif bar on a terminal, plain periodic lines
//! otherwise (CI logs, pipes).

use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use vlmkit_recipe::StageConfig;

use crate::trainer::{Observer, StepRecord};

/// Shows training progress on stderr.
pub struct Progress {
    bar: Option<ProgressBar>,
    interactive: bool,
    /// Plain mode prints every this many steps.
    every: u64,
    smoothed: Option<f64>,
}

impl Progress {
    pub fn new(log_every: u64) -> Self {
        Self {
            bar: None,
            interactive: std::io::stderr().is_terminal(),
            every: (log_every * 10).max(1),
            smoothed: None,
        }
    }
}

impl Observer for Progress {
    fn stage_started(
        &mut self,
        index: usize,
        stage: &StageConfig,
        total: u64,
        start: u64,
        data: &str,
    ) {
        self.smoothed = None;
        let header = format!(
            "stage {} `{}`: {} steps of {}×{} on {data}, trainable {:?}, lr {}",
            index + 1,
            stage.name,
            total,
            stage.batch_size,
            stage.grad_accum,
            stage.trainable,
            stage.lr_summary()
        );
        if self.interactive {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} {msg} ({elapsed} < {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(stage.name.clone());
            bar.set_position(start);
            bar.println(header);
            self.bar = Some(bar);
        } else {
            eprintln!("{header}");
        }
    }

    fn step(&mut self, r: &StepRecord) {
        let s = match self.smoothed {
            Some(prev) => 0.95 * prev + 0.05 * r.loss,
            None => r.loss,
        };
        self.smoothed = Some(s);
        let rate = r.samples as f64 / r.seconds.max(1e-9);
        let msg = format!(
            "loss {s:.4} lr {:.2e} |g| {:.2} {rate:.0} samples/s",
            r.lr, r.grad_norm
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.stage_step);
                bar.set_message(msg);
            }
            None => {
                if r.stage_step % self.every == 0 || r.stage_step == r.stage_steps {
                    eprintln!(
                        "  {} step {}/{}: {msg}",
                        r.stage, r.stage_step, r.stage_steps
                    );
                }
            }
        }
    }

    fn checkpoint(&mut self, dir: &Path) {
        let line = format!("  checkpoint {}", dir.display());
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn stage_finished(&mut self, _index: usize) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }

    fn message(&mut self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn example_skipped(&mut self, skip: &crate::Skip, skipped: u64) {
        // The first few in full; after that the count at the end says the rest.
        const SHOWN: u64 = 5;
        if skipped <= SHOWN {
            self.message(&format!("skipped: {}", skip.reason));
        }
        if skipped == SHOWN {
            self.message("further skipped examples are counted here, and listed in skipped.jsonl");
        }
    }
}
