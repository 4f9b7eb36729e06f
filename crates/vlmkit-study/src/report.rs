//! A study's results: per arm and question family the mean accuracy over seeds
//! with its 95% interval, beside the connector's parameters, the median step
//! time and the peak memory; written as markdown, CSV, JSON and a bar chart.
//!
//! Everything here is a function of the runs' files (their `eval/report.json`
//! and `summary.json`) and the study's command: the same runs give the same
//! bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vlmkit_eval::{EvalReport, FamilyScore};

use vlmkit_pipeline::counts::thousands;

use crate::design::{StudyKind, StudySpec};
use crate::measure::RunMeasures;
use crate::stats::{median, Estimate};
use crate::StudyError;

/// The files a study writes at the top of its directory.
pub const MARKDOWN_FILE: &str = "report.md";
pub const CSV_FILE: &str = "report.csv";
pub const RUNS_CSV_FILE: &str = "runs.csv";
pub const JSON_FILE: &str = "study.json";
pub const CHART_FILE: &str = "accuracy.png";

/// One evaluated run, as read back from its directory.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// Index into the study's arms.
    pub arm: usize,
    pub seed: u64,
    /// The run directory relative to the study directory.
    pub dir: String,
    pub eval: RunScores,
    /// `None` when the run has no `summary.json` (trained outside a study, or
    /// interrupted between training and writing it).
    pub measures: Option<RunMeasures>,
}

/// A run's evaluation as a study compares it: every question, and the accuracy
/// per question family and form.
#[derive(Debug, Clone, PartialEq)]
pub struct RunScores {
    /// Eval questions answered.
    pub samples: usize,
    /// Accuracy over every question.
    pub accuracy: f64,
    pub families: Vec<FamilyScore>,
    pub forms: Vec<FamilyScore>,
    /// Published benchmarks' headline scores (`[[eval.benchmarks]]`), by name,
    /// each in its own unit.
    pub benchmarks: BTreeMap<String, f64>,
}

impl RunScores {
    /// The families scorer's results of `report`.
    pub fn of(report: &EvalReport) -> Self {
        let families = report.families();
        Self {
            samples: report.samples,
            accuracy: report.accuracy,
            families: families.families,
            forms: families.forms,
            benchmarks: BTreeMap::new(),
        }
    }

    /// Every family's score, then every form's.
    pub fn scores(&self) -> impl Iterator<Item = &FamilyScore> {
        self.families.iter().chain(&self.forms)
    }

    /// The family's (`color`) or form's (`relation: above/below`) score.
    pub fn score_of(&self, key: &str) -> Option<&FamilyScore> {
        self.scores().find(|f| f.has_key(key))
    }
}

/// One run in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub seed: u64,
    pub dir: String,
    /// Eval questions answered.
    pub samples: usize,
    /// Accuracy (0–1) per question family and per question form
    /// (`relation: above/below`).
    pub accuracy: BTreeMap<String, f64>,
    /// Accuracy over every question.
    pub overall: f64,
    pub measures: Option<RunMeasures>,
}

/// One row of the report: an arm over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmSummary {
    pub name: String,
    pub recipe: String,
    pub overrides: Vec<String>,
    pub seeds: Vec<u64>,
    /// Parameters under `connector.`.
    pub connector_params: usize,
    /// Accuracy (0–1) per family and per question form over the seeds.
    pub families: BTreeMap<String, Estimate>,
    /// Accuracy over every question, over the seeds.
    pub overall: Option<Estimate>,
    /// Median over seeds of each run's median step time.
    pub step_time_median_s: Option<f64>,
    /// Largest peak resident memory over the seeds' training.
    pub peak_rss_mib: Option<f64>,
    /// Against the study's first arm, per family, form and `all`: the
    /// difference in accuracy paired by seed. Empty for the first arm.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub paired: BTreeMap<String, Paired>,
    /// Benchmark headline scores over the seeds, by benchmark name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub benchmarks: BTreeMap<String, Estimate>,
    /// Against the first arm, per benchmark: the score difference paired by seed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub benchmarks_paired: BTreeMap<String, Paired>,
    pub runs: Vec<RunSummary>,
}

/// One arm against another over the seeds both ran: seed noise that moves
/// both arms alike cancels, so a paired interval can exclude zero where the
/// two arms' own intervals overlap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paired {
    /// This arm's accuracy minus the first arm's, per shared seed.
    pub difference: Estimate,
    /// Shared seeds on which this arm scores higher.
    pub ahead: usize,
}

/// A family's baselines, averaged over the study's runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub family: String,
    /// Expected accuracy of a uniform guess.
    pub chance: f64,
    /// Accuracy of always giving the most frequent answer.
    pub majority: f64,
    /// The runs' eval splits disagree on these (different eval data).
    pub varies: bool,
}

/// The aggregated study (`study.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudyReport {
    pub name: String,
    pub kind: StudyKind,
    pub command: String,
    /// Question families over all runs, sorted.
    pub families: Vec<String>,
    pub baselines: Vec<Baseline>,
    /// Question forms (`relation: above/below`) over all runs, sorted; their
    /// accuracies sit beside the families' in each arm and run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forms: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub form_baselines: Vec<Baseline>,
    /// Benchmarks scored by every run's recipe, in the CCRA paper's column
    /// order (names as `vlmkit score` knows them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub benchmarks: Vec<String>,
    pub arms: Vec<ArmSummary>,
}

impl StudyReport {
    /// Aggregates `results` per arm of `spec` (`connector_params` per arm).
    pub fn new(spec: &StudySpec, connector_params: &[usize], results: Vec<RunResult>) -> Self {
        let families: Vec<String> = results
            .iter()
            .flat_map(|r| r.eval.families.iter().map(FamilyScore::key))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let forms: Vec<String> = results
            .iter()
            .flat_map(|r| r.eval.forms.iter().map(FamilyScore::key))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let keys: Vec<&String> = families.iter().chain(&forms).collect();
        let registry = vlmkit_benchmarks::BenchmarkRegistry::default();
        let benchmarks: Vec<String> = registry
            .names()
            .filter(|name| {
                results
                    .iter()
                    .any(|r| r.eval.benchmarks.contains_key(*name))
            })
            .map(String::from)
            .collect();
        let baselines = families.iter().map(|f| baseline(f, &results)).collect();
        let form_baselines = forms.iter().map(|f| baseline(f, &results)).collect();
        // What every other arm is paired against.
        let first: Vec<&RunResult> = results.iter().filter(|r| r.arm == 0).collect();
        let arms = spec
            .arms
            .iter()
            .enumerate()
            .map(|(index, arm)| {
                let mut runs: Vec<&RunResult> = results.iter().filter(|r| r.arm == index).collect();
                runs.sort_by_key(|r| r.seed);
                let family_estimates = keys
                    .iter()
                    .filter_map(|&key| {
                        let values: Vec<f64> = runs
                            .iter()
                            .filter_map(|r| Some(r.eval.score_of(key)?.accuracy))
                            .collect();
                        Estimate::of(&values).map(|e| (key.clone(), e))
                    })
                    .collect();
                let overall: Vec<f64> = runs.iter().map(|r| r.eval.accuracy).collect();
                let step_times: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r.measures.as_ref()?.step_time_median_s)
                    .collect();
                let peak = runs
                    .iter()
                    .filter_map(|r| r.measures.as_ref()?.peak_rss_mib)
                    .reduce(f64::max);
                ArmSummary {
                    name: arm.name.clone(),
                    recipe: arm.recipe.display().to_string(),
                    overrides: arm.overrides.clone(),
                    seeds: runs.iter().map(|r| r.seed).collect(),
                    connector_params: connector_params.get(index).copied().unwrap_or(0),
                    families: family_estimates,
                    overall: Estimate::of(&overall),
                    step_time_median_s: median(&step_times),
                    peak_rss_mib: peak,
                    paired: if index == 0 {
                        BTreeMap::new()
                    } else {
                        keys.iter()
                            .map(|k| k.as_str())
                            .chain(["all"])
                            .filter_map(|key| {
                                let accuracy = |r: &RunResult| match key {
                                    "all" => Some(r.eval.accuracy),
                                    _ => Some(r.eval.score_of(key)?.accuracy),
                                };
                                Some((key.to_string(), paired(accuracy, &runs, &first)?))
                            })
                            .collect()
                    },
                    benchmarks: benchmarks
                        .iter()
                        .filter_map(|name| {
                            let values: Vec<f64> = runs
                                .iter()
                                .filter_map(|r| r.eval.benchmarks.get(name).copied())
                                .collect();
                            Estimate::of(&values).map(|e| (name.clone(), e))
                        })
                        .collect(),
                    benchmarks_paired: if index == 0 {
                        BTreeMap::new()
                    } else {
                        benchmarks
                            .iter()
                            .filter_map(|name| {
                                let score = |r: &RunResult| r.eval.benchmarks.get(name).copied();
                                Some((name.clone(), paired(score, &runs, &first)?))
                            })
                            .collect()
                    },
                    runs: runs
                        .iter()
                        .map(|r| RunSummary {
                            seed: r.seed,
                            dir: r.dir.clone(),
                            samples: r.eval.samples,
                            accuracy: r.eval.scores().map(|f| (f.key(), f.accuracy)).collect(),
                            overall: r.eval.accuracy,
                            measures: r.measures.clone(),
                        })
                        .collect(),
                }
            })
            .collect();
        StudyReport {
            name: spec.name.clone(),
            kind: spec.kind,
            command: spec.command.clone(),
            families,
            baselines,
            forms,
            form_baselines,
            benchmarks,
            arms,
        }
    }

    /// The label of the rows: recipes or grid points.
    fn row_label(&self) -> &'static str {
        match self.kind {
            StudyKind::Compare => "recipe",
            StudyKind::Sweep => "setting",
        }
    }

    /// `report.md`: the table of arms, the baselines, what each column means,
    /// and a table of the individual runs.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let what = match self.kind {
            StudyKind::Compare => "comparison",
            StudyKind::Sweep => "sweep",
        };
        let _ = writeln!(
            md,
            "# {}: {what} of {} {}s\n",
            self.name,
            self.arms.len(),
            self.row_label()
        );
        let _ = writeln!(md, "Made by:\n\n```sh\n{}\n```\n", self.command);
        let _ = writeln!(
            md,
            "Accuracy (%) per question family on the eval split: mean ± half-width of the \
             95% confidence interval over seeds (Student's t, n − 1 degrees of freedom); \
             a single seed shows its value and n=1. `all` is every question together.\n"
        );
        let mut header = vec![self.row_label().to_string(), "seeds".into()];
        header.extend(self.families.iter().cloned());
        header.extend(["all", "parameters added", "step time", "peak memory"].map(String::from));
        let mut rows = Vec::new();
        for arm in &self.arms {
            let mut row = vec![escape_md(&arm.name), seeds_list(&arm.seeds)];
            row.extend(
                self.families
                    .iter()
                    .map(|f| arm.families.get(f).map_or("—".into(), estimate_cell)),
            );
            row.push(arm.overall.as_ref().map_or("—".into(), estimate_cell));
            row.push(thousands(arm.connector_params));
            row.push(arm.step_time_median_s.map_or("—".into(), seconds));
            row.push(arm.peak_rss_mib.map_or("—".into(), mib));
            rows.push(row);
        }
        for (label, pick) in [
            ("chance", (|b: &Baseline| b.chance) as fn(&Baseline) -> f64),
            ("majority", |b: &Baseline| b.majority),
        ] {
            let mut row = vec![format!("*{label}*"), String::new()];
            row.extend(self.baselines.iter().map(|b| percent(pick(b))));
            row.extend(std::iter::repeat_n(String::new(), 4));
            rows.push(row);
        }
        let mut align = vec![":--", ":--"];
        align.extend(std::iter::repeat_n("--:", header.len() - 2));
        md += &table(&header, &align, &rows);

        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "- **chance**: expected accuracy of a uniform guess (among a question's \
             options when it offers some); **majority**: always giving the family's most \
             frequent answer."
        );
        if self.baselines.iter().any(|b| b.varies) {
            let _ = writeln!(
                md,
                "- The runs' eval splits differ, so their baselines do too: the rows above \
                 average them."
            );
        }
        let _ = writeln!(
            md,
            "- **parameters added**: the connector's parameters (every weight under \
             `connector.`), counted from shapes."
        );
        let _ = writeln!(
            md,
            "- **step time**: median wall time of an optimizer step (data, forward, \
             backward, update; checkpoint writes excluded) of each run, then the median \
             over seeds."
        );
        let _ = writeln!(
            md,
            "- **peak memory**: peak resident memory of the process while it trained the \
             run, largest over seeds."
        );
        let unmeasured: Vec<&str> = self
            .arms
            .iter()
            .flat_map(|a| &a.runs)
            .filter(|r| r.measures.is_none())
            .map(|r| r.dir.as_str())
            .collect();
        if !unmeasured.is_empty() {
            let _ = writeln!(
                md,
                "- Not measured (no `summary.json`: trained outside a study or interrupted \
                 before it was written): {}.",
                unmeasured
                    .iter()
                    .map(|d| format!("`{d}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }

        md += &self.forms_markdown();
        md += &self.paired_markdown();
        md += &self.benchmarks_markdown();

        let _ = writeln!(md, "\n## Runs\n");
        let mut header = vec![self.row_label().to_string(), "seed".into()];
        header.extend(self.families.iter().cloned());
        header.extend(["all", "steps", "step time", "peak memory", "directory"].map(String::from));
        let mut rows = Vec::new();
        for arm in &self.arms {
            for run in &arm.runs {
                let mut row = vec![escape_md(&arm.name), run.seed.to_string()];
                row.extend(
                    self.families
                        .iter()
                        .map(|f| run.accuracy.get(f).map_or("—".into(), |a| percent(*a))),
                );
                row.push(percent(run.overall));
                let m = run.measures.as_ref();
                row.push(m.map_or("—".into(), |m| m.global_step.to_string()));
                row.push(
                    m.and_then(|m| m.step_time_median_s)
                        .map_or("—".into(), seconds),
                );
                row.push(m.and_then(|m| m.peak_rss_mib).map_or("—".into(), mib));
                row.push(format!("`{}`", run.dir));
                rows.push(row);
            }
        }
        let mut align = vec![":--", "--:"];
        align.extend(std::iter::repeat_n("--:", header.len() - 3));
        align.push(":--");
        md += &table(&header, &align, &rows);
        let _ = writeln!(
            md,
            "\nEach run directory holds the trainer's files (`recipe.toml`, `metrics.jsonl`, \
             `loss.png`, `final/`), `summary.json` (step times, peak memory) and `eval/` \
             (`report.json` with POPE metrics, `predictions.jsonl`, `accuracy.png`)."
        );
        md
    }

    /// The published benchmarks' table in the CCRA paper's column order, and
    /// its paired differences against the first arm (empty without benchmarks).
    fn benchmarks_markdown(&self) -> String {
        if self.benchmarks.is_empty() {
            return String::new();
        }
        let registry = vlmkit_benchmarks::BenchmarkRegistry::default();
        let column = |name: &String| {
            registry
                .get(name)
                .map_or(name.clone(), |b| b.column().to_owned())
        };
        let mut md = String::from(
            "\n## Benchmarks\n\nEach benchmark's headline as `vlmkit score` gives it (its official \
             script's number, in the unit the CCRA paper's tables use: % for accuracies, F1 × 100 \
             for POPE, points of 2000 for MME-P), mean ± half-width of the 95% interval over \
             seeds; the scores are in each run's `eval/benchmarks/<name>/score.json`.\n\n",
        );
        let mut header = vec![self.row_label().to_string(), "seeds".into()];
        header.extend(self.benchmarks.iter().map(column));
        let rows: Vec<Vec<String>> = self
            .arms
            .iter()
            .map(|arm| {
                let mut row = vec![escape_md(&arm.name), seeds_list(&arm.seeds)];
                row.extend(
                    self.benchmarks
                        .iter()
                        .map(|b| arm.benchmarks.get(b).map_or("—".into(), score_cell)),
                );
                row
            })
            .collect();
        let mut align = vec![":--", ":--"];
        align.extend(std::iter::repeat_n("--:", header.len() - 2));
        md += &table(&header, &align, &rows);
        let others: Vec<&ArmSummary> = self
            .arms
            .iter()
            .skip(1)
            .filter(|a| !a.benchmarks_paired.is_empty())
            .collect();
        if let (Some(first), false) = (self.arms.first(), others.is_empty()) {
            let _ = writeln!(
                md,
                "\n### Paired against {}\n\nEach arm's score minus {}'s on the same seed, in the \
                 benchmark's unit: mean ± half-width of the 95% interval over the shared seeds, and \
                 (k/n) the seeds on which the arm is ahead.\n",
                escape_md(&first.name),
                escape_md(&first.name)
            );
            let mut header = vec![self.row_label().to_string()];
            header.extend(self.benchmarks.iter().map(column));
            let rows: Vec<Vec<String>> = others
                .iter()
                .map(|arm| {
                    let mut row = vec![escape_md(&arm.name)];
                    row.extend(self.benchmarks.iter().map(|b| {
                        arm.benchmarks_paired
                            .get(b)
                            .map_or("—".into(), paired_score_cell)
                    }));
                    row
                })
                .collect();
            let mut align = vec![":--"];
            align.extend(std::iter::repeat_n("--:", header.len() - 1));
            md += &table(&header, &align, &rows);
        }
        md
    }

    /// The forms table: families whose questions come in several option sets,
    /// per set (empty when there are none).
    fn forms_markdown(&self) -> String {
        if self.forms.is_empty() {
            return String::new();
        }
        let mut md = String::from(
            "\n## By question form\n\nFamilies whose questions offer different options, \
             scored per option set: a model can learn one form and stay at chance on \
             the other, which the family's accuracy averages away.\n\n",
        );
        let mut header = vec![self.row_label().to_string()];
        header.extend(self.forms.iter().cloned());
        let mut rows: Vec<Vec<String>> = self
            .arms
            .iter()
            .map(|arm| {
                let mut row = vec![escape_md(&arm.name)];
                row.extend(
                    self.forms
                        .iter()
                        .map(|f| arm.families.get(f).map_or("—".into(), estimate_cell)),
                );
                row
            })
            .collect();
        let mut chance = vec!["*chance*".to_string()];
        chance.extend(self.form_baselines.iter().map(|b| percent(b.chance)));
        rows.push(chance);
        let mut align = vec![":--"];
        align.extend(std::iter::repeat_n("--:", header.len() - 1));
        md += &table(&header, &align, &rows);
        md
    }

    /// The paired table: every other arm against the first, seed by seed
    /// (empty when no arm shares two seeds with the first).
    fn paired_markdown(&self) -> String {
        let Some(first) = self.arms.first() else {
            return String::new();
        };
        let others: Vec<&ArmSummary> = self.arms[1..]
            .iter()
            .filter(|a| a.paired.values().any(|p| p.difference.n > 1))
            .collect();
        if others.is_empty() {
            return String::new();
        }
        let mut md = format!(
            "\n## Paired against {}\n\nEach arm's accuracy minus {}'s on the same seed, in \
             points: mean ± half-width of the 95% interval over the shared seeds, and \
             (k/n) the seeds on which the arm is ahead. Pairing cancels what a seed does to \
             both arms (the data order, the encoder's start), so these intervals are \
             narrower than the arms' own.\n\n",
            escape_md(&first.name),
            escape_md(&first.name)
        );
        let columns: Vec<&str> = self
            .families
            .iter()
            .chain(&self.forms)
            .map(String::as_str)
            .chain(["all"])
            .collect();
        let mut header = vec![self.row_label().to_string()];
        header.extend(columns.iter().map(|c| c.to_string()));
        let rows: Vec<Vec<String>> = others
            .iter()
            .map(|arm| {
                let mut row = vec![escape_md(&arm.name)];
                row.extend(
                    columns
                        .iter()
                        .map(|c| arm.paired.get(*c).map_or("—".into(), paired_cell)),
                );
                row
            })
            .collect();
        let mut align = vec![":--"];
        align.extend(std::iter::repeat_n("--:", header.len() - 1));
        md += &table(&header, &align, &rows);
        md
    }

    /// `report.csv`: one row per arm × family (and `all`): accuracy mean, 95%
    /// half-width, number of seeds, the seeds and per-seed values (`;`-separated),
    /// the family's chance, and the arm's parameters, step time and peak memory.
    pub fn csv(&self) -> String {
        let mut out = String::from(
            "arm,family,mean,ci95,n,seeds,values,chance,connector_params,step_time_median_s,peak_rss_mib\n",
        );
        for arm in &self.arms {
            let seeds = arm
                .seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(";");
            let mut cells: Vec<(&str, &Estimate, Option<f64>)> = self
                .families
                .iter()
                .chain(&self.forms)
                .filter_map(|f| {
                    let chance = self
                        .baselines
                        .iter()
                        .chain(&self.form_baselines)
                        .find(|b| &b.family == f)
                        .map(|b| b.chance);
                    arm.families.get(f).map(|e| (f.as_str(), e, chance))
                })
                .collect();
            if let Some(all) = &arm.overall {
                cells.push(("all", all, None));
            }
            let benchmark_keys: Vec<String> = self
                .benchmarks
                .iter()
                .map(|b| format!("benchmark:{b}"))
                .collect();
            for (key, name) in benchmark_keys.iter().zip(&self.benchmarks) {
                if let Some(e) = arm.benchmarks.get(name) {
                    cells.push((key.as_str(), e, None));
                }
            }
            for (family, e, chance) in cells {
                let fields = [
                    csv_field(&arm.name),
                    family.to_string(),
                    e.mean.to_string(),
                    opt(e.ci95),
                    e.n.to_string(),
                    seeds.clone(),
                    e.values
                        .iter()
                        .map(f64::to_string)
                        .collect::<Vec<_>>()
                        .join(";"),
                    opt(chance),
                    arm.connector_params.to_string(),
                    opt(arm.step_time_median_s),
                    opt(arm.peak_rss_mib),
                ];
                out += &fields.join(",");
                out.push('\n');
            }
        }
        out
    }

    /// `runs.csv`: one row per run × family (and `all`) with the run's accuracy
    /// and measurements.
    pub fn runs_csv(&self) -> String {
        let mut out = String::from(
            "arm,seed,family,accuracy,connector_params,steps,step_time_median_s,peak_rss_mib,train_seconds,dir\n",
        );
        for arm in &self.arms {
            for run in &arm.runs {
                let m = run.measures.as_ref();
                let cells = run
                    .accuracy
                    .iter()
                    .map(|(f, a)| (f.as_str(), *a))
                    .chain([("all", run.overall)]);
                for (family, accuracy) in cells {
                    let fields = [
                        csv_field(&arm.name),
                        run.seed.to_string(),
                        family.to_string(),
                        accuracy.to_string(),
                        arm.connector_params.to_string(),
                        m.map_or(String::new(), |m| m.global_step.to_string()),
                        opt(m.and_then(|m| m.step_time_median_s)),
                        opt(m.and_then(|m| m.peak_rss_mib)),
                        opt(m.map(|m| m.train_seconds)),
                        csv_field(&run.dir),
                    ];
                    out += &fields.join(",");
                    out.push('\n');
                }
            }
        }
        out
    }

    /// `study.json`.
    pub fn json(&self) -> String {
        let mut json = serde_json::to_string_pretty(self).expect("reports serialise");
        json.push('\n');
        json
    }

    /// `accuracy.png`: groups are families, series are arms (mean accuracy, error
    /// bars the 95% interval), each family's stronger baseline dashed.
    pub fn save_chart(&self, path: &Path) -> Result<(), StudyError> {
        let percent = |v: f64| 100.0 * v;
        let mut chart = vlmkit_plot::BarChart::new(format!(
            "{}: accuracy per question family (mean, 95% CI over seeds)",
            self.name
        ))
        .groups(self.families.clone())
        .baselines(
            self.baselines
                .iter()
                .map(|b| Some(percent(b.chance.max(b.majority))))
                .collect(),
        )
        .y_range(0.0, 100.0)
        .y_label("accuracy (%)");
        for arm in &self.arms {
            let (values, errors) = self
                .families
                .iter()
                .map(|f| match arm.families.get(f) {
                    Some(e) => (percent(e.mean), percent(e.ci95.unwrap_or(0.0))),
                    None => (f64::NAN, 0.0),
                })
                .unzip();
            chart = chart.series_with_errors(self.legend_name(&arm.name), values, errors);
        }
        let bars = self.families.len() * self.arms.len();
        let width = (160 + 18 * bars as u32).max(900);
        chart
            .save_png(path, width, 480)
            .map_err(|e| StudyError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Sweep points lose the dotted prefixes of their keys in the legend
    /// (`d_hidden=32,kernel_size=3`).
    fn legend_name(&self, name: &str) -> String {
        match self.kind {
            StudyKind::Compare => name.to_string(),
            StudyKind::Sweep => name
                .split(',')
                .map(|part| match part.split_once('=') {
                    Some((key, value)) => {
                        format!("{}={value}", key.rsplit('.').next().unwrap_or(key))
                    }
                    None => part.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    /// Writes `report.md`, `report.csv`, `runs.csv`, `study.json` and
    /// `accuracy.png` into `dir`, each atomically.
    pub fn write(&self, dir: &Path) -> Result<(), StudyError> {
        for (name, text) in [
            (MARKDOWN_FILE, self.markdown()),
            (CSV_FILE, self.csv()),
            (RUNS_CSV_FILE, self.runs_csv()),
            (JSON_FILE, self.json()),
        ] {
            let path = dir.join(name);
            vlmkit_core::fsutil::write_atomic(&path, text.as_bytes())
                .map_err(|source| StudyError::Io { path, source })?;
        }
        self.save_chart(&dir.join(CHART_FILE))
    }
}

/// A markdown table with the columns padded to equal width.
fn table(header: &[String], align: &[&str], rows: &[Vec<String>]) -> String {
    let width = |s: &str| s.chars().count();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| width(&r[c]))
                .chain([width(&header[c]), 3])
                .max()
                .unwrap_or(3)
        })
        .collect();
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .zip(align)
            .map(|((cell, w), a)| {
                let pad = " ".repeat(w - width(cell));
                if a.starts_with(':') {
                    format!("{cell}{pad}")
                } else {
                    format!("{pad}{cell}")
                }
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header);
    let rule: Vec<String> = widths
        .iter()
        .zip(align)
        .map(|(w, a)| {
            let dashes = "-".repeat(w - 1);
            if a.starts_with(':') {
                format!(":{dashes}")
            } else {
                format!("{dashes}:")
            }
        })
        .collect();
    out += &format!("| {} |\n", rule.join(" | "));
    for row in rows {
        out += &line(row);
    }
    out
}

fn percent(v: f64) -> String {
    format!("{:.1}", 100.0 * v)
}

/// `75.5 ± 3.2`, or `75.5 (n=1)` for a single seed.
fn estimate_cell(e: &Estimate) -> String {
    match e.ci95 {
        Some(ci) => format!("{} ± {}", percent(e.mean), percent(ci)),
        None => format!("{} (n={})", percent(e.mean), e.n),
    }
}

/// `-6.3 ± 5.2 (1/5)`: the mean difference in points, its interval and the
/// seeds ahead; `+2.0 (1/1)` for a single shared seed.
fn paired_cell(p: &Paired) -> String {
    let d = &p.difference;
    // No "-0.0": a difference that rounds to zero is shown as +0.0.
    let points = 100.0 * d.mean;
    let mean = format!("{:+.1}", if points.abs() < 0.05 { 0.0 } else { points });
    match d.ci95 {
        Some(ci) => format!("{mean} ± {} ({}/{})", percent(ci), p.ahead, d.n),
        None => format!("{mean} ({}/{})", p.ahead, d.n),
    }
}

/// A benchmark score in its own unit: `85.9 ± 1.2`, or `85.9 (n=1)`.
fn score_cell(e: &Estimate) -> String {
    match e.ci95 {
        Some(ci) => format!("{:.1} ± {ci:.1}", e.mean),
        None => format!("{:.1} (n={})", e.mean, e.n),
    }
}

/// A paired benchmark difference in its own unit: `+1.5 ± 0.8 (3/3)`.
fn paired_score_cell(p: &Paired) -> String {
    let d = &p.difference;
    let mean = format!("{:+.1}", if d.mean.abs() < 0.05 { 0.0 } else { d.mean });
    match d.ci95 {
        Some(ci) => format!("{mean} ± {ci:.1} ({}/{})", p.ahead, d.n),
        None => format!("{mean} ({}/{})", p.ahead, d.n),
    }
}

fn seeds_list(seeds: &[u64]) -> String {
    seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn seconds(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", 1000.0 * s)
    } else {
        format!("{s:.2} s")
    }
}

fn mib(m: f64) -> String {
    format!("{m:.0} MiB")
}

fn escape_md(text: &str) -> String {
    text.replace('|', "\\|")
}

fn opt(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

/// `key`'s baselines averaged over every run that scored it.
fn baseline(key: &str, results: &[RunResult]) -> Baseline {
    let scores: Vec<&FamilyScore> = results
        .iter()
        .filter_map(|r| r.eval.score_of(key))
        .collect();
    let mean = |f: fn(&FamilyScore) -> f64| {
        scores.iter().map(|s| f(s)).sum::<f64>() / scores.len().max(1) as f64
    };
    let spread = |f: fn(&FamilyScore) -> f64| {
        let (lo, hi) = scores
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |a, s| {
                (a.0.min(f(s)), a.1.max(f(s)))
            });
        hi - lo
    };
    Baseline {
        family: key.to_string(),
        chance: mean(|s| s.chance),
        majority: mean(|s| s.majority),
        varies: spread(|s| s.chance) > 1e-9 || spread(|s| s.majority) > 1e-9,
    }
}

/// `runs` against `first` on what `value` reads from a run, over the seeds
/// both have; `None` when they share none.
fn paired(
    value: impl Fn(&RunResult) -> Option<f64>,
    runs: &[&RunResult],
    first: &[&RunResult],
) -> Option<Paired> {
    let differences: Vec<f64> = runs
        .iter()
        .filter_map(|r| {
            let other = first.iter().find(|f| f.seed == r.seed)?;
            Some(value(r)? - value(other)?)
        })
        .collect();
    Some(Paired {
        ahead: differences.iter().filter(|&&d| d > 0.0).count(),
        difference: Estimate::of(&differences)?,
    })
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::design::Arm;
    use vlmkit_eval::FamilyScore;

    fn eval(scores: &[(&str, f64, f64)]) -> RunScores {
        let families: Vec<FamilyScore> = scores
            .iter()
            .map(|&(family, accuracy, chance)| FamilyScore {
                family: family.into(),
                form: None,
                n: 200,
                correct: (accuracy * 200.0).round() as usize,
                accuracy,
                chance,
                majority: chance + 0.05,
                majority_answer: "yes".into(),
            })
            .collect();
        // The relation family as two forms, 10 points apart.
        let forms = families
            .iter()
            .filter(|f| f.family == "relation")
            .flat_map(|f| {
                [("above/below", 0.1), ("left/right", -0.1)].map(|(form, shift)| FamilyScore {
                    form: Some(form.into()),
                    n: 100,
                    accuracy: f.accuracy + shift,
                    ..f.clone()
                })
            })
            .collect();
        RunScores {
            samples: 200 * families.len(),
            accuracy: families.iter().map(|f| f.accuracy).sum::<f64>() / families.len() as f64,
            families,
            forms,
            benchmarks: BTreeMap::new(),
        }
    }

    fn measures(step: f64, peak: f64) -> Option<RunMeasures> {
        Some(RunMeasures {
            global_step: 4500,
            resumed_from: None,
            timed_steps: 4500,
            step_time_median_s: Some(step),
            peak_rss_mib: Some(peak),
            start_rss_mib: Some(20.0),
            train_seconds: 4500.0 * step,
        })
    }

    /// Two recipes, two seeds each (one run of `ccra` without measurements), from
    /// fixed numbers.
    fn fixture(kind: StudyKind, names: [&str; 2]) -> StudyReport {
        let spec = StudySpec {
            kind,
            name: "mlp-vs-ccra".into(),
            arms: names
                .iter()
                .map(|n| Arm {
                    name: n.to_string(),
                    recipe: format!("recipes/{}.toml", n.split(['=', ',']).next().unwrap())
                        .into(),
                    overrides: Vec::new(),
                })
                .collect(),
            seeds: 2,
            overrides: vec!["stage.0.steps=100".into()],
            command: "vlmkit compare recipes/mlp.toml recipes/ccra.toml --seeds 2 --set stage.0.steps=100".into(),
        };
        let chance = [("color", 1.0 / 6.0), ("count", 0.2), ("relation", 0.5)];
        let run = |arm: usize, seed: u64, acc: [f64; 3], m| RunResult {
            arm,
            seed,
            dir: format!("runs/{}/seed-{seed}", crate::design::slug(names[arm])),
            eval: eval(
                &chance
                    .iter()
                    .zip(acc)
                    .map(|(&(f, c), a)| (f, a, c))
                    .collect::<Vec<_>>(),
            ),
            measures: m,
        };
        let results = vec![
            // Out of order on purpose: the report sorts by seed.
            run(0, 2, [0.80, 0.85, 0.90], measures(0.150, 600.0)),
            run(0, 1, [0.70, 0.875, 0.84], measures(0.148, 612.4)),
            run(1, 1, [0.90, 0.60, 0.85], measures(0.21, 700.0)),
            run(1, 2, [0.92, 0.64, 0.83], None),
        ];
        StudyReport::new(&spec, &[12_544, 1_234_567], results)
    }

    #[test]
    fn report_markdown() {
        let report = fixture(StudyKind::Compare, ["mlp", "ccra"]);
        insta::assert_snapshot!("report_md", report.markdown());
    }

    #[test]
    fn report_csv() {
        let report = fixture(StudyKind::Compare, ["mlp", "ccra"]);
        insta::assert_snapshot!("report_csv", report.csv());
        insta::assert_snapshot!("runs_csv", report.runs_csv());
    }

    #[test]
    fn aggregation() {
        let report = fixture(StudyKind::Compare, ["mlp", "ccra"]);
        assert_eq!(report.families, ["color", "count", "relation"]);
        assert_eq!(
            report.forms,
            ["relation: above/below", "relation: left/right"]
        );
        assert!((report.form_baselines[1].chance - 0.5).abs() < 1e-12);
        let mlp = &report.arms[0];
        assert_eq!(mlp.seeds, [1, 2]);
        let color = &mlp.families["color"];
        assert!((color.mean - 0.75).abs() < 1e-12);
        assert_eq!(color.values, [0.70, 0.80]);
        // s = 0.0707…, s/√2 = 0.05, × t(1) = 12.7062.
        assert!((color.ci95.unwrap() - 0.05 * 12.7062).abs() < 1e-9);
        assert!((mlp.step_time_median_s.unwrap() - 0.149).abs() < 1e-12);
        assert_eq!(mlp.peak_rss_mib, Some(612.4));
        let left_right = &mlp.families["relation: left/right"];
        assert!((left_right.mean - 0.77).abs() < 1e-12, "{left_right:?}");
        // Paired against the first arm: ccra − mlp on color is +0.20 and +0.12.
        assert!(mlp.paired.is_empty());
        let color = &report.arms[1].paired["color"];
        assert_eq!((color.ahead, color.difference.n), (2, 2));
        assert!((color.difference.mean - 0.16).abs() < 1e-12);
        assert!((color.difference.ci95.unwrap() - 0.04 * 12.7062).abs() < 1e-9);
        let count = &report.arms[1].paired["count"];
        assert_eq!(count.ahead, 0);
        assert!(report.arms[1].paired.contains_key("relation: left/right"));
        assert!(report.arms[1].paired.contains_key("all"));
        // A run without measurements leaves the others' numbers.
        let ccra = &report.arms[1];
        assert_eq!(ccra.step_time_median_s, Some(0.21));
        assert_eq!(ccra.connector_params, 1_234_567);
        assert!(!report.baselines[0].varies);
        assert!((report.baselines[0].chance - 1.0 / 6.0).abs() < 1e-12);
        // The JSON reads back (floats to within their last digit).
        let back: StudyReport = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(back.families, report.families);
        assert_eq!(back.arms.len(), 2);
        for (b, a) in back.arms.iter().zip(&report.arms) {
            assert_eq!(
                (&b.name, &b.seeds, &b.runs.len()),
                (&a.name, &a.seeds, &a.runs.len())
            );
            for (f, e) in &a.families {
                assert!((b.families[f].ci95.unwrap() - e.ci95.unwrap()).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn sweep_rows_and_csv_quoting() {
        let names = [
            "connector.d_hidden=8",
            "connector.d_hidden=16,connector.kernel_size=3",
        ];
        let report = fixture(StudyKind::Sweep, names);
        let md = report.markdown();
        assert!(md.contains("| setting "), "{md}");
        assert!(
            md.contains("| connector.d_hidden=16,connector.kernel_size=3 |"),
            "{md}"
        );
        assert!(report
            .csv()
            .contains("\"connector.d_hidden=16,connector.kernel_size=3\",color,"));
        assert_eq!(report.legend_name(names[1]), "d_hidden=16,kernel_size=3");
    }

    #[test]
    fn single_seeds_say_n_1() {
        let e = Estimate::of(&[0.755]).unwrap();
        assert_eq!(estimate_cell(&e), "75.5 (n=1)");
        let e = Estimate::of(&[0.70, 0.80]).unwrap();
        assert_eq!(estimate_cell(&e), "75.0 ± 63.5");
    }

    #[test]
    fn formatting_helpers() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(123_456), "123,456");
        assert_eq!(seconds(0.1493), "149.3 ms");
        assert_eq!(seconds(2.5), "2.50 s");
        let paired = |values: &[f64], ahead| Paired {
            difference: Estimate::of(values).unwrap(),
            ahead,
        };
        assert_eq!(paired_cell(&paired(&[-0.0004], 0)), "+0.0 (0/1)");
        assert_eq!(paired_cell(&paired(&[0.02, 0.04], 2)), "+3.0 ± 12.7 (2/2)");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(escape_md("a|b"), "a\\|b");
    }

    #[test]
    fn writing_is_deterministic() {
        let report = fixture(StudyKind::Compare, ["mlp", "ccra"]);
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        report.write(a.path()).unwrap();
        report.write(b.path()).unwrap();
        for name in [
            MARKDOWN_FILE,
            CSV_FILE,
            RUNS_CSV_FILE,
            JSON_FILE,
            CHART_FILE,
        ] {
            let x = std::fs::read(a.path().join(name)).unwrap();
            let y = std::fs::read(b.path().join(name)).unwrap();
            assert!(!x.is_empty() && x == y, "{name} differs between two writes");
        }
    }
}
