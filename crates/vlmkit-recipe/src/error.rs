//! Located recipe errors, rendered like compiler diagnostics.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where a key was written in a recipe file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file, as the user named it (relative paths stay relative).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// How many characters to underline (at least 1).
    pub width: usize,
    /// The full text of `line`, without its line ending.
    pub source_line: String,
}

impl Location {
    /// The location of the byte range `span` of `text`, read from `file`.
    pub(crate) fn from_span(file: &Path, text: &str, span: Range<usize>) -> Self {
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let source_line = text[line_start..line_end]
            .trim_end_matches('\r')
            .to_string();
        // Spans that run past the line (multi-line values) are underlined to its end.
        let end = floor_char_boundary(text, span.end.clamp(start, line_end));
        Self {
            file: file.to_path_buf(),
            line: text[..line_start].matches('\n').count() + 1,
            column: text[line_start..start].chars().count() + 1,
            width: text[start..end].chars().count().max(1),
            source_line,
        }
    }
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Where a recipe value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A key written in a recipe file.
    Location(Location),
    /// A recipe file as a whole (for things missing from it).
    File(PathBuf),
    /// A `--set key=value` override, holding the override as written.
    Override(String),
}

impl Origin {
    /// The recipe file this origin points into, if any.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Origin::Location(loc) => Some(&loc.file),
            Origin::File(file) => Some(file),
            Origin::Override(_) => None,
        }
    }

    /// The directory relative paths set here resolve against: the recipe file's
    /// directory, or `None` (the current directory) for overrides.
    pub fn base_dir(&self) -> Option<&Path> {
        self.file().and_then(Path::parent)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Location(loc) => {
                write!(f, "{}:{}:{}", loc.file.display(), loc.line, loc.column)
            }
            Origin::File(file) => write!(f, "{}", file.display()),
            Origin::Override(raw) => write!(f, "--set {raw}"),
        }
    }
}

/// What kind of problem a [`RecipeError`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipeErrorKind {
    /// A recipe file could not be read.
    Read,
    /// A recipe file is not valid TOML.
    Syntax,
    /// `extends` is malformed or forms a cycle.
    Extends,
    /// A `--set` override is malformed or cannot be applied.
    Override,
    /// The merged recipe does not fit the schema, or a component rejected its section.
    Invalid,
}

/// A recipe problem, located at the file, line and key (or `--set` override) that
/// caused it. `Display` renders it like a compiler diagnostic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", self.render())]
pub struct RecipeError {
    /// What kind of problem this is.
    pub kind: RecipeErrorKind,
    /// The dotted key path at fault (`stage.0.lr`), when the problem is about a key.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// Where the offending definition was written, when known (boxed to keep
    /// `Result<_, RecipeError>` small).
    pub origin: Option<Box<Origin>>,
    /// A hint on how to fix it (e.g. the keys that are accepted).
    pub help: Option<String>,
}

impl RecipeError {
    pub(crate) fn new(kind: RecipeErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            key: None,
            message: message.into(),
            origin: None,
            help: None,
        }
    }

    pub(crate) fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    pub(crate) fn with_origin(mut self, origin: Option<Origin>) -> Self {
        self.origin = origin.map(Box::new);
        self
    }

    /// The same error with a help line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    fn render(&self) -> String {
        let mut out = format!("error: {}", self.message);
        // Without a source line the gutter still needs some width for the arrow.
        let gutter = match self.origin.as_deref() {
            Some(Origin::Location(loc)) => loc.line.to_string().len(),
            _ => 2,
        };
        let pad = " ".repeat(gutter);
        if let Some(origin) = self.origin.as_deref() {
            out.push_str(&format!("\n{pad}--> {origin}"));
            if let Origin::Location(loc) = origin {
                // Keep tabs so the carets line up under tab-indented source.
                let indent: String = loc
                    .source_line
                    .chars()
                    .take(loc.column - 1)
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                out.push_str(&format!(
                    "\n{pad} |\n{} | {}\n{pad} | {indent}{}",
                    loc.line,
                    loc.source_line.trim_end(),
                    "^".repeat(loc.width)
                ));
            }
        }
        if let Some(help) = &self.help {
            out.push_str(&format!("\n{pad} = help: {help}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_from_span() {
        let text = "a = 1\n[run]\n  seed = 3\n";
        let start = text.find("seed").unwrap();
        let loc = Location::from_span(Path::new("r.toml"), text, start..start + 4);
        assert_eq!((loc.line, loc.column, loc.width), (3, 3, 4));
        assert_eq!(loc.source_line, "  seed = 3");
    }

    #[test]
    fn empty_span_gets_one_caret() {
        let loc = Location::from_span(Path::new("r.toml"), "[b\n", 2..2);
        assert_eq!((loc.line, loc.column, loc.width), (1, 3, 1));
    }

    #[test]
    fn renders_override_origin() {
        let err = RecipeError::new(RecipeErrorKind::Override, "bad")
            .with_origin(Some(Origin::Override("a=b".into())))
            .with_help("fix it");
        assert_eq!(
            err.to_string(),
            "error: bad\n  --> --set a=b\n   = help: fix it"
        );
    }
}
