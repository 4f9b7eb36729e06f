//! Reading recipe files: spanned parsing, `extends` chains, merging and `--set`
//! overrides, keeping track of where every key was defined.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::{Table, Value};

use crate::error::{Location, Origin, RecipeError, RecipeErrorKind};
use crate::keys::{self, Segment};

/// Dotted key path → where the winning definition of that key was written.
pub(crate) type Origins = BTreeMap<String, Origin>;

/// A (partially) merged recipe: its values and their origins.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layer {
    pub table: Table,
    pub origins: Origins,
}

/// Parse one file's text; `file` is the path shown in messages.
pub(crate) fn parse_text(file: &Path, text: &str) -> Result<Layer, RecipeError> {
    let syntax = |err: toml::de::Error| {
        let origin = err
            .span()
            .map(|span| Origin::Location(Location::from_span(file, text, span)))
            .unwrap_or_else(|| Origin::File(file.to_path_buf()));
        RecipeError::new(
            RecipeErrorKind::Syntax,
            format!("invalid TOML: {}", err.message().trim()),
        )
        .with_origin(Some(origin))
    };
    let spanned = DeTable::parse(text).map_err(syntax)?;
    let mut origins = Origins::new();
    collect_table(file, text, spanned.get_ref(), "", &mut origins);
    let table = Table::deserialize(toml::de::Deserializer::from(spanned)).map_err(syntax)?;
    Ok(Layer { table, origins })
}

fn collect_table(file: &Path, text: &str, table: &DeTable<'_>, prefix: &str, out: &mut Origins) {
    for (key, value) in table.iter() {
        let path = keys::join(prefix, key.get_ref());
        // The key's own span: for `[a.b]` headers that is `b` inside the header.
        out.insert(
            path.clone(),
            Origin::Location(Location::from_span(file, text, key.span())),
        );
        collect_value(file, text, value.get_ref(), &path, out);
    }
}

fn collect_value(file: &Path, text: &str, value: &DeValue<'_>, path: &str, out: &mut Origins) {
    match value {
        DeValue::Table(t) => collect_table(file, text, t, path, out),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}.{i}");
                // Array-of-tables elements point at their `[[name]]` header.
                out.insert(
                    item_path.clone(),
                    Origin::Location(Location::from_span(file, text, item.span())),
                );
                collect_value(file, text, item.get_ref(), &item_path, out);
            }
        }
        _ => {}
    }
}

/// Load `path` and everything it extends, merged.
pub(crate) fn load_tree(path: &Path) -> Result<Layer, RecipeError> {
    let mut stack = Vec::new();
    load_file(path, None, &mut stack)
}

/// One file of the chain being loaded: its canonical identity and its shown path.
struct Frame {
    canonical: PathBuf,
    shown: PathBuf,
}

fn load_file(
    path: &Path,
    named_at: Option<&Origin>,
    stack: &mut Vec<Frame>,
) -> Result<Layer, RecipeError> {
    let text = regular_file_text(path).map_err(|err| {
        let message = match stack.last() {
            Some(parent) => format!(
                "cannot read `{}` (extended by `{}`): {err}",
                path.display(),
                parent.shown.display()
            ),
            None => format!("cannot read recipe `{}`: {err}", path.display()),
        };
        RecipeError::new(RecipeErrorKind::Read, message).with_origin(named_at.cloned())
    })?;
    // Compare canonical paths so `a.toml` and `./x/../a.toml` count as the same file.
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if stack.iter().any(|f| f.canonical == canonical) {
        let chain: Vec<String> = stack
            .iter()
            .map(|f| f.shown.display().to_string())
            .chain([path.display().to_string()])
            .collect();
        return Err(RecipeError::new(
            RecipeErrorKind::Extends,
            format!("`extends` cycle: {}", chain.join(" -> ")),
        )
        .with_key("extends")
        .with_origin(named_at.cloned())
        .with_help("a recipe cannot extend itself, directly or through other files"));
    }

    let mut own = parse_text(path, &text)?;
    let extends = take_extends(path, &mut own)?;
    stack.push(Frame {
        canonical,
        shown: path.to_path_buf(),
    });
    let mut merged = Layer::default();
    for (target, origin) in &extends {
        let base = load_file(target, Some(origin), stack)?;
        merge(&mut merged, base);
    }
    stack.pop();
    merge(&mut merged, own);
    Ok(merged)
}

/// Remove `extends` from a freshly parsed file and resolve its targets, each with
/// the origin of the entry that named it.
fn take_extends(file: &Path, layer: &mut Layer) -> Result<Vec<(PathBuf, Origin)>, RecipeError> {
    let Some(value) = layer.table.remove("extends") else {
        return Ok(Vec::new());
    };
    let origin_of = |key: &str| {
        layer
            .origins
            .get(key)
            .or_else(|| layer.origins.get("extends"))
            .cloned()
    };
    let invalid = |key: &str, found: &str| {
        RecipeError::new(
            RecipeErrorKind::Extends,
            format!("`extends` must be a path or a list of paths, found {found}"),
        )
        .with_key(key)
        .with_origin(origin_of(key))
        .with_help("e.g. extends = \"base.toml\" or extends = [\"a.toml\", \"b.toml\"]")
    };
    let entries: Vec<(String, String)> = match value {
        Value::String(s) => vec![("extends".to_string(), s)],
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok((format!("extends.{i}"), s)),
                other => Err(invalid(&format!("extends.{i}"), other.type_str())),
            })
            .collect::<Result<_, _>>()?,
        other => return Err(invalid("extends", other.type_str())),
    };
    let dir = file.parent().unwrap_or(Path::new(""));
    let targets = entries
        .into_iter()
        .map(|(key, rel)| {
            let origin = origin_of(&key).unwrap_or_else(|| Origin::File(file.to_path_buf()));
            (normalize_path(&dir.join(rel)), origin)
        })
        .collect();
    layer.origins.retain(|k, _| !keys::is_within(k, "extends"));
    Ok(targets)
}

/// Drop `.` and fold `dir/..` without touching the filesystem, so messages show
/// `recipes/base.toml` rather than `recipes/exp/../base.toml`.
fn normalize_path(path: &Path) -> PathBuf {
    let mut out: Vec<Component<'_>> = Vec::new();
    for comp in path.components() {
        match comp {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

/// Merge `top` over `base`: tables merge key by key, anything else is replaced whole
/// (origins of the replaced subtree go with it).
pub(crate) fn merge(base: &mut Layer, top: Layer) {
    merge_tables(
        &mut base.table,
        top.table,
        "",
        &mut base.origins,
        &top.origins,
    );
}

fn merge_tables(dst: &mut Table, src: Table, prefix: &str, dst_o: &mut Origins, src_o: &Origins) {
    for (key, value) in src {
        let path = keys::join(prefix, &key);
        let value = match value {
            // A table whose `kind` changes is replaced, not merged: its other keys
            // belong to the old kind (a `[data.train]` switching from "shapes" to
            // "llava" must not keep the shapes settings).
            Value::Table(sub) => match dst.get_mut(&key) {
                Some(Value::Table(existing)) if !kind_changes(existing, &sub) => {
                    if let Some(origin) = src_o.get(&path) {
                        dst_o.insert(path.clone(), origin.clone());
                    }
                    merge_tables(existing, sub, &path, dst_o, src_o);
                    continue;
                }
                _ => Value::Table(sub),
            },
            other => other,
        };
        replace_origins(
            dst_o,
            &path,
            src_o.iter().filter(|(k, _)| keys::is_within(k, &path)),
        );
        dst.insert(key, value);
    }
}

fn kind_changes(old: &Table, new: &Table) -> bool {
    match (old.get("kind"), new.get("kind")) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

fn replace_origins<'a>(
    dst: &mut Origins,
    root: &str,
    new: impl Iterator<Item = (&'a String, &'a Origin)>,
) {
    dst.retain(|k, _| !keys::is_within(k, root));
    dst.extend(new.map(|(k, o)| (k.clone(), o.clone())));
}

/// Apply one `--set key=value` override.
pub(crate) fn apply_override(layer: &mut Layer, raw: &str) -> Result<(), RecipeError> {
    let origin = Origin::Override(raw.to_string());
    let fail = |key: Option<&str>, message: String| {
        let err = RecipeError::new(RecipeErrorKind::Override, message)
            .with_origin(Some(origin.clone()))
            .with_help("overrides look like `--set run.dtype=bf16` or `--set stage.0.lr=3e-4`");
        match key {
            Some(k) => err.with_key(k),
            None => err,
        }
    };
    let Some((key, text)) = raw.split_once('=') else {
        return Err(fail(
            None,
            format!("invalid override `{raw}`: expected `key=value`"),
        ));
    };
    let segments =
        keys::parse(key).map_err(|why| fail(None, format!("invalid override `{raw}`: {why}")))?;
    let dotted = keys::dotted(&segments);
    if segments.first() == Some(&Segment::Key("extends".into())) {
        return Err(fail(
            Some(&dotted),
            format!("invalid override `{raw}`: `extends` cannot be overridden"),
        ));
    }
    let value = parse_override_value(text.trim());
    let mut root = Value::Table(std::mem::take(&mut layer.table));
    let result = set_path(&mut root, &segments, value);
    if let Value::Table(t) = root {
        layer.table = t;
    }
    result.map_err(|why| {
        fail(
            Some(&dotted),
            format!("cannot apply override `{raw}`: {why}"),
        )
    })?;
    replace_origins(&mut layer.origins, &dotted, std::iter::empty());
    layer.origins.insert(dotted, origin);
    Ok(())
}

/// A TOML value if the text is one (`3e-4`, `[-2, -1]`, `true`), else the plain
/// string, so that `run.device=cuda:0` needs no quoting.
fn parse_override_value(text: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {text}"))
        .ok()
        // A value with a newline could smuggle in more keys; only a lone `v` counts.
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_string()))
}

pub(crate) fn set_path(root: &mut Value, segments: &[Segment], value: Value) -> Result<(), String> {
    let Some((last, parents)) = segments.split_last() else {
        return Err("the key is empty".into());
    };
    let mut cur = root;
    let mut walked: Vec<Segment> = Vec::new();
    for (i, seg) in parents.iter().enumerate() {
        let next_is_index = matches!(segments[i + 1], Segment::Index(_));
        cur = match (cur, seg) {
            (Value::Table(t), Segment::Key(k)) => {
                if next_is_index && !t.contains_key(k) {
                    walked.push(seg.clone());
                    return Err(format!(
                        "`{}` is not set, so it cannot be indexed",
                        keys::dotted(&walked)
                    ));
                }
                // Intermediate tables are created on demand.
                t.entry(k.clone())
                    .or_insert_with(|| Value::Table(Table::new()))
            }
            (Value::Array(items), Segment::Index(n)) => {
                let len = items.len();
                items
                    .get_mut(*n)
                    .ok_or_else(|| out_of_range(*n, len, &walked))?
            }
            (other, seg) => return Err(mismatch(other, seg, &walked)),
        };
        walked.push(seg.clone());
    }
    match (cur, last) {
        (Value::Table(t), Segment::Key(k)) => {
            t.insert(k.clone(), value);
        }
        (Value::Array(items), Segment::Index(n)) => {
            let len = items.len();
            *items
                .get_mut(*n)
                .ok_or_else(|| out_of_range(*n, len, &walked))? = value;
        }
        (other, seg) => return Err(mismatch(other, seg, &walked)),
    }
    Ok(())
}

fn with_article(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

fn describe_position(walked: &[Segment]) -> String {
    if walked.is_empty() {
        "the top level".to_string()
    } else {
        format!("`{}`", keys::dotted(walked))
    }
}

fn out_of_range(index: usize, len: usize, walked: &[Segment]) -> String {
    format!(
        "index {index} is out of range: {} has {len} element{}",
        describe_position(walked),
        if len == 1 { "" } else { "s" }
    )
}

/// Why `seg` cannot step into `value` (a key into a non-table, an index into a
/// non-array).
fn mismatch(value: &Value, seg: &Segment, walked: &[Segment]) -> String {
    let here = describe_position(walked);
    match (value, seg) {
        (Value::Array(_), Segment::Key(k)) => {
            format!("{here} is an array, not a table; index it (e.g. `.0`) before `{k}`")
        }
        (other, Segment::Index(n)) => format!(
            "cannot index {here} with [{n}]: it is {}, not an array",
            with_article(other.type_str())
        ),
        (other, Segment::Key(k)) => format!(
            "cannot set `{k}` inside {here}: it is {}, not a table",
            with_article(other.type_str())
        ),
    }
}

/// The largest recipe file read.
const MAX_RECIPE_BYTES: u64 = 1 << 20;

/// The text of `path`, which must be a regular file of at most
/// [`MAX_RECIPE_BYTES`]: a FIFO would block, `/dev/zero` would never end.
fn regular_file_text(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    let refuse = |why: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
    if !meta.is_file() {
        return refuse("it is not a regular file".into());
    }
    if meta.len() > MAX_RECIPE_BYTES {
        return refuse(format!(
            "it holds {} bytes; a recipe is at most {MAX_RECIPE_BYTES}",
            meta.len()
        ));
    }
    std::fs::read_to_string(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn layer(src: &str) -> Layer {
        parse_text(Path::new("t.toml"), src).unwrap()
    }

    fn line_of(layer: &Layer, key: &str) -> (String, usize) {
        match layer.origins.get(key) {
            Some(Origin::Location(loc)) => (loc.file.display().to_string(), loc.line),
            other => panic!("no location for {key}: {other:?}"),
        }
    }

    #[test]
    fn origins_cover_nested_keys_and_arrays() {
        let l = layer("[run]\nseed = 1\n\n[[stage]]\nname = \"a\"\n[[stage]]\nname = \"b\"\nbetas = [0.9,\n 0.99]\n");
        assert_eq!(line_of(&l, "run.seed").1, 2);
        assert_eq!(line_of(&l, "stage.0").1, 4);
        assert_eq!(line_of(&l, "stage.1.name").1, 7);
        assert_eq!(line_of(&l, "stage.1.betas.1").1, 9);
    }

    #[test]
    fn tables_merge_and_other_values_replace() {
        let mut base = layer("[a]\nx = 1\ny = [1, 2]\n[[s]]\nn = 1\n[[s]]\nn = 2\n");
        let top = layer("[a]\ny = [3]\nz = 4\n[[s]]\nn = 9\n");
        merge(&mut base, top);
        let expected: Table = toml::from_str("[a]\nx = 1\ny = [3]\nz = 4\n[[s]]\nn = 9\n").unwrap();
        assert_eq!(base.table, expected);
        // The replaced array of tables takes its origins with it.
        assert!(!base.origins.contains_key("s.1"));
        assert!(!base.origins.contains_key("s.1.n"));
        assert!(!base.origins.contains_key("a.y.1"));
        assert_eq!(line_of(&base, "s.0.n").1, 5);
        assert_eq!(line_of(&base, "a.x").1, 2);
    }

    #[test]
    fn a_table_whose_kind_changes_is_replaced_not_merged() {
        let mut base = layer("[data]\nkind = \"shapes\"\ngrid = 4\n[c]\nkind = \"mlp\"\nx = 1\n");
        merge(
            &mut base,
            layer("[data]\nkind = \"llava\"\njson = \"a.json\"\n[c]\nkind = \"mlp\"\ny = 2\n"),
        );
        let expected: Table = toml::from_str(
            "[data]\nkind = \"llava\"\njson = \"a.json\"\n[c]\nkind = \"mlp\"\nx = 1\ny = 2\n",
        )
        .unwrap();
        assert_eq!(base.table, expected);
        assert!(!base.origins.contains_key("data.grid"));
    }

    #[test]
    fn table_replaced_by_scalar_drops_its_origins() {
        let mut base = layer("[a]\nx = 1\n");
        merge(&mut base, layer("a = 3\n"));
        assert_eq!(base.table["a"], Value::Integer(3));
        assert!(!base.origins.contains_key("a.x"));
    }

    #[test]
    fn extends_resolve_relative_and_merge_left_to_right() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("r/base")).unwrap();
        fs::write(d.join("r/base/one.toml"), "[x]\na = 1\nb = 1\nc = 1\n").unwrap();
        fs::write(d.join("r/two.toml"), "[x]\nb = 2\nc = 2\n").unwrap();
        fs::write(
            d.join("r/top.toml"),
            "extends = [\"base/one.toml\", \"two.toml\"]\n[x]\nc = 3\n",
        )
        .unwrap();
        let l = load_tree(&d.join("r/top.toml")).unwrap();
        let expected: Table = toml::from_str("[x]\na = 1\nb = 2\nc = 3\n").unwrap();
        assert_eq!(l.table, expected);
        assert!(l.origins.keys().all(|k| !k.starts_with("extends")));
        assert!(line_of(&l, "x.a").0.ends_with("r/base/one.toml"));
        assert!(line_of(&l, "x.b").0.ends_with("r/two.toml"));
        assert!(line_of(&l, "x.c").0.ends_with("r/top.toml"));
    }

    #[test]
    fn extends_chain_nests() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("root.toml"), "[x]\nv = 0\nw = 0\n").unwrap();
        fs::write(
            d.join("sub/mid.toml"),
            "extends = \"../root.toml\"\n[x]\nv = 1\n",
        )
        .unwrap();
        fs::write(d.join("top.toml"), "extends = \"sub/mid.toml\"\n").unwrap();
        let l = load_tree(&d.join("top.toml")).unwrap();
        assert_eq!(l.table["x"]["v"], Value::Integer(1));
        assert_eq!(l.table["x"]["w"], Value::Integer(0));
        // `sub/../root.toml` is shown folded.
        assert_eq!(
            line_of(&l, "x.w").0,
            d.join("root.toml").display().to_string()
        );
    }

    #[test]
    fn cycles_are_reported_with_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("a.toml"), "extends = \"b.toml\"\n").unwrap();
        fs::write(d.join("b.toml"), "extends = \"a.toml\"\n").unwrap();
        let err = load_tree(&d.join("a.toml")).unwrap_err();
        assert_eq!(err.kind, RecipeErrorKind::Extends);
        let a = d.join("a.toml").display().to_string();
        let b = d.join("b.toml").display().to_string();
        assert!(
            err.message.ends_with(&format!("{a} -> {b} -> {a}")),
            "{}",
            err.message
        );
        assert_eq!(
            err.origin.as_deref().unwrap().file(),
            Some(d.join("b.toml").as_path())
        );
    }

    #[test]
    fn self_extension_is_a_cycle() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.toml"), "extends = \"./a.toml\"\n").unwrap();
        let err = load_tree(&dir.path().join("a.toml")).unwrap_err();
        assert_eq!(err.kind, RecipeErrorKind::Extends);
    }

    #[test]
    fn diamond_is_not_a_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("base.toml"), "v = 1\n").unwrap();
        fs::write(d.join("l.toml"), "extends = \"base.toml\"\n").unwrap();
        fs::write(d.join("r.toml"), "extends = \"base.toml\"\n").unwrap();
        fs::write(d.join("top.toml"), "extends = [\"l.toml\", \"r.toml\"]\n").unwrap();
        assert!(load_tree(&d.join("top.toml")).is_ok());
    }

    #[test]
    fn missing_base_names_the_extending_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(
            d.join("a.toml"),
            "\nextends = [\"ok.toml\", \"gone.toml\"]\n",
        )
        .unwrap();
        fs::write(d.join("ok.toml"), "").unwrap();
        let err = load_tree(&d.join("a.toml")).unwrap_err();
        assert_eq!(err.kind, RecipeErrorKind::Read);
        assert!(err.message.contains("gone.toml"), "{}", err.message);
        assert!(err.message.contains("extended by"), "{}", err.message);
        let Some(Origin::Location(loc)) = err.origin.as_deref() else {
            panic!("expected a location")
        };
        assert_eq!((loc.line, loc.file.clone()), (2, d.join("a.toml")));
    }

    #[test]
    fn overrides_set_values_and_origins() {
        let mut l = layer("[run]\nseed = 1\n[[stage]]\nlr = 1.0\n[[stage]]\nlr = 2.0\n");
        for o in [
            "run.dtype=bf16",
            "run.device=cuda:0",
            "stage.0.lr=3e-4",
            "stage[1].lr = 5",
            "vision.layers=[-2,-1]",
            "plugins.sha256.\"connector-mlp\"=abc",
        ] {
            apply_override(&mut l, o).unwrap();
        }
        let expected: Table = toml::from_str(
            "[run]\nseed = 1\ndtype = \"bf16\"\ndevice = \"cuda:0\"\n\
             [[stage]]\nlr = 3e-4\n[[stage]]\nlr = 5\n\
             [vision]\nlayers = [-2, -1]\n[plugins.sha256]\n\"connector-mlp\" = \"abc\"\n",
        )
        .unwrap();
        assert_eq!(l.table, expected);
        assert_eq!(
            l.origins.get("stage.1.lr"),
            Some(&Origin::Override("stage[1].lr = 5".into()))
        );
        assert_eq!(line_of(&l, "run.seed").1, 2);
    }

    #[test]
    fn override_replacing_a_table_drops_its_origins() {
        let mut l = layer("[data.train]\nkind = \"shapes\"\n");
        apply_override(&mut l, "data.train={ kind = \"llava\" }").unwrap();
        assert_eq!(l.table["data"]["train"]["kind"].as_str(), Some("llava"));
        assert!(!l.origins.contains_key("data.train.kind"));
    }

    #[test]
    fn malformed_overrides_quote_themselves() {
        let mut l = layer("[run]\nname = \"x\"\n[[stage]]\nlr = 1.0\n");
        for bad in [
            "run.seed",
            "=3",
            "a..b=1",
            "run.name.x=1",
            "run[0]=1",
            "stage.3.lr=1",
            "stage.lr=1",
            "nothing.0.x=1",
            "extends=x.toml",
        ] {
            let err = apply_override(&mut l, bad).unwrap_err();
            assert_eq!(err.kind, RecipeErrorKind::Override);
            assert!(err.message.contains(&format!("`{bad}`")), "{}", err.message);
            assert_eq!(err.origin.as_deref(), Some(&Origin::Override(bad.into())));
        }
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = parse_text(Path::new("x.toml"), "a = 1\n[b\n").unwrap_err();
        assert_eq!(err.kind, RecipeErrorKind::Syntax);
        let Some(Origin::Location(loc)) = err.origin.as_deref() else {
            panic!("expected a location")
        };
        assert_eq!(loc.line, 2);
    }

    #[test]
    fn duplicate_keys_are_syntax_errors() {
        let err = parse_text(Path::new("x.toml"), "a = 1\na = 2\n").unwrap_err();
        assert_eq!(err.kind, RecipeErrorKind::Syntax);
    }
}
