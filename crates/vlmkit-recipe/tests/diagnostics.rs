//! Snapshots of rendered recipe errors: what a user sees on the terminal.

mod common;

use common::{Fixture, VALID};

#[test]
fn unknown_top_level_key() {
    let fx = Fixture::new();
    fx.write("recipes/a.toml", &format!("{VALID}\n[optimiser]\nlr = 1\n"));
    insta::assert_snapshot!(fx.load_err("recipes/a.toml", &[]));
}

#[test]
fn unknown_key_in_run() {
    let fx = Fixture::new();
    let text = VALID.replace("seed = 1", "seed = 1\nchekpoint_every = 100");
    fx.write("recipes/a.toml", &text);
    insta::assert_snapshot!(fx.load_err("recipes/a.toml", &[]));
}

#[test]
fn wrong_type() {
    let fx = Fixture::new();
    fx.write(
        "recipes/a.toml",
        &VALID.replace("batch_size = 64", "batch_size = \"64\""),
    );
    insta::assert_snapshot!(fx.load_err("recipes/a.toml", &[]));
}

#[test]
fn toml_syntax_error() {
    let fx = Fixture::new();
    fx.write(
        "recipes/a.toml",
        &VALID.replace("[connector]", "[connector\n"),
    );
    insta::assert_snapshot!(fx.load_err("recipes/a.toml", &[]));
}

#[test]
fn malformed_set() {
    let fx = Fixture::new();
    fx.write("recipes/a.toml", VALID);
    insta::assert_snapshot!(fx.load_err("recipes/a.toml", &["run.seed.x=4"]));
}

#[test]
fn set_value_rejected_by_schema() {
    let fx = Fixture::new();
    fx.write("recipes/a.toml", VALID);
    insta::assert_snapshot!(fx.load_err("recipes/a.toml", &["run.dtype=bf17"]));
}

#[test]
fn error_in_extended_base() {
    let fx = Fixture::new();
    fx.write(
        "recipes/base/shapes.toml",
        &VALID.replace("seed = 1", "seed = 1\nthreds = 4"),
    );
    fx.write(
        "recipes/mlp.toml",
        "extends = \"base/shapes.toml\"\n\n[run]\nname = \"mlp\"\n",
    );
    insta::assert_snapshot!(fx.load_err("recipes/mlp.toml", &[]));
}

#[test]
fn missing_steps_and_epochs() {
    let fx = Fixture::new();
    fx.write("recipes/a.toml", &VALID.replace("steps = 500\n", ""));
    insta::assert_snapshot!(fx.load_err("recipes/a.toml", &[]));
}

#[test]
fn extends_cycle() {
    let fx = Fixture::new();
    fx.write("recipes/a.toml", "extends = \"b.toml\"\n");
    fx.write("recipes/b.toml", "# b\nextends = [\"a.toml\"]\n");
    insta::assert_snapshot!(fx.load_err("recipes/a.toml", &[]));
}

#[test]
fn missing_base_file() {
    let fx = Fixture::new();
    fx.write("recipes/a.toml", "extends = \"nope.toml\"\n");
    insta::assert_snapshot!(fx.load_err("recipes/a.toml", &[]));
}

#[test]
fn component_rejects_unknown_key() {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Ccra {
        d_hidden: Option<usize>,
        kernel_size: Option<usize>,
        sigma: Option<f64>,
    }
    let fx = Fixture::new();
    let text = VALID.replace(
        "kind = \"mlp\"",
        "kind = \"ccra\"\nd_hidden = 256\nkernal_size = 5",
    );
    fx.write("recipes/ccra.toml", &text);
    let recipe = fx.load("recipes/ccra.toml", &[]).unwrap();
    let err = recipe
        .section("connector")
        .without(&["kind"])
        .parse::<Ccra>()
        .unwrap_err();
    insta::assert_snapshot!(fx.render(&recipe.error_for(err)));
}
