//! Recipe files in a temporary directory, with messages shown relative to it.

#![allow(dead_code)] // Each test binary uses a different part of this.

use std::fs;
use std::path::{Path, PathBuf};

use vlmkit_recipe::{Recipe, RecipeError};

/// A complete, valid recipe to build test cases on.
pub const VALID: &str = r#"[run]
seed = 1

[vision]
kind = "tiny-vit"

[llm]
kind = "tiny-lm"

[connector]
kind = "mlp"

[data.train]
kind = "shapes"

[data.eval]
kind = "shapes"

[[stage]]
name = "align"
trainable = ["connector"]
steps = 500
lr = 1e-3
batch_size = 64
"#;

pub struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> &Self {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
        self
    }

    pub fn load(&self, rel: &str, overrides: &[&str]) -> Result<Recipe, RecipeError> {
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Recipe::load(&self.path(rel), &overrides)
    }

    /// The error's rendering as a user in the fixture directory would see it.
    pub fn render(&self, err: &RecipeError) -> String {
        let prefix = format!("{}/", self.root().display());
        err.to_string().replace(&prefix, "")
    }

    pub fn load_err(&self, rel: &str, overrides: &[&str]) -> String {
        match self.load(rel, overrides) {
            Ok(_) => panic!("{rel} should not load"),
            Err(err) => self.render(&err),
        }
    }
}
