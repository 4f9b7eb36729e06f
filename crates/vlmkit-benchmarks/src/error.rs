//! What goes wrong reading answers and release files: every error names the file,
//! and the line or question id where there is one.

use std::path::PathBuf;

use crate::QuestionId;

/// Why a benchmark could not be scored.
#[derive(Debug, thiserror::Error)]
pub enum BenchmarkError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that is not in the format it should be.
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Format {
        path: PathBuf,
        /// 1-based, where the file has lines.
        line: Option<usize>,
        message: String,
    },
    #[error("`{benchmark}` needs {flag}: {what}")]
    NeedsInput {
        benchmark: &'static str,
        flag: &'static str,
        what: &'static str,
    },
    #[error("{}:{line}: a second answer for question {id} (the first is on line {first_line})", path.display())]
    DuplicateAnswer {
        id: QuestionId,
        path: PathBuf,
        first_line: usize,
        line: usize,
    },
    #[error(
        "{}:{line}: an answer for question {id}, which {} does not hold{}",
        answers.display(),
        questions.display(),
        scope.as_ref().map(|s| format!(" ({s})")).unwrap_or_default()
    )]
    UnknownQuestion {
        id: QuestionId,
        answers: PathBuf,
        line: usize,
        questions: PathBuf,
        /// The part of the file that was searched, e.g. "split `test`".
        scope: Option<String>,
    },
    #[error(
        "{}: no answer for question {first} of {}{}",
        answers.display(),
        questions.display(),
        if *count > 1 { format!(" ({} questions have none)", count) } else { String::new() }
    )]
    MissingAnswers {
        first: QuestionId,
        count: usize,
        answers: PathBuf,
        questions: PathBuf,
    },
    /// Two files whose entries are matched by position disagree in number.
    #[error("{what}: {} has {found}, {} has {expected}", found_in.display(), expected_in.display())]
    CountMismatch {
        what: String,
        found_in: PathBuf,
        found: usize,
        expected_in: PathBuf,
        expected: usize,
    },
    #[error("{}: question {id}: {message}", path.display())]
    BadEntry {
        path: PathBuf,
        id: QuestionId,
        message: String,
    },
    #[error("`{benchmark}` is scored only by LLaVA's rule: {reason}")]
    ConventionUnavailable {
        benchmark: &'static str,
        reason: &'static str,
    },
    #[error("unknown benchmark `{name}`; known: {known}")]
    UnknownBenchmark { name: String, known: String },
    #[error("`{benchmark}` cannot be scored: {reason}")]
    Unscorable {
        benchmark: &'static str,
        reason: String,
    },
}

impl BenchmarkError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn format(
        path: impl Into<PathBuf>,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        Self::Format {
            path: path.into(),
            line,
            message: message.into(),
        }
    }
}
