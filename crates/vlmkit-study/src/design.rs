//! What a study compares: its arms (one recipe each, or one grid point of a
//! recipe), how many seeds, the overrides every run shares.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vlmkit_recipe::Recipe;

use crate::StudyError;

/// One row of a study's report: a recipe with the overrides that make it this arm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arm {
    /// The row's name: the recipe's `run.name` (`vlmkit compare`) or the grid
    /// point, e.g. `connector.d_hidden=32,connector.kernel_size=3` (`vlmkit sweep`).
    pub name: String,
    pub recipe: PathBuf,
    /// `KEY=VALUE` overrides of this arm, applied after the study's shared ones.
    pub overrides: Vec<String>,
}

/// Which command made the study (labels in the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StudyKind {
    /// Several recipes side by side.
    Compare,
    /// One recipe over a grid of settings.
    Sweep,
}

/// A study before anything is loaded or trained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudySpec {
    pub kind: StudyKind,
    /// A name derived from the arms (`mlp-vs-ccra`, `ccra-sweep-d_hidden`): the
    /// report's title and the default directory `studies/<name>`.
    pub name: String,
    pub arms: Vec<Arm>,
    /// Seeds per arm: `run.seed + k` for k in 0..seeds, `run.seed` being the arm's
    /// own (after the overrides).
    pub seeds: usize,
    /// `--set` overrides applied to every run, before the arm's own.
    pub overrides: Vec<String>,
    /// The command line that made the study, quoted for a shell (written into the
    /// report as given).
    pub command: String,
}

impl StudySpec {
    /// `vlmkit compare`: one arm per recipe, named by its `run.name` (after the
    /// shared overrides). Recipes that share a name are told apart by their path;
    /// a recipe listed twice is refused.
    pub fn compare(
        recipes: &[PathBuf],
        overrides: &[String],
        seeds: usize,
        command: impl Into<String>,
    ) -> Result<StudySpec, StudyError> {
        if recipes.is_empty() {
            return Err(StudyError::Invalid("name at least one recipe".into()));
        }
        let mut arms = Vec::with_capacity(recipes.len());
        for path in recipes {
            let recipe = Recipe::load(path, overrides)?;
            arms.push(Arm {
                name: recipe.run.name.clone(),
                recipe: path.clone(),
                overrides: Vec::new(),
            });
        }
        for i in 0..arms.len() {
            for j in 0..i {
                if same_file(&arms[i].recipe, &arms[j].recipe) {
                    return Err(StudyError::Invalid(format!(
                        "{} is listed twice; more seeds of one recipe come from --seeds",
                        arms[i].recipe.display()
                    )));
                }
            }
        }
        let names: Vec<String> = arms.iter().map(|a| a.name.clone()).collect();
        for arm in &mut arms {
            if names.iter().filter(|n| **n == arm.name).count() > 1 {
                arm.name = arm.recipe.with_extension("").display().to_string();
            }
        }
        let name = names_joined(&arms.iter().map(|a| a.name.as_str()).collect::<Vec<_>>());
        let spec = StudySpec {
            kind: StudyKind::Compare,
            name,
            arms,
            seeds,
            overrides: overrides.to_vec(),
            command: command.into(),
        };
        spec.check()?;
        Ok(spec)
    }

    /// `vlmkit sweep`: the cartesian product of `grid` over one recipe, the first
    /// axis outermost; each point an arm named `key=value,key=value`.
    pub fn sweep(
        recipe: &Path,
        grid: &[GridAxis],
        overrides: &[String],
        seeds: usize,
        command: impl Into<String>,
    ) -> Result<StudySpec, StudyError> {
        if grid.is_empty() {
            return Err(StudyError::Invalid(
                "give at least one --grid KEY=V1,V2,…".into(),
            ));
        }
        for (i, axis) in grid.iter().enumerate() {
            if grid[..i].iter().any(|a| a.key == axis.key) {
                return Err(StudyError::Invalid(format!(
                    "--grid names `{}` twice; list every value in one --grid",
                    axis.key
                )));
            }
        }
        let base = Recipe::load(recipe, overrides)?;
        let mut points: Vec<Vec<String>> = vec![Vec::new()];
        for axis in grid {
            points = points
                .into_iter()
                .flat_map(|point| {
                    axis.values.iter().map(move |v| {
                        let mut p = point.clone();
                        p.push(format!("{}={v}", axis.key));
                        p
                    })
                })
                .collect();
        }
        let arms = points
            .into_iter()
            .map(|overrides| Arm {
                name: overrides.join(","),
                recipe: recipe.to_path_buf(),
                overrides,
            })
            .collect();
        let leaves: Vec<&str> = grid
            .iter()
            .map(|a| a.key.rsplit('.').next().unwrap_or(&a.key))
            .collect();
        let spec = StudySpec {
            kind: StudyKind::Sweep,
            name: format!("{}-sweep-{}", base.run.name, leaves.join("-")),
            arms,
            seeds,
            overrides: overrides.to_vec(),
            command: command.into(),
        };
        spec.check()?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), StudyError> {
        if self.seeds == 0 {
            return Err(StudyError::Invalid("--seeds must be at least 1".into()));
        }
        let slugs: Vec<String> = self.arms.iter().map(|a| slug(&a.name)).collect();
        for i in 0..slugs.len() {
            if let Some(j) = (0..i).find(|&j| slugs[j] == slugs[i]) {
                return Err(StudyError::Invalid(format!(
                    "`{}` and `{}` would share the run directory runs/{}",
                    self.arms[j].name, self.arms[i].name, slugs[i]
                )));
            }
        }
        Ok(())
    }
}

/// `a-vs-b-vs-c`, shortened to `a-vs-N-more` when it would make a long directory name.
fn names_joined(names: &[&str]) -> String {
    let joined = names
        .iter()
        .map(|n| slug(n))
        .collect::<Vec<_>>()
        .join("-vs-");
    if joined.len() <= 80 || names.len() < 2 {
        joined
    } else {
        format!("{}-vs-{}-more", slug(names[0]), names.len() - 1)
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A name as a directory name: characters other than letters, digits and
/// `. _ - = , +` become `_`.
pub fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-=,+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    match s.as_str() {
        "" | "." | ".." => format!("_{s}"),
        _ => s,
    }
}

/// One `--grid KEY=V1,V2,…`: a recipe key and the values it takes. Values are
/// parsed as `--set` values are (TOML, else a string); commas inside brackets,
/// braces or quotes do not split, so `vision.layers=[-2,-1],[-1]` has two values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridAxis {
    pub key: String,
    pub values: Vec<String>,
}

impl std::str::FromStr for GridAxis {
    type Err = StudyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| {
            StudyError::Invalid(format!(
                "--grid `{text}`: {why} (expected KEY=V1,V2,…, e.g. connector.d_hidden=32,64)"
            ))
        };
        let (key, list) = text.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(bad("no key"));
        }
        let mut values = Vec::new();
        let mut current = String::new();
        let mut depth = 0i32;
        let mut quote: Option<char> = None;
        for c in list.chars() {
            match (quote, c) {
                (Some(q), _) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '[' | '{') => depth += 1,
                (None, ']' | '}') => depth -= 1,
                (None, ',') if depth == 0 => {
                    values.push(std::mem::take(&mut current));
                    continue;
                }
                _ => {}
            }
            current.push(c);
        }
        values.push(current);
        let values: Vec<String> = values.into_iter().map(|v| v.trim().to_string()).collect();
        if values.iter().any(String::is_empty) {
            return Err(bad("an empty value"));
        }
        for (i, v) in values.iter().enumerate() {
            if values[..i].contains(v) {
                return Err(bad(&format!("`{v}` is listed twice")));
            }
        }
        Ok(GridAxis {
            key: key.to_string(),
            values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_axes_split_at_top_level_commas() {
        let axis: GridAxis = "connector.d_hidden=8, 16,32".parse().unwrap();
        assert_eq!(axis.key, "connector.d_hidden");
        assert_eq!(axis.values, ["8", "16", "32"]);
        let axis: GridAxis = "vision.layers=[-2,-1],[-1]".parse().unwrap();
        assert_eq!(axis.values, ["[-2,-1]", "[-1]"]);
        let axis: GridAxis = "run.name=\"a,b\",c".parse().unwrap();
        assert_eq!(axis.values, ["\"a,b\"", "c"]);
        for bad in ["connector.d_hidden", "=1,2", "k=1,,2", "k=", "k=1,1"] {
            assert!(bad.parse::<GridAxis>().is_err(), "{bad}");
        }
    }

    #[test]
    fn slugs_are_directory_names() {
        assert_eq!(
            slug("connector.d_hidden=32,connector.kernel_size=3"),
            "connector.d_hidden=32,connector.kernel_size=3"
        );
        assert_eq!(slug("vision.layers=[-2, -1]"), "vision.layers=_-2,_-1_");
        assert_eq!(slug("a/b"), "a_b");
        assert_eq!(slug(".."), "_..");
    }

    #[test]
    fn long_study_names_are_shortened() {
        assert_eq!(names_joined(&["mlp", "ccra"]), "mlp-vs-ccra");
        let many: Vec<String> = (0..12).map(|i| format!("ccra-ablation-{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(names_joined(&refs), "ccra-ablation-0-vs-11-more");
    }
}
