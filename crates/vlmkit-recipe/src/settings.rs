//! Recipe sections as handed to component factories.
//!
//! A factory (a connector, a vision encoder, a language model) receives its recipe
//! section as a [`Settings`]: the TOML table plus the dotted key path it lives at.
//! Parsing into the factory's typed config goes through [`Settings::parse`], which
//! refuses unknown keys (when the config says `deny_unknown_fields`) and reports the
//! full key path of whatever is wrong, so that the recipe layer can point at the
//! file and line that set it.

use serde::de::DeserializeOwned;

/// A recipe section: a TOML table and the dotted key path it was found at.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    path: String,
    table: toml::Table,
}

/// A problem with one recipe key: the full dotted key path and what is wrong with it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct SettingsError {
    /// Full dotted key path, e.g. `connector.kernel_size`.
    pub key: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl Settings {
    /// A section found at `path` (e.g. `"connector"`), holding `table`.
    pub fn new(path: impl Into<String>, table: toml::Table) -> Self {
        Self {
            path: path.into(),
            table,
        }
    }

    /// An empty section at `path`.
    pub fn empty(path: impl Into<String>) -> Self {
        Self::new(path, toml::Table::new())
    }

    /// The dotted key path of this section.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The raw table.
    pub fn table(&self) -> &toml::Table {
        &self.table
    }

    /// The value under `key`, if set.
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.table.get(key)
    }

    /// A string value under `key`, or an error naming the key if it has another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, SettingsError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.error(
                key,
                format!("expected a string, found {}", other.type_str()),
            )),
        }
    }

    /// The same section without `keys` (for instance the `kind` that selected the
    /// factory, which the factory's own config does not declare).
    pub fn without(&self, keys: &[&str]) -> Settings {
        let mut table = self.table.clone();
        for key in keys {
            table.remove(*key);
        }
        Settings::new(self.path.clone(), table)
    }

    /// The sub-table under `key` as its own section (empty if absent).
    pub fn section(&self, key: &str) -> Result<Settings, SettingsError> {
        match self.table.get(key) {
            None => Ok(Settings::empty(self.key(key))),
            Some(toml::Value::Table(t)) => Ok(Settings::new(self.key(key), t.clone())),
            Some(other) => {
                Err(self.error(key, format!("expected a table, found {}", other.type_str())))
            }
        }
    }

    /// The full dotted path of `key` inside this section.
    pub fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else if key.is_empty() {
            self.path.clone()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// An error about `key` (relative to this section).
    pub fn error(&self, key: &str, message: impl Into<String>) -> SettingsError {
        SettingsError {
            key: self.key(key),
            message: message.into(),
        }
    }

    /// Deserialise the section into a typed config. Errors name the full key path; an
    /// unknown key is reported at the key itself, not at its table.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, SettingsError> {
        let value = toml::Value::Table(self.table.clone());
        serde_path_to_error::deserialize::<_, T>(value).map_err(|err| {
            let inner = err.inner().to_string();
            let mut key = path_to_dotted(err.path());
            // Some deserialisers stop the path at the table that holds an unknown key.
            if let Some(field) = unknown_field_name(&inner).filter(|f| !key.ends_with(f.as_str())) {
                key = if key.is_empty() {
                    field
                } else {
                    format!("{key}.{field}")
                };
            }
            SettingsError {
                key: self.key(&key),
                message: tidy_serde_message(&inner),
            }
        })
    }
}

fn path_to_dotted(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// serde reports unknown fields as "unknown field `name`, expected one of ...".
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    Some(rest[..end].to_string())
}

/// serde/toml messages sometimes end with a newline or carry "in `key`" lines that
/// repeat what the key path already says.
fn tidy_serde_message(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| {
            let echoes_key = line.starts_with("in `") && line.ends_with('`');
            !line.is_empty() && !echoes_key
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cfg {
        #[serde(default)]
        width: usize,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, serde::Deserialize, PartialEq, Default)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        depth: usize,
    }

    fn settings(src: &str) -> Settings {
        Settings::new("connector", toml::from_str(src).unwrap())
    }

    #[test]
    fn parses_known_keys() {
        let cfg: Cfg = settings("width = 3\ninner = { depth = 2 }")
            .parse()
            .unwrap();
        assert_eq!(cfg.width, 3);
        assert_eq!(cfg.inner.depth, 2);
    }

    #[test]
    fn unknown_key_is_named_in_full() {
        let err = settings("inner = { deph = 2 }").parse::<Cfg>().unwrap_err();
        assert_eq!(err.key, "connector.inner.deph");
        assert!(
            err.message.contains("unknown field `deph`"),
            "{}",
            err.message
        );
    }

    #[test]
    fn wrong_type_is_named_at_its_key() {
        let err = settings("width = \"wide\"").parse::<Cfg>().unwrap_err();
        assert_eq!(err.key, "connector.width");
        assert_eq!(err.message, "invalid type: string \"wide\", expected usize");
    }

    #[test]
    fn without_drops_keys() {
        let s = settings("kind = \"mlp\"\nwidth = 1").without(&["kind"]);
        assert!(s.get("kind").is_none());
        assert_eq!(s.parse::<Cfg>().unwrap().width, 1);
    }
}
