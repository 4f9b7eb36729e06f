//! Dotted key paths: `stage.0.lr`, `stage[0].lr`, `plugins.sha256."connector-mlp"`.

use std::fmt::Write;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

/// Parse a key path. Unquoted all-digit segments and `[N]` are array indices;
/// quoted segments are always table keys (so a table key "0" stays reachable).
pub(crate) fn parse(key: &str) -> Result<Vec<Segment>, String> {
    let key = key.trim();
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    let mut segments = Vec::new();
    let mut chars = key.chars().peekable();
    // True right after a `.` (or at the start), where a segment must follow.
    let mut want_segment = true;
    while let Some(&c) = chars.peek() {
        match c {
            '.' if !want_segment => {
                chars.next();
                want_segment = true;
            }
            '[' => {
                if want_segment {
                    return Err(format!("`[` must follow a key in `{key}`"));
                }
                chars.next();
                let digits: String = chars.by_ref().take_while(|&c| c != ']').collect();
                let index = digits
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| format!("`[{digits}]` is not an array index in `{key}`"))?;
                segments.push(Segment::Index(index));
            }
            '"' if want_segment => {
                chars.next();
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unclosed quote in `{key}`")),
                    }
                }
                segments.push(Segment::Key(name));
                want_segment = false;
            }
            _ if want_segment => {
                let mut name = String::new();
                while let Some(&c) = chars.peek() {
                    if c == '.' || c == '[' {
                        break;
                    }
                    if c == '"' {
                        return Err(format!("a quote must enclose a whole segment in `{key}`"));
                    }
                    name.push(c);
                    chars.next();
                }
                let name = name.trim().to_string();
                if name.is_empty() {
                    return Err(format!("empty key segment in `{key}`"));
                }
                segments.push(match name.parse::<usize>() {
                    Ok(i) if name.bytes().all(|b| b.is_ascii_digit()) => Segment::Index(i),
                    _ => Segment::Key(name),
                });
                want_segment = false;
            }
            _ => {
                return Err(format!(
                    "expected `.` or `[` after a key segment in `{key}`"
                ))
            }
        }
    }
    if want_segment {
        return Err(format!("empty key segment in `{key}`"));
    }
    if segments.len() > MAX_SEGMENTS {
        return Err(format!(
            "a key path of {} segments is deeper than any recipe key (at most {MAX_SEGMENTS})",
            segments.len()
        ));
    }
    Ok(segments)
}

/// The deepest key path accepted: a recipe's deepest keys have five segments
/// (`stage.0.data.families.color`); nesting tables thousands deep would
/// overflow the stack of every reader after this one.
const MAX_SEGMENTS: usize = 32;

/// The canonical dotted form used as origin-map key: indices become `.N`.
pub(crate) fn dotted(segments: &[Segment]) -> String {
    let mut out = String::new();
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match seg {
            Segment::Key(k) => out.push_str(k),
            Segment::Index(n) => {
                let _ = write!(out, "{n}");
            }
        }
    }
    out
}

/// Canonical form of a key written either way; unparsable keys are kept as given.
pub(crate) fn normalize(key: &str) -> String {
    parse(key).map_or_else(|_| key.to_string(), |segs| dotted(&segs))
}

/// `prefix.key`, or `key` at the top level.
pub(crate) fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// The key one level up (`""` for a top-level key).
pub(crate) fn parent(key: &str) -> &str {
    key.rsplit_once('.').map_or("", |(p, _)| p)
}

/// Whether `key` is `root` or lies below it.
pub(crate) fn is_within(key: &str, root: &str) -> bool {
    key == root
        || key
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Look up a key path in a table.
pub(crate) fn get<'a>(table: &'a toml::Table, segments: &[Segment]) -> Option<&'a toml::Value> {
    let (first, rest) = segments.split_first()?;
    let Segment::Key(k) = first else {
        return None;
    };
    let mut cur = table.get(k)?;
    for seg in rest {
        cur = match (cur, seg) {
            (toml::Value::Table(t), Segment::Key(k)) => t.get(k)?,
            (toml::Value::Array(a), Segment::Index(i)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Segment::{Index, Key};

    fn k(s: &str) -> Segment {
        Key(s.into())
    }

    #[test]
    fn parses_both_index_forms() {
        assert_eq!(
            parse("stage.0.lr").unwrap(),
            vec![k("stage"), Index(0), k("lr")]
        );
        assert_eq!(
            parse("stage[0].lr").unwrap(),
            vec![k("stage"), Index(0), k("lr")]
        );
        assert_eq!(parse("a[1][2]").unwrap(), vec![k("a"), Index(1), Index(2)]);
        assert_eq!(normalize("stage[3].betas[1]"), "stage.3.betas.1");
    }

    #[test]
    fn quoted_segments_are_keys() {
        assert_eq!(
            parse("plugins.sha256.\"connector-mlp\"").unwrap(),
            vec![k("plugins"), k("sha256"), k("connector-mlp")]
        );
        assert_eq!(parse("a.\"0\"").unwrap(), vec![k("a"), k("0")]);
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in [
            "", "a..b", ".a", "a.", "a[x]", "[0]", "a.[0]", "a\"b\"", "a.\"b",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn within() {
        assert!(is_within("stage.0.lr", "stage"));
        assert!(is_within("stage", "stage"));
        assert!(!is_within("stages", "stage"));
    }
}
