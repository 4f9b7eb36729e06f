//! The run's JSON-lines logs (`metrics.jsonl`, `skipped.jsonl`): appended to,
//! their lines counted so a checkpoint records where the run stood, and cut
//! back to that line when a run resumes.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::TrainError;

/// One JSON-lines log of a run.
pub(super) struct JsonLines {
    path: PathBuf,
    file: std::fs::File,
    /// Lines in the file.
    pub(super) lines: u64,
}

impl JsonLines {
    /// Opens the log: emptied for a fresh run, cut back to its first
    /// `keep_lines` lines for a resumed one.
    pub(super) fn open(path: &Path, keep_lines: Option<u64>) -> Result<Self, TrainError> {
        let io = TrainError::io(path);
        let mut lines = 0;
        match keep_lines {
            Some(keep) => {
                let text = match std::fs::read_to_string(path) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                    Err(e) => return Err(io(e)),
                };
                let body: String = text
                    .lines()
                    .take(keep as usize)
                    .map(|l| format!("{l}\n"))
                    .collect();
                lines = body.lines().count() as u64;
                vlmkit_core::fsutil::write_atomic(path, body.as_bytes()).map_err(io)?;
            }
            None => std::fs::write(path, b"").map_err(io)?,
        }
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(TrainError::io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            lines,
        })
    }

    pub(super) fn write(&mut self, record: &impl Serialize) -> Result<(), TrainError> {
        let line = serde_json::to_string(record).expect("log records serialise");
        writeln!(self.file, "{line}").map_err(TrainError::io(&self.path))?;
        self.lines += 1;
        Ok(())
    }

    /// On disk before a checkpoint counts its lines.
    pub(super) fn sync(&mut self) -> Result<(), TrainError> {
        self.file.sync_all().map_err(TrainError::io(&self.path))
    }
}
