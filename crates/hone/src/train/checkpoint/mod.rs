//! Checkpoint directories in `output_dir`, laid out as transformers' `Trainer` lays them out
//! (`checkpoint-N` per saved step, each with a `trainer_state.json`), written so that a kill
//! never leaves a half-written directory under a `checkpoint-N` name.

mod log;
mod output_dir;
mod run_status;
mod state;
pub mod tensorboard;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use crate::io::atomic;
use crate::train::config::ResumeFrom;

pub(crate) use log::round2;
pub use log::{append_trainer_log, hms, TrainerLogRecord, TRAINER_LOG_NAME};
pub use output_dir::{prepare_output_dir, PreparedOutput};
pub use run_status::{unix_now, RunState, RunStatus, RUN_STATUS_NAME};
pub use state::{LogHistoryEntry, TrainerState, TRAINER_STATE_NAME};

/// transformers' `PREFIX_CHECKPOINT_DIR`.
pub const CHECKPOINT_PREFIX: &str = "checkpoint";

/// A complete checkpoint directory and the optimizer step it was saved at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub step: u64,
    pub path: PathBuf,
}

/// The step of a directory named exactly `checkpoint-N`.
fn checkpoint_step(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(CHECKPOINT_PREFIX)?.strip_prefix('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A directory is a complete checkpoint once it holds `trainer_state.json`: transformers writes
/// it into every checkpoint, and `save_checkpoint` renames a directory into place only with it.
fn is_complete(dir: &Path) -> bool {
    dir.join(TRAINER_STATE_NAME).is_file()
}

/// The complete `checkpoint-N` directories in `output_dir`, oldest step first. Temporary
/// directories of unfinished saves are not among them.
pub fn list_checkpoints(output_dir: &Path) -> Result<Vec<Checkpoint>> {
    let entries = fs::read_dir(output_dir)
        .with_context(|| format!("{}: cannot list checkpoints", output_dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("{}: cannot list", output_dir.display()))?;
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(checkpoint_step) else {
            continue;
        };
        let path = entry.path();
        if path.is_dir() && is_complete(&path) {
            found.push(Checkpoint { step, path });
        }
    }
    found.sort_by_key(|c| c.step);
    Ok(found)
}

/// The checkpoint to resume from: none for `ResumeFrom::No`, the newest complete one in
/// `output_dir` for `Latest` (an error if there is none), or the named directory, which must be
/// a complete checkpoint.
pub fn find_checkpoint(output_dir: &Path, resume: &ResumeFrom) -> Result<Option<PathBuf>> {
    match resume {
        ResumeFrom::No => Ok(None),
        ResumeFrom::Latest => {
            let latest = if output_dir.is_dir() {
                list_checkpoints(output_dir)?.pop()
            } else {
                None
            };
            match latest {
                Some(c) => Ok(Some(c.path)),
                None => bail!(
                    "{}: resume_from_checkpoint: true, but output_dir holds no complete \
                     {CHECKPOINT_PREFIX}-N directory",
                    output_dir.display()
                ),
            }
        }
        ResumeFrom::Path(path) => {
            ensure!(
                path.is_dir(),
                "{}: resume_from_checkpoint: no such checkpoint directory",
                path.display()
            );
            ensure!(
                is_complete(path),
                "{}: resume_from_checkpoint: incomplete checkpoint (no {TRAINER_STATE_NAME})",
                path.display()
            );
            Ok(Some(path.clone()))
        }
    }
}

/// How many checkpoints to keep when saving: transformers' `save_total_limit` (None or 0 keeps
/// all) and the best checkpoint so far, which is kept on top of the newest ones.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention<'a> {
    pub save_total_limit: Option<u64>,
    pub best_checkpoint: Option<&'a Path>,
}

/// Saves the checkpoint of optimizer step `step` as `output_dir/checkpoint-{step}`: `write` fills
/// a temporary directory `.checkpoint-{step}.…tmp` (and must write `trainer_state.json` there),
/// which is fsynced and renamed into place; then older checkpoints are rotated out per
/// `retention`. On error nothing named `checkpoint-{step}` is left half-written, and the
/// temporary is gone.
pub fn save_checkpoint(
    output_dir: &Path,
    step: u64,
    retention: Retention,
    write: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let target = output_dir.join(format!("{CHECKPOINT_PREFIX}-{step}"));
    let tmp = atomic::temp_path(&target, "tmp");
    let staged = stage(&tmp, write).and_then(|()| atomic::replace_dir(&tmp, &target));
    if staged.is_err() {
        // Best effort: the temporary may be partly written or absent; the write error matters.
        let _ = fs::remove_dir_all(&tmp);
    }
    staged.with_context(|| format!("{}: cannot save checkpoint", target.display()))?;
    rotate_checkpoints(output_dir, retention)?;
    Ok(target)
}

/// Creates `tmp`, lets `write` fill it, checks it is complete and fsyncs everything in it.
fn stage(tmp: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    fs::create_dir(tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    write(tmp)?;
    ensure!(
        is_complete(tmp),
        "the checkpoint writer wrote no {TRAINER_STATE_NAME}"
    );
    atomic::sync_tree(tmp)
}

/// Deletes the oldest checkpoints until `save_total_limit` remain, never the newest (needed to
/// resume) nor the best one, as transformers' `rotate_checkpoints`.
pub fn rotate_checkpoints(output_dir: &Path, retention: Retention) -> Result<()> {
    let limit = match retention.save_total_limit {
        Some(limit) if limit > 0 => limit as usize,
        _ => return Ok(()),
    };
    let checkpoints = list_checkpoints(output_dir)?;
    let newest = match checkpoints.last() {
        Some(c) if checkpoints.len() > limit => c.path.clone(),
        _ => return Ok(()),
    };
    let mut protected = vec![newest];
    if let Some(best) = retention
        .best_checkpoint
        .and_then(|b| checkpoints.iter().find(|c| same_dir(&c.path, b)))
    {
        if !protected.contains(&best.path) {
            protected.push(best.path.clone());
        }
    }
    let keep = limit.max(protected.len());
    let mut remaining = checkpoints.len();
    for c in &checkpoints {
        if remaining <= keep {
            break;
        }
        if !protected.contains(&c.path) {
            fs::remove_dir_all(&c.path)
                .with_context(|| format!("{}: cannot delete old checkpoint", c.path.display()))?;
            remaining -= 1;
        }
    }
    Ok(())
}

/// Whether two paths name the same directory (the best checkpoint may be recorded relative or
/// absolute).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}
