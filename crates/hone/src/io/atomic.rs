//! Atomic file and directory writes: content goes to a uniquely named temporary beside the target,
//! is flushed to disk, then renamed into place, so a crash or a failed write never leaves a
//! partial file under the target's name and never clobbers the previous version half-way. Lines
//! appended to a log go in one write each, so a reader never sees half of one.

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
    recover_target(path)?;
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

/// Appends one JSON line per value to `path` (created when missing) in one write, flushed, so a
/// reader following the file never sees half a line.
pub fn append_json_lines<T: serde::Serialize>(path: &Path, values: &[T]) -> Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    let mut text = Vec::new();
    for value in values {
        serde_json::to_writer(&mut text, value)?;
        text.push(b'\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?;
    file.write_all(&text)
        .and_then(|()| file.flush())
        .with_context(|| format!("{}: cannot append", path.display()))
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

/// What a name made by [`temp_path`] stands for: `.NAME.PID.N.tmp` is a write of NAME by process
/// PID in progress (or interrupted), `.NAME.PID.N.old` a previous NAME moved aside by
/// [`replace_dir`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Temporary<'a> {
    pub target: &'a str,
    pub pid: u32,
    pub moved_aside: bool,
}

impl<'a> Temporary<'a> {
    /// The temporary a directory entry's name is, if it is one.
    pub fn parse(name: &'a str) -> Option<Self> {
        let rest = name.strip_prefix('.')?;
        let (rest, suffix) = rest.rsplit_once('.')?;
        let (rest, n) = rest.rsplit_once('.')?;
        let (target, pid) = rest.rsplit_once('.')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if target.is_empty() || !digits(n) || !digits(pid) {
            return None;
        }
        let moved_aside = match suffix {
            "tmp" => false,
            "old" => true,
            _ => return None,
        };
        Some(Temporary {
            target,
            pid: pid.parse().ok()?,
            moved_aside,
        })
    }
}

/// Tidies `dir` after writers that were killed mid-way, none of which may be writing there now
/// (a run's own output directory): see `recover_where`. Returns what was put back.
pub fn recover(dir: &Path) -> Result<Vec<PathBuf>> {
    recover_where(dir, |_| true)
}

/// Before `path` is written: tidies what writers of `path` that no longer run left beside it
/// (see [`recover_where`]), so a killed save's temporaries do not stay there for good.
fn recover_target(path: &Path) -> Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if !dir.is_dir() {
        return Ok(());
    }
    let name = name.to_string_lossy();
    recover_where(dir, |t| t.target == name && !process_runs(t.pid))?;
    Ok(())
}

/// For each temporary in `dir` that `chosen` picks: a previous version moved aside whose
/// replacement never arrived is put back under its name; every other one is deleted. Returns
/// what was put back.
fn recover_where(dir: &Path, chosen: impl Fn(&Temporary) -> bool) -> Result<Vec<PathBuf>> {
    let list = || format!("{}: cannot list", dir.display());
    let entries: Vec<(String, PathBuf)> = fs::read_dir(dir)
        .with_context(list)?
        .map(|e| e.map(|e| (e.file_name().to_string_lossy().into_owned(), e.path())))
        .collect::<std::io::Result<_>>()
        .with_context(list)?;
    let mut temporaries: Vec<(Temporary, &PathBuf)> = entries
        .iter()
        .filter_map(|(name, path)| Temporary::parse(name).filter(&chosen).map(|t| (t, path)))
        .collect();
    // Moved-aside versions first, so that staged ones of the same name are deleted afterwards.
    temporaries.sort_by_key(|(temporary, _)| !temporary.moved_aside);
    let mut restored = Vec::new();
    for (temporary, path) in temporaries {
        let target = dir.join(temporary.target);
        if temporary.moved_aside && !target.exists() {
            fs::rename(path, &target)
                .with_context(|| format!("{}: cannot restore", target.display()))?;
            restored.push(target);
            continue;
        }
        let removed = if path.is_dir() {
            fs::remove_dir_all(path)
        } else {
            fs::remove_file(path)
        };
        removed.with_context(|| format!("{}: cannot remove unfinished write", path.display()))?;
    }
    if !restored.is_empty() {
        sync_dir(dir)?;
    }
    Ok(restored)
}

/// Whether process `pid` is running (this one included). Where that cannot be asked, it is taken
/// to run, so nothing of a live writer is ever touched.
pub fn process_runs(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // SAFETY: signal 0 only asks whether the process exists; nothing is sent.
        let status = unsafe { libc::kill(pid, 0) };
        status == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    true
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
    recover_target(target)?;
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
        // Renamed to a plain temporary before it is deleted: a deletion cut short (a kill) must
        // not leave a moved-aside version that a later write would restore, half-deleted, once
        // the target is gone.
        let doomed = temp_path(target, "tmp");
        fs::rename(&old, &doomed).with_context(|| format!("cannot remove {}", old.display()))?;
        fs::remove_dir_all(&doomed)
            .with_context(|| format!("cannot remove {}", doomed.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_parse_back_to_their_target() {
        let target = Path::new("/x/checkpoint-5");
        let staged = temp_path(target, "tmp");
        let staged = staged.file_name().unwrap().to_str().unwrap();
        let parsed = Temporary::parse(staged).unwrap();
        assert_eq!(parsed.target, "checkpoint-5");
        assert_eq!(parsed.pid, std::process::id());
        assert!(!parsed.moved_aside);
        // A temporary of a temporary (an adapter staged inside a staged checkpoint's name).
        let inner = format!(".{staged}.12.3.tmp");
        assert_eq!(Temporary::parse(&inner).unwrap().target, staged);
        let old = Temporary {
            target: "a.b",
            pid: 1,
            moved_aside: true,
        };
        assert_eq!(Temporary::parse(".a.b.1.2.old"), Some(old));
        for name in [
            "checkpoint-5",
            ".hidden",
            ".a.1.2.bak",
            ".a.x.2.tmp",
            "..1.2.tmp",
            ".a.1..tmp",
        ] {
            assert_eq!(Temporary::parse(name), None, "{name}");
        }
    }

    #[test]
    fn recovery_restores_what_was_moved_aside_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // checkpoint-3 was moved aside and its replacement never renamed into place.
        fs::create_dir(d.join(".checkpoint-3.77.1.old")).unwrap();
        fs::write(d.join(".checkpoint-3.77.1.old/state.json"), "3").unwrap();
        fs::create_dir(d.join(".checkpoint-3.77.0.tmp")).unwrap();
        // checkpoint-2 was replaced, its old version not yet deleted.
        fs::create_dir(d.join("checkpoint-2")).unwrap();
        fs::create_dir(d.join(".checkpoint-2.77.2.old")).unwrap();
        // A staged file and a staged directory inside a staged one's name.
        fs::write(d.join(".log.jsonl.77.4.tmp"), "half").unwrap();
        fs::create_dir(d.join("..checkpoint-4.77.5.tmp.77.6.tmp")).unwrap();
        fs::write(d.join("keep.json"), "{}").unwrap();
        let restored = recover(d).unwrap();
        assert_eq!(restored, [d.join("checkpoint-3")]);
        assert_eq!(
            fs::read_to_string(d.join("checkpoint-3/state.json")).unwrap(),
            "3"
        );
        let mut names: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["checkpoint-2", "checkpoint-3", "keep.json"]);
    }

    #[test]
    fn a_write_removes_only_its_targets_temporaries_of_finished_processes() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // No process has a pid this large (Linux caps them at 2^22); this process's own temporary
        // has a count its writes do not reach in a test, so it is not the name they use.
        let gone = 999_999_999;
        let mine = std::process::id();
        for name in [
            format!(".model.gguf.{gone}.0.tmp"),
            format!(".model.gguf.{mine}.999999.tmp"),
            format!(".other.gguf.{gone}.0.tmp"),
        ] {
            fs::write(d.join(name), "half").unwrap();
        }
        write_text(&d.join("model.gguf"), "whole").unwrap();
        let mut names: Vec<_> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let expected = [
            format!(".model.gguf.{mine}.999999.tmp"),
            format!(".other.gguf.{gone}.0.tmp"),
            "model.gguf".to_string(),
        ];
        assert_eq!(names, expected);
    }

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
