//! Planning a study's runs (every recipe validated before anything trains),
//! training and evaluating them through the same paths as `vlmkit train` and
//! `vlmkit eval`, reusing what is already finished.

use std::path::{Path, PathBuf};

use vlmkit_eval::benchmark::{run_benchmark, save_outcome, BenchmarkRun};
use vlmkit_eval::{
    evaluate_and_save, read_predictions, score, EvalOptions, EvalReport, PREDICTIONS_FILE,
    REPORT_FILE,
};
use vlmkit_pipeline::checkpoint::{read_state, STATE_FILE};
use vlmkit_pipeline::counts::ParamCounts;
use vlmkit_pipeline::{load_model, Components, Plan, RunDir};
use vlmkit_recipe::Recipe;
use vlmkit_train::{train, Observer};

use crate::design::{slug, StudySpec};
use crate::measure::{PeakMemory, RunMeasures, StepTimer};
use crate::report::{RunResult, RunScores, StudyReport};
use crate::StudyError;

/// Where a run's evaluation goes, inside its directory.
pub const EVAL_DIR: &str = "eval";

/// One run of a study: an arm at one seed.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// Index into [`StudySpec::arms`].
    pub arm: usize,
    pub arm_name: String,
    pub seed: u64,
    /// Every override applied to the recipe: the study's, the arm's, `run.seed=…`.
    pub overrides: Vec<String>,
    /// `runs/<arm>/seed-<seed>`, relative to the study directory.
    pub rel_dir: String,
    /// The run directory.
    pub dir: PathBuf,
    /// The validated recipe of this run.
    pub plan: Plan,
}

impl PlannedRun {
    /// `ccra seed 2`.
    pub fn label(&self) -> String {
        format!("{} seed {}", self.arm_name, self.seed)
    }

    pub fn eval_dir(&self) -> PathBuf {
        self.dir.join(EVAL_DIR)
    }

    /// Where a `[[eval.benchmarks]]` entry's answers and score go.
    pub fn benchmark_dir(&self, name: &str) -> PathBuf {
        self.eval_dir().join("benchmarks").join(name)
    }

    /// Whether every benchmark of the recipe has its score file.
    fn benchmarks_scored(&self) -> bool {
        self.plan.recipe.eval.benchmarks.iter().all(|b| {
            self.benchmark_dir(&b.name)
                .join(BENCHMARK_SCORE_FILE)
                .is_file()
        })
    }
}

/// A benchmark's score in its directory (`vlmkit score --json`'s report).
pub const BENCHMARK_SCORE_FILE: &str = "score.json";

/// How far a run directory has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Nothing there yet.
    New,
    /// A checkpoint at this step; training resumes from it.
    Partial { step: u64 },
    /// Trained (`final/`), not evaluated.
    Trained,
    /// Its evaluation report exists: reused as it is.
    Evaluated,
}

/// What a study is doing with a run (for progress displays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAction {
    /// Trained and evaluated by an earlier invocation: nothing to do.
    Reuse,
    Train,
    /// Training continues from the checkpoint at this step.
    Resume {
        step: u64,
    },
    Evaluate,
}

/// Receives a study's progress.
pub trait StudyObserver {
    /// The run at `position` (1-based) of `total` starts `action`.
    fn run_action(&mut self, position: usize, total: usize, run: &PlannedRun, action: RunAction);
    /// The observer training reports to (progress bars, logs).
    fn trainer(&mut self) -> &mut dyn Observer;
    /// `done` of `total` eval examples answered.
    fn eval_progress(&mut self, done: usize, total: usize) {
        let _ = (done, total);
    }
}

/// A study whose every run is planned and validated.
#[derive(Debug)]
pub struct Study {
    pub spec: StudySpec,
    /// The study directory (reports at its top, runs under `runs/`).
    pub dir: PathBuf,
    /// Arms in order, seeds in order within each arm.
    pub runs: Vec<PlannedRun>,
    /// Parameters under `connector.` per arm, counted from shapes.
    pub connector_params: Vec<usize>,
    components: Components,
    release_memory: Option<fn()>,
}

impl Study {
    /// Loads and validates every run's recipe (arm overrides and seed applied) and
    /// checks that no run directory holds a different recipe — all before
    /// anything trains. Recipe errors name the file, line and key (or the
    /// override).
    pub fn plan(spec: StudySpec, dir: &Path, components: &Components) -> Result<Study, StudyError> {
        let mut runs = Vec::new();
        let mut connector_params = Vec::new();
        for (index, arm) in spec.arms.iter().enumerate() {
            let mut overrides = spec.overrides.clone();
            overrides.extend(arm.overrides.iter().cloned());
            let base_seed = Recipe::load(&arm.recipe, &overrides)?.run.seed;
            for k in 0..spec.seeds as u64 {
                let seed = base_seed + k;
                let mut run_overrides = overrides.clone();
                run_overrides.push(format!("run.seed={seed}"));
                let recipe = Recipe::load(&arm.recipe, &run_overrides)?;
                let plan = Plan::new(recipe, components, None)?;
                if k == 0 {
                    let counts = ParamCounts::of(&plan, 0)?;
                    connector_params.push(counts.get("connector").map_or(0, |r| r.total()));
                }
                let rel_dir = format!("runs/{}/seed-{seed}", slug(&arm.name));
                let run = PlannedRun {
                    arm: index,
                    arm_name: arm.name.clone(),
                    seed,
                    overrides: run_overrides,
                    dir: dir.join(&rel_dir),
                    rel_dir,
                    plan,
                };
                RunDir::new(&run.dir).check_recipe(&run.plan.run_recipe_toml())?;
                runs.push(run);
            }
        }
        Ok(Study {
            spec,
            dir: dir.to_path_buf(),
            runs,
            connector_params,
            components: components.clone(),
            release_memory: None,
        })
    }

    /// Calls `release` before each run trains and its peak memory is measured:
    /// a function that hands memory the process caches (its allocator's free
    /// pages) back to the system, so a run's peak is its own and not what earlier
    /// runs of the study left resident.
    pub fn release_memory_with(mut self, release: fn()) -> Self {
        self.release_memory = Some(release);
        self
    }

    /// How far `run` has come.
    pub fn state(&self, run: &PlannedRun) -> Result<RunState, StudyError> {
        if run.eval_dir().join(REPORT_FILE).is_file() && run.benchmarks_scored() {
            return Ok(RunState::Evaluated);
        }
        let run_dir = RunDir::new(&run.dir);
        if run_dir.final_dir().join(STATE_FILE).is_file() {
            return Ok(RunState::Trained);
        }
        Ok(match run_dir.latest()? {
            Some(checkpoint) => RunState::Partial {
                step: read_state(&checkpoint)?.global_step,
            },
            None => RunState::New,
        })
    }

    /// The state of every run, in order.
    pub fn states(&self) -> Result<Vec<RunState>, StudyError> {
        self.runs.iter().map(|r| self.state(r)).collect()
    }

    /// Trains and evaluates every run not yet finished (in order, resuming a
    /// partial one from its checkpoint), then writes the report into the study
    /// directory and returns it.
    pub fn run(&self, observer: &mut dyn StudyObserver) -> Result<StudyReport, StudyError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| StudyError::Io {
            path: self.dir.clone(),
            source,
        })?;
        let total = self.runs.len();
        for (i, run) in self.runs.iter().enumerate() {
            let state = self.state(run)?;
            let action = match state {
                RunState::Evaluated => {
                    observer.run_action(i + 1, total, run, RunAction::Reuse);
                    continue;
                }
                RunState::Trained => None,
                RunState::New => Some(RunAction::Train),
                RunState::Partial { step } => Some(RunAction::Resume { step }),
            };
            let in_run = |error: StudyError| StudyError::Run {
                run: run.label(),
                dir: run.dir.clone(),
                source: Box::new(error),
            };
            if let Some(action) = action {
                observer.run_action(i + 1, total, run, action);
                self.train_run(run, observer.trainer()).map_err(in_run)?;
            }
            observer.run_action(i + 1, total, run, RunAction::Evaluate);
            self.evaluate_run(run, observer).map_err(in_run)?;
        }
        let report = self.collect()?;
        report.write(&self.dir)?;
        Ok(report)
    }

    /// Trains one run with the trainer `vlmkit train` uses (resuming from a
    /// checkpoint) and records its measurements in `summary.json`.
    fn train_run(&self, run: &PlannedRun, observer: &mut dyn Observer) -> Result<(), StudyError> {
        if let Some(release) = self.release_memory {
            release();
        }
        let peak = PeakMemory::start();
        let mut timer = StepTimer::new(observer);
        let summary = train(&run.plan, &RunDir::new(&run.dir), &mut timer)?;
        let measures = RunMeasures {
            global_step: summary.global_step,
            resumed_from: summary.resumed_from,
            timed_steps: timer.seconds().len(),
            step_time_median_s: timer.median_s(),
            peak_rss_mib: peak.peak_mib(),
            start_rss_mib: peak.start_mib(),
            train_seconds: summary.seconds,
        };
        measures.write(&run.dir)
    }

    /// Evaluates a trained run as `vlmkit eval RUN` does, into `RUN/eval/`.
    fn evaluate_run(
        &self,
        run: &PlannedRun,
        observer: &mut dyn StudyObserver,
    ) -> Result<EvalReport, StudyError> {
        let model = load_model(&run.dir, &self.components, None, &[])?;
        let source = model
            .plan
            .eval_data()
            .open()
            .map_err(vlmkit_pipeline::PipelineError::from)?;
        let opts = EvalOptions::from_config(&model.plan.recipe.eval);
        let report = evaluate_and_save(
            &model,
            source.as_ref(),
            &opts,
            &run.eval_dir(),
            &format!("{}: accuracy per question family", run.label()),
            |done, total| observer.eval_progress(done, total),
        )?;
        for benchmark in &model.plan.recipe.eval.benchmarks {
            let dir = run.benchmark_dir(&benchmark.name);
            let images = benchmark.images.clone().unwrap_or_else(|| {
                benchmark
                    .questions
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            });
            let result = run_benchmark(
                &model,
                &BenchmarkRun {
                    name: &benchmark.name,
                    questions: &benchmark.questions,
                    images: &images,
                    annotations: Some(&benchmark.annotations),
                    convention: benchmark.convention,
                    batch_size: model.plan.recipe.eval.batch_size,
                    max_new_tokens: None,
                    limit: None,
                },
                &dir,
                &run.label(),
                |done, total| observer.eval_progress(done, total),
            )?;
            let outcome = result.outcome.expect("scored: annotations given, no limit");
            let submission = outcome.submission().map(|s| dir.join(&s.file_name));
            save_outcome(
                &outcome,
                benchmark.convention,
                submission.as_deref(),
                Some(&dir.join(BENCHMARK_SCORE_FILE)),
            )?;
        }
        Ok(report)
    }

    /// Reads every run's evaluation and measurements into a report (every run
    /// must be evaluated).
    pub fn collect(&self) -> Result<StudyReport, StudyError> {
        let mut results = Vec::with_capacity(self.runs.len());
        for run in &self.runs {
            let path = run.eval_dir().join(REPORT_FILE);
            let text = std::fs::read_to_string(&path).map_err(|source| StudyError::Io {
                path: path.clone(),
                source,
            })?;
            let mut eval: EvalReport =
                serde_json::from_str(&text).map_err(|e| StudyError::Unreadable {
                    path,
                    message: e.to_string(),
                })?;
            // Scored again from the predictions, so that a run evaluated by an
            // older vlmkit reports what this one scores (question forms).
            let path = run.eval_dir().join(PREDICTIONS_FILE);
            if path.is_file() {
                let predictions = read_predictions(&path).map_err(|e| StudyError::Unreadable {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
                eval = score(&eval.checkpoint, &predictions);
            }
            let mut scores = RunScores::of(&eval);
            for benchmark in &run.plan.recipe.eval.benchmarks {
                let path = run
                    .benchmark_dir(&benchmark.name)
                    .join(BENCHMARK_SCORE_FILE);
                let text = std::fs::read_to_string(&path).map_err(|source| StudyError::Io {
                    path: path.clone(),
                    source,
                })?;
                let report: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| StudyError::Unreadable {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                // A submission (MM-Vet, a test split) has no score to compare.
                if let Some(score) = report["score"].as_f64() {
                    scores.benchmarks.insert(benchmark.name.clone(), score);
                }
            }
            results.push(RunResult {
                arm: run.arm,
                seed: run.seed,
                dir: run.rel_dir.clone(),
                eval: scores,
                measures: RunMeasures::read(&run.dir)?,
            });
        }
        Ok(StudyReport::new(
            &self.spec,
            &self.connector_params,
            results,
        ))
    }
}
