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

/// Refuses to replace an existing `out` unless `force` is set.
pub fn refuse_existing(out: &Path, force: bool) -> Result<()> {
    if out.exists() && !force {
        anyhow::bail!(
            "{}: already exists (pass --force to replace it)",
            out.display()
        );
    }
    Ok(())
}

/// Writes `text` to `path` atomically; errors name the file.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    write_file(path, |out| Ok(out.write_all(text.as_bytes())?))
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Writes `value` to `path` atomically as indented JSON with a final newline (as transformers
/// writes its JSON files); errors name the file.
pub fn write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    write_file(path, |out| {
        serde_json::to_writer_pretty(&mut *out, value)?;
        Ok(out.write_all(b"\n")?)
    })
    .with_context(|| format!("{}: cannot write", path.display()))
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

/// A new empty directory beside `target` (creating `target`'s parent if needed), on the same
/// filesystem, so that renaming it to `target` once it is filled is atomic.
pub fn staging_dir(target: &Path) -> Result<PathBuf> {
    if target.file_name().is_none() {
        anyhow::bail!("{}: not a directory name", target.display());
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent)
        .with_context(|| format!("{}: cannot create directory", parent.display()))?;
    let staging = temp_path(target, "tmp");
    fs::create_dir(&staging)
        .with_context(|| format!("{}: cannot create directory", staging.display()))?;
    Ok(staging)
}

/// Fsyncs every file and directory under `dir`, so the rename publishes data already on disk.
pub fn sync_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", path.display()))?;
        }
    }
    sync_dir(dir)
}

/// Renames the directory `tmp` to `target`. An existing `target` (a checkpoint step saved again,
/// an export overwritten) is moved aside first and deleted only once the new one is in place.
pub fn replace_dir(tmp: &Path, target: &Path) -> Result<()> {
    let old = target.exists().then(|| temp_path(target, "old"));
    if let Some(old) = &old {
        fs::rename(target, old)
            .with_context(|| format!("cannot move aside {}", target.display()))?;
    }
    if let Err(e) = fs::rename(tmp, target) {
        if let Some(old) = &old {
            // Best effort: put the previous version back rather than leave no `target` at all.
            let _ = fs::rename(old, target);
        }
        return Err(e).with_context(|| format!("cannot rename {}", tmp.display()));
    }
    sync_parent(target)?;
    if let Some(old) = old {
        fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
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
