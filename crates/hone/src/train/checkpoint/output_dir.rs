//! Getting `output_dir` ready for a run: created if missing, kept when resuming, cleared only
//! when `overwrite_output_dir` says so and clearing cannot destroy the run's own inputs, and
//! refused otherwise so that a new run never mixes its checkpoints with an old run's.
//! (LLaMA-Factory instead resumes silently from the last checkpoint it finds there; Hone asks
//! for `resume_from_checkpoint: true` so that continuing an old run is a decision.)

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::io::atomic;
use crate::train::config::SftConfig;

/// What to do with an `output_dir` that already has content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExistingOutput {
    /// Stop with an error naming `overwrite_output_dir` and `resume_from_checkpoint`.
    Refuse,
    /// Delete the content (`overwrite_output_dir: true`).
    Clear,
    /// Keep it: the run continues from a checkpoint (`resume_from_checkpoint`), which may be in
    /// there, so resuming wins over `overwrite_output_dir`.
    Keep,
}

impl ExistingOutput {
    fn for_config(config: &SftConfig) -> Self {
        if config.output.resume_from_checkpoint.is_resuming() {
            ExistingOutput::Keep
        } else if config.output.overwrite_output_dir {
            ExistingOutput::Clear
        } else {
            ExistingOutput::Refuse
        }
    }
}

/// A ready `output_dir`, and what was put back in it from before an interrupted save.
#[derive(Debug)]
pub struct PreparedOutput {
    pub dir: PathBuf,
    pub restored: Vec<PathBuf>,
}

/// Makes the config's `output_dir` ready. What a killed run's saves left half-done is undone first
/// ([`atomic::recover`]): nothing under a temporary name is ever part of a checkpoint or the
/// output.
pub fn prepare_output_dir(config: &SftConfig) -> Result<PreparedOutput> {
    let dir = PathBuf::from(&config.output.output_dir);
    if !dir.exists() {
        fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create output_dir", dir.display()))?;
        return Ok(PreparedOutput {
            dir,
            restored: Vec::new(),
        });
    }
    if !dir.is_dir() {
        bail!(
            "{}: output_dir exists and is not a directory",
            dir.display()
        );
    }
    let restored = atomic::recover(&dir)?;
    let ready = |dir| Ok(PreparedOutput { dir, restored });
    if is_empty(&dir)? {
        return ready(dir);
    }
    match ExistingOutput::for_config(config) {
        ExistingOutput::Keep => ready(dir),
        ExistingOutput::Refuse => bail!(
            "{}: output_dir is not empty; set overwrite_output_dir: true to clear it, or \
             resume_from_checkpoint: true to continue the run saved there",
            dir.display()
        ),
        ExistingOutput::Clear => {
            refuse_unsafe_clear(&dir, &input_paths(config))?;
            clear(&dir)?;
            ready(dir)
        }
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<std::io::Result<Vec<_>>>())
        .with_context(|| format!("{}: cannot list output_dir", dir.display()))
}

fn is_empty(dir: &Path) -> Result<bool> {
    Ok(read_dir(dir)?.is_empty())
}

/// The paths the run reads, which clearing `output_dir` must not delete.
fn input_paths(config: &SftConfig) -> Vec<PathBuf> {
    let mut paths = vec![
        PathBuf::from(&config.model.model_name_or_path),
        PathBuf::from(&config.data.dataset_dir),
    ];
    paths.extend(config.model.adapter_name_or_path.iter().map(PathBuf::from));
    paths
}

/// Refuses to clear a directory holding the current directory, the home directory or one of
/// the run's inputs: a mistyped `output_dir: .` must not wipe a project.
fn refuse_unsafe_clear(dir: &Path, inputs: &[PathBuf]) -> Result<()> {
    let canonical = dir
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve output_dir", dir.display()))?;
    let refuse = |why: String| -> Result<()> {
        bail!(
            "{}: refusing to clear output_dir (overwrite_output_dir: true): {why}",
            dir.display()
        )
    };
    if canonical.parent().is_none() {
        return refuse("it is the filesystem root".into());
    }
    if let Ok(cwd) = std::env::current_dir().and_then(|d| d.canonicalize()) {
        if cwd.starts_with(&canonical) {
            return refuse("it holds the current directory".into());
        }
    }
    if let Some(home) = std::env::var_os("HOME").and_then(|h| PathBuf::from(h).canonicalize().ok())
    {
        if home.starts_with(&canonical) {
            return refuse("it holds the home directory".into());
        }
    }
    for input in inputs {
        // Inputs that do not exist as paths (a Hub id, say) cannot be inside it.
        if let Ok(path) = input.canonicalize() {
            if path.starts_with(&canonical) {
                return refuse(format!("it holds the run's input {}", input.display()));
            }
        }
    }
    Ok(())
}

/// Deletes everything in `dir`, keeping `dir` itself. Symbolic links are removed, never
/// followed.
fn clear(dir: &Path) -> Result<()> {
    for entry in read_dir(dir)? {
        let path = entry.path();
        let removed = if entry.file_type()?.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        removed.with_context(|| {
            format!(
                "{}: cannot delete while clearing output_dir",
                path.display()
            )
        })?;
    }
    Ok(())
}
