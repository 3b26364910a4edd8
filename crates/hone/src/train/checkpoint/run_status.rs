//! `run_status.json`: whether the run in `output_dir` is going, finished, interrupted or failed,
//! and which process runs it, so that `hone board` (or a script) tells a live run from a dead one
//! without guessing from file times. Hone's own file: LLaMA-Factory writes none, and a run
//! without it is judged by its files instead (`all_results.json`, the log's age).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::io::atomic;

pub const RUN_STATUS_NAME: &str = "run_status.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Finished,
    /// Stopped by Ctrl-C (or `hone board`'s Stop) after saving a checkpoint, or killed.
    Interrupted,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub status: RunState,
    /// The `hone train` process.
    pub pid: u32,
    /// Unix seconds.
    pub started: f64,
    pub updated: f64,
    /// Why it failed, or "stopped early".
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
}

impl RunStatus {
    /// A run starting now in this process; written to `dir` at once.
    pub fn begin(dir: &Path) -> Result<RunStatus> {
        let now = unix_now();
        let status = RunStatus {
            status: RunState::Running,
            pid: std::process::id(),
            started: now,
            updated: now,
            message: None,
        };
        status.save(dir)?;
        Ok(status)
    }

    /// Records how the run ended.
    pub fn end(mut self, dir: &Path, state: RunState, message: Option<String>) -> Result<()> {
        self.status = state;
        self.updated = unix_now();
        self.message = message;
        self.save(dir)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        atomic::write_json(&dir.join(RUN_STATUS_NAME), self)
    }

    /// `dir/run_status.json`, or `None` when the run has none.
    pub fn load(dir: &Path) -> Result<Option<RunStatus>> {
        let path = dir.join(RUN_STATUS_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
        };
        let status = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a run status", path.display()))?;
        Ok(Some(status))
    }

    /// The state as it is now: a run still marked running whose process is gone was killed.
    pub fn current(&self) -> RunState {
        match self.status {
            RunState::Running if !atomic::process_runs(self.pid) => RunState::Interrupted,
            state => state,
        }
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_running_then_ends_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RunStatus::load(dir.path()).unwrap(), None);
        let status = RunStatus::begin(dir.path()).unwrap();
        let read = RunStatus::load(dir.path()).unwrap().unwrap();
        assert_eq!(read.current(), RunState::Running);
        assert_eq!(read.pid, std::process::id());
        status
            .end(dir.path(), RunState::Failed, Some("loss is NaN".into()))
            .unwrap();
        let read = RunStatus::load(dir.path()).unwrap().unwrap();
        assert_eq!(read.current(), RunState::Failed);
        assert_eq!(read.message.as_deref(), Some("loss is NaN"));
    }

    #[test]
    fn a_running_mark_of_a_dead_process_reads_as_interrupted() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let status = RunStatus {
            status: RunState::Running,
            pid,
            started: 0.0,
            updated: 0.0,
            message: None,
        };
        assert_eq!(status.current(), RunState::Interrupted);
    }
}
