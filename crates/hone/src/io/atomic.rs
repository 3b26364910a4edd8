//! Atomic file and directory writes: content goes to a uniquely named temporary beside the target,
//! is flushed to disk, then renamed into place, so a crash or a failed write never leaves a
//! partial file under the target's name and never clobbers the previous version half-way.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// Writes `path` atomically: `write` fills a buffered temporary beside it, which is fsynced and
/// renamed over `path`. On any error the temporary is removed and `path` is left as it was.
pub fn write_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let tmp = temp_path(path, "tmp");
    let written = fill_and_sync(&tmp, write).and_then(|()| {
        fs::rename(&tmp, path).with_context(|| format!("cannot rename {}", tmp.display()))
    });
    if written.is_err() {
        // Best effort: the temporary may not exist, and the original error is what matters.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_parent(path)
}

fn fill_and_sync(tmp: &Path, write: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    let file = File::create(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut out = BufWriter::new(file);
    write(&mut out)?;
    out.flush()?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
        .with_context(|| format!("cannot sync {}", tmp.display()))
}

/// A name beside `path`, `.NAME.PID.N.SUFFIX`, that no other writer in this or another process
/// uses at the same time. The leading dot keeps it out of listings and checkpoint scans.
pub fn temp_path(path: &Path, suffix: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.{n}.{suffix}", std::process::id()))
}

/// Makes a rename inside `path`'s directory durable: the directory entry itself is fsynced.
pub fn sync_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// Fsyncs a directory's entries. Only Unix can open a directory for this; elsewhere the rename
/// is as durable as the platform makes it.
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_file(&path, |out| Ok(out.write_all(b"old")?)).unwrap();
        let err = write_file(&path, |out| {
            out.write_all(b"half")?;
            anyhow::bail!("disk on fire")
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk on fire");
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }
}
