//! Loading, merging, overrides, origins, the schema and the resolved round trip.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{Fixture, VALID};
use vlmkit_recipe::{
    EvalConfig, Origin, PluginsConfig, Recipe, RecipeErrorKind, Schedule, SettingsError,
};

fn line(origin: Option<&Origin>) -> (PathBuf, usize) {
    match origin {
        Some(Origin::Location(loc)) => (loc.file.clone(), loc.line),
        other => panic!("expected a file location, got {other:?}"),
    }
}

#[test]
fn defaults_fill_in() {
    let fx = Fixture::new();
    fx.write("recipes/basic.toml", VALID);
    let r = fx.load("recipes/basic.toml", &[]).unwrap();
    assert_eq!(r.run.name, "basic");
    assert_eq!(r.run.seed, 1);
    assert_eq!(r.run.output_dir, PathBuf::from("runs"));
    assert_eq!(
        (r.run.device.as_str(), r.run.dtype.as_str()),
        ("cpu", "f32")
    );
    assert_eq!(
        (
            r.run.threads,
            r.run.checkpoint_every,
            r.run.keep_checkpoints,
            r.run.log_every
        ),
        (0, 500, 2, 10)
    );
    let s = &r.stages[0];
    assert_eq!(
        (s.name.as_str(), s.steps, s.epochs),
        ("align", Some(500), None)
    );
    assert_eq!((s.lr, s.batch_size, s.grad_accum), (1e-3, 64, 1));
    assert_eq!(s.schedule, Schedule::Cosine);
    assert_eq!(
        (s.warmup_ratio, s.min_lr_ratio, s.weight_decay),
        (0.0, 0.0, 0.0)
    );
    assert_eq!(s.clip_norm, Some(1.0));
    assert_eq!((s.betas, s.eps), ([0.9, 0.999], 1e-8));
    assert_eq!(s.losses, BTreeMap::from([("lm".to_string(), 1.0)]));
    assert_eq!(s.data, None);
    assert_eq!(r.eval, EvalConfig::default());
    assert_eq!((r.eval.batch_size, r.eval.max_new_tokens), (64, 32));
    assert_eq!(r.plugins, PluginsConfig::default());
    assert_eq!(r.section("connector").get_str("kind").unwrap(), Some("mlp"));
    assert_eq!(r.section("connector").path(), "connector");
    assert_eq!(r.data_section("train").path(), "data.train");
}

#[test]
fn all_stage_fields_parse() {
    let fx = Fixture::new();
    let stage = r#"
[[stage]]
name = "tune"
trainable = ["connector", "llm"]
epochs = 2
lr = 2e-5
batch_size = 8
grad_accum = 4
warmup_ratio = 0.05
schedule = "linear"
min_lr_ratio = 0.1
weight_decay = 0.01
clip_norm = 0
betas = [0.9, 0.95]
eps = 1e-6
losses = { lm = 1.0, aux = 0.5 }
data = { families = { describe = 1.0 } }
"#;
    fx.write(
        "r.toml",
        &format!("{VALID}{stage}\n[eval]\nsamples = 100\n"),
    );
    let r = fx.load("r.toml", &[]).unwrap();
    let s = &r.stages[1];
    assert_eq!((s.steps, s.epochs), (None, Some(2.0)));
    assert_eq!((s.grad_accum, s.schedule), (4, Schedule::Linear));
    assert_eq!(s.clip_norm, None, "clip_norm = 0 disables clipping");
    assert_eq!(s.betas, [0.9, 0.95]);
    assert_eq!(s.losses.len(), 2);
    assert_eq!(r.eval.samples, Some(100));
}

#[test]
fn extends_merge_and_paths_resolve_against_the_setting_file() {
    let fx = Fixture::new();
    fx.write(
        "recipes/base/shapes.toml",
        &format!(
            "{VALID}\n[plugins]\npaths = [\"../../plugins\"]\n\n[vision.weights]\nfrom = \"models/vit\"\n"
        ),
    );
    fx.write(
        "recipes/mlp.toml",
        r#"extends = "base/shapes.toml"

[run]
name = "mlp"
output_dir = "out"

[connector]
kind = "mlp2"
depth = 2

[[stage]]
name = "only"
trainable = ["connector"]
steps = 10
lr = 1.0
batch_size = 1
"#,
    );
    let r = fx.load("recipes/mlp.toml", &[]).unwrap();
    assert_eq!(r.run.name, "mlp");
    assert_eq!(r.run.seed, 1, "inherited from the base");
    assert_eq!(r.run.output_dir, fx.path("recipes/out"));
    assert_eq!(r.plugins.paths, vec![fx.path("recipes/base/../../plugins")]);
    assert_eq!(
        r.path_value("vision.weights.from"),
        Some(fx.path("recipes/base/models/vit"))
    );
    // `[[stage]]` is replaced whole, tables merge key by key.
    assert_eq!(r.stages.len(), 1);
    assert_eq!(r.stages[0].name, "only");
    assert_eq!(
        r.section("connector").get_str("kind").unwrap(),
        Some("mlp2")
    );
    assert!(r.section("connector").get("depth").is_some());
    assert!(r.value("extends").is_none());
    assert_eq!(
        line(r.locate("run.seed")),
        (fx.path("recipes/base/shapes.toml"), 2)
    );
    assert_eq!(
        line(r.locate("connector.kind")),
        (fx.path("recipes/mlp.toml"), 8)
    );
    assert_eq!(
        line(r.locate("stage.0.lr")),
        (fx.path("recipes/mlp.toml"), 15)
    );
}

#[test]
fn list_extends_merge_left_to_right_then_the_file() {
    let fx = Fixture::new();
    fx.write(
        "a.toml",
        &format!("{VALID}\n[eval]\nbatch_size = 1\nmax_new_tokens = 1\n"),
    );
    fx.write("b.toml", "[eval]\nbatch_size = 2\nmax_new_tokens = 2\n");
    fx.write(
        "c.toml",
        "extends = [\"a.toml\", \"b.toml\"]\n[eval]\nbatch_size = 3\n",
    );
    let r = fx.load("c.toml", &[]).unwrap();
    assert_eq!((r.eval.batch_size, r.eval.max_new_tokens), (3, 2));
}

#[test]
fn overrides_apply_after_merging() {
    let fx = Fixture::new();
    fx.write("r.toml", VALID);
    let r = fx
        .load(
            "r.toml",
            &[
                "run.dtype=bf16",
                "run.device=cuda:0",
                "stage.0.lr=3e-4",
                "stage[0].batch_size=32",
                "connector.kernel_size=5",
                "vision.layers=[-2,-1]",
                "run.output_dir=elsewhere",
                "plugins.paths=[\"p\"]",
            ],
        )
        .unwrap();
    assert_eq!(
        (r.run.dtype.as_str(), r.run.device.as_str()),
        ("bf16", "cuda:0")
    );
    assert_eq!((r.stages[0].lr, r.stages[0].batch_size), (3e-4, 32));
    assert_eq!(
        r.value("connector.kernel_size"),
        Some(&toml::Value::Integer(5))
    );
    assert_eq!(
        r.value("vision.layers")
            .and_then(|v| v.as_array())
            .map(Vec::len),
        Some(2)
    );
    // `--set` paths are relative to the current directory.
    assert_eq!(r.run.output_dir, PathBuf::from("elsewhere"));
    assert_eq!(r.plugins.paths, vec![PathBuf::from("p")]);
    assert_eq!(
        r.locate("stage.0.lr"),
        Some(&Origin::Override("stage.0.lr=3e-4".into()))
    );
    assert_eq!(
        r.locate("vision.layers.1"),
        Some(&Origin::Override("vision.layers=[-2,-1]".into()))
    );
    assert_eq!(line(r.locate("stage.0.name")).1, 20);
}

#[test]
fn locate_falls_back_to_the_nearest_ancestor() {
    let fx = Fixture::new();
    fx.write("r.toml", VALID);
    let r = fx.load("r.toml", &[]).unwrap();
    assert_eq!(line(r.locate("connector.no.such.key")).1, 10);
    assert_eq!(line(r.locate("stage[0].betas[1]")).1, 19);
    assert_eq!(r.locate("nothing"), None);
    let err = r.error_at("stage[0].lr", "too hot");
    assert_eq!(err.key.as_deref(), Some("stage.0.lr"));
    assert_eq!(line(err.origin.as_deref()).1, 23);
}

#[test]
fn error_for_keeps_the_key_and_help() {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Mlp {
        depth: usize,
    }
    let fx = Fixture::new();
    fx.write(
        "r.toml",
        &VALID.replace("kind = \"mlp\"", "kind = \"mlp\"\ndepht = 2"),
    );
    let r = fx.load("r.toml", &[]).unwrap();
    let err = r
        .section("connector")
        .without(&["kind"])
        .parse::<Mlp>()
        .unwrap_err();
    let err = r.error_for(err);
    assert_eq!(err.key.as_deref(), Some("connector.depht"));
    assert_eq!(err.message, "unknown key `depht` in [connector]");
    assert_eq!(err.help.as_deref(), Some("known keys: depth"));
    assert_eq!(line(err.origin.as_deref()).1, 12);
    // A factory's own complaint is located the same way.
    let err = r.error_for(SettingsError {
        key: "connector.kind".into(),
        message: "no such connector".into(),
    });
    assert_eq!(line(err.origin.as_deref()).1, 11);
}

#[test]
fn stage_data_merges_over_data_train() {
    let fx = Fixture::new();
    let text = VALID.replace(
        "[data.train]\nkind = \"shapes\"",
        "[data.train]\nkind = \"shapes\"\nsize = 32\nfamilies = { count = 1.0, color = 1.0 }",
    ) + "data = { size = 64, families = { describe = 1.0 } }\n";
    fx.write("r.toml", &text);
    let r = fx.load("r.toml", &[]).unwrap();
    let data = r.stage_data(0);
    assert_eq!(data.path(), "data.train");
    assert_eq!(data.get("size"), Some(&toml::Value::Integer(64)));
    let families = data.section("families").unwrap();
    assert_eq!(families.table().len(), 3);
    assert_eq!(
        r.data_section("train").get("size"),
        Some(&toml::Value::Integer(32))
    );
}

#[test]
fn resolved_recipe_round_trips() {
    let fx = Fixture::new();
    fx.write(
        "recipes/base.toml",
        &format!(
            "{VALID}\n[plugins]\npaths = [\"plug\"]\nsha256 = {{ \"connector-mlp\" = \"ab12\" }}\n"
        ),
    );
    fx.write(
        "recipes/exp.toml",
        "extends = \"base.toml\"\n[run]\noutput_dir = \"out\"\n[connector]\nsizes = [1, 2]\n",
    );
    let r = fx
        .load(
            "recipes/exp.toml",
            &["stage.0.lr=3e-4", "run.device=cuda:1"],
        )
        .unwrap();
    let text = r.to_toml_string();
    assert!(!text.contains("extends"), "{text}");
    assert!(
        text.contains("output_dir = \"out\""),
        "paths stay as written: {text}"
    );
    assert!(
        text.contains("name = \"exp\""),
        "the default name is recorded: {text}"
    );
    let back = Recipe::from_resolved_str(&text, &fx.path("recipes/exp.toml")).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.to_toml_string(), text);
    // Saved elsewhere under another name, the run keeps its name.
    let saved = Recipe::from_resolved_str(&text, Path::new("runs/exp/recipe.toml")).unwrap();
    assert_eq!(saved.run.name, "exp");
    assert_eq!(saved.stages, r.stages);
}

#[test]
fn resolved_recipes_cannot_extend() {
    let err = Recipe::from_resolved_str("extends = \"a.toml\"\n", Path::new("r.toml")).unwrap_err();
    assert_eq!(err.kind, RecipeErrorKind::Extends);
}

#[test]
fn schema_errors_point_at_their_key() {
    let with_stage =
        |extra: &str| VALID.replace("batch_size = 64", &format!("batch_size = 64\n{extra}"));
    let second_stage = format!(
        "{VALID}\n[[stage]]\nname = \"align\"\ntrainable = [\"llm\"]\nsteps = 1\nlr = 1.0\nbatch_size = 1\n"
    );
    let cases: Vec<(String, &str)> = vec![
        (with_stage("epochs = 1"), "stage.0.epochs"),
        (VALID.replace("lr = 1e-3", "lr = 0.0"), "stage.0.lr"),
        (VALID.replace("lr = 1e-3", "lr = nan"), "stage.0.lr"),
        (
            VALID.replace("batch_size = 64", "batch_size = 0"),
            "stage.0.batch_size",
        ),
        (with_stage("grad_accum = 0"), "stage.0.grad_accum"),
        (with_stage("warmup_ratio = 1.0"), "stage.0.warmup_ratio"),
        (with_stage("min_lr_ratio = 1.5"), "stage.0.min_lr_ratio"),
        (with_stage("schedule = \"cosin\""), "stage.0.schedule"),
        (with_stage("optimizer = \"adam\""), "stage.0.optimizer"),
        (
            VALID.replace("trainable = [\"connector\"]", "trainable = []"),
            "stage.0.trainable",
        ),
        (VALID.replace("lr = 1e-3\n", ""), "stage.0"),
        (second_stage, "stage.1.name"),
        (VALID.replace("seed = 1", "device = \"gpu\""), "run.device"),
        (VALID.replace("seed = 1", "seed = -1"), "run.seed"),
        (
            VALID.replace("kind = \"mlp\"", "kin = \"mlp\""),
            "connector",
        ),
        (VALID.replace("kind = \"tiny-lm\"", "kind = 3"), "llm.kind"),
        (VALID.replace("[data.eval]", "[data.valid]"), "data.valid"),
        (
            format!("{VALID}\n[eval]\nbatchsize = 3\n"),
            "eval.batchsize",
        ),
        (
            format!("{VALID}\n[plugins]\npaths = \"p\"\n"),
            "plugins.paths",
        ),
        (VALID.replace("[[stage]]", "[stage]"), "stage"),
        (format!("extra = 1\n{VALID}"), "extra"),
        (format!("{VALID}extra = 1\n"), "stage.0.extra"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let fx = Fixture::new();
        fx.write("r.toml", text);
        let err = match fx.load("r.toml", &[]) {
            Ok(_) => panic!("case {i} ({key}) should fail"),
            Err(err) => err,
        };
        assert_eq!(err.kind, RecipeErrorKind::Invalid, "case {i}: {err}");
        assert_eq!(err.key.as_deref(), Some(*key), "case {i}: {err}");
        assert!(err.origin.is_some(), "case {i}: {err}");
    }
}

#[test]
fn duplicate_stage_names_point_at_both() {
    let fx = Fixture::new();
    fx.write(
        "r.toml",
        &format!("{VALID}\n[[stage]]\nname = \"align\"\ntrainable = [\"llm\"]\nsteps = 1\nlr = 1.0\nbatch_size = 1\n"),
    );
    let err = fx.load("r.toml", &[]).unwrap_err();
    assert_eq!(line(err.origin.as_deref()).1, 27);
    assert!(err.help.unwrap().ends_with("r.toml:20:1"));
}

#[test]
fn missing_sections_name_the_recipe() {
    let fx = Fixture::new();
    fx.write(
        "r.toml",
        &VALID.replace("[vision]\nkind = \"tiny-vit\"\n", ""),
    );
    let err = fx.load("r.toml", &[]).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("vision"));
    assert_eq!(
        err.origin.as_deref(),
        Some(&Origin::File(fx.path("r.toml")))
    );

    fx.write(
        "s.toml",
        &VALID.replace("[data.eval]\nkind = \"shapes\"\n", ""),
    );
    let err = fx.load("s.toml", &[]).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("data.eval"));
    assert_eq!(
        line(err.origin.as_deref()).1,
        13,
        "at [data.train], where [data] was made"
    );

    let stageless = VALID.split("[[stage]]").next().unwrap();
    fx.write("t.toml", stageless);
    let err = fx.load("t.toml", &[]).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("stage"));
}

#[test]
fn devices_and_dtypes() {
    let fx = Fixture::new();
    fx.write("r.toml", VALID);
    for device in ["auto", "cpu", "cuda", "cuda:0", "cuda:12"] {
        let r = fx
            .load("r.toml", &[&format!("run.device={device}")])
            .unwrap();
        assert_eq!(r.run.device, device);
    }
    for device in ["gpu", "cuda:", "cuda:x", "metal"] {
        assert!(fx
            .load("r.toml", &[&format!("run.device={device}")])
            .is_err());
    }
    for dtype in ["f32", "bf16", "f16"] {
        assert!(fx.load("r.toml", &[&format!("run.dtype={dtype}")]).is_ok());
    }
    assert!(fx.load("r.toml", &["run.dtype=f64"]).is_err());
}

#[test]
fn override_errors_quote_the_override() {
    let fx = Fixture::new();
    fx.write("r.toml", VALID);
    for bad in ["run.seed", "=1", "stage.5.lr=1", "run[0]=1", "stage.name=x"] {
        let err = fx.load("r.toml", &[bad]).unwrap_err();
        assert_eq!(err.kind, RecipeErrorKind::Override, "{bad}");
        assert!(err.message.contains(&format!("`{bad}`")), "{}", err.message);
        assert_eq!(err.origin.as_deref(), Some(&Origin::Override(bad.into())));
    }
}

#[test]
fn missing_recipe_file() {
    let err = Recipe::load(Path::new("does/not/exist.toml"), &[]).unwrap_err();
    assert_eq!(err.kind, RecipeErrorKind::Read);
    assert!(
        err.message.contains("does/not/exist.toml"),
        "{}",
        err.message
    );
    assert_eq!(err.origin, None);
}
