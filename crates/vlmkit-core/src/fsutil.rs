//! Crash-safe file writes, and reading only what is a file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A sibling temporary path for `path` (same directory, so the rename is atomic).
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the
/// directory. Readers see the old content or the new, never a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(path.parent())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Makes a rename inside `dir` durable.
pub fn sync_dir(dir: Option<&Path>) -> std::io::Result<()> {
    let dir = match dir {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Directories can be opened and fsynced on Unix; elsewhere this is best effort.
    match std::fs::File::open(dir) {
        Ok(f) => f.sync_all().or(Ok(())),
        Err(_) => Ok(()),
    }
}

/// Checks that `path` is a regular file (symbolic links followed) of at most
/// `limit` bytes before anything reads it: a FIFO would block the reader, a
/// device such as `/dev/zero` would never end. Returns its length.
pub fn check_regular_file(path: &Path, limit: u64) -> std::io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    let file_type = meta.file_type();
    if !file_type.is_file() {
        #[cfg(unix)]
        let what = {
            use std::os::unix::fs::FileTypeExt;
            if file_type.is_dir() {
                "a directory"
            } else if file_type.is_fifo() {
                "a FIFO"
            } else if file_type.is_char_device() || file_type.is_block_device() {
                "a device"
            } else if file_type.is_socket() {
                "a socket"
            } else {
                "not a regular file"
            }
        };
        #[cfg(not(unix))]
        let what = if file_type.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it is {what}, not a file vlmkit reads"),
        ));
    }
    if meta.len() > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "it holds {} bytes, more than the {limit} vlmkit reads from such a file",
                meta.len()
            ),
        ));
    }
    Ok(meta.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
