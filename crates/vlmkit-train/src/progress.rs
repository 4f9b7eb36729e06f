//! A progress display: an indicatif bar on a terminal, plain periodic lines
//! otherwise (CI logs, pipes).

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use vlmkit_recipe::StageConfig;

use crate::trainer::{Observer, StepRecord};

/// Shows training progress on stderr.
pub struct Progress {
    bar: Option<ProgressBar>,
    interactive: bool,
    /// Plain mode prints a line at most this often (and at a stage's first and
    /// last step), whatever a step costs.
    interval: Duration,
    smoothed: Option<f64>,
    /// When the stage started in this process, and at which step.
    stage_clock: Option<(Instant, u64)>,
    last_line: Option<Instant>,
}

/// How often plain mode prints.
const PLAIN_INTERVAL: Duration = Duration::from_secs(30);

impl Progress {
    /// A bar on a terminal; otherwise a line every 30 seconds.
    pub fn new() -> Self {
        Self::with(std::io::stderr().is_terminal(), PLAIN_INTERVAL)
    }

    /// Plain lines at most every `interval`, terminal or not.
    pub fn plain(interval: Duration) -> Self {
        Self::with(false, interval)
    }

    fn with(interactive: bool, interval: Duration) -> Self {
        Self {
            bar: None,
            interactive,
            interval,
            smoothed: None,
            stage_clock: None,
            last_line: None,
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// `h:mm:ss`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The time left for `remaining` steps at the pace of `done` steps in `spent`.
fn eta(spent: Duration, done: u64, remaining: u64) -> Option<Duration> {
    (done > 0).then(|| spent.mul_f64(remaining as f64 / done as f64))
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
        self.stage_clock = Some((Instant::now(), start));
        self.last_line = None;
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
        // The step's own loss, and its moving average (what the curve's trend
        // is): labelled, as they differ early on by a lot.
        let msg = format!(
            "loss {:.4} (moving avg {s:.4}) lr {:.2e} |g| {:.2} {rate:.0} samples/s",
            r.loss, r.lr, r.grad_norm
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.stage_step);
                bar.set_message(msg);
            }
            None => {
                let now = Instant::now();
                let due = self
                    .last_line
                    .is_none_or(|last| now.duration_since(last) >= self.interval);
                if due || r.stage_step == r.stage_steps {
                    self.last_line = Some(now);
                    let (started, from) = self.stage_clock.unwrap_or((now, 0));
                    let spent = now.duration_since(started);
                    let left = eta(spent, r.stage_step - from, r.stage_steps - r.stage_step)
                        .map_or_else(|| "?".to_string(), clock);
                    eprintln!(
                        "  {} step {}/{} ({:.0}%), {} elapsed, ETA {left}: {msg}",
                        r.stage,
                        r.stage_step,
                        r.stage_steps,
                        100.0 * r.stage_step as f64 / r.stage_steps.max(1) as f64,
                        clock(spent),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_and_eta() {
        assert_eq!(clock(Duration::from_secs(3725)), "1:02:05");
        assert_eq!(clock(Duration::from_millis(999)), "0:00:00");
        assert_eq!(
            eta(Duration::from_secs(10), 5, 20),
            Some(Duration::from_secs(40))
        );
        assert_eq!(eta(Duration::from_secs(10), 0, 20), None);
    }
}
