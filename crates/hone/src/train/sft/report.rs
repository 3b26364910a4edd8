//! Where a run records its progress as it goes: each log line in LLaMA-Factory's
//! `trainer_log.jsonl`, each entry in transformers' `log_history` (saved in
//! `trainer_state.json`), and, with `report_to: tensorboard`, the same entry's numbers in a
//! TensorBoard event file, as transformers' `TensorBoardCallback` logs them.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::train::checkpoint::tensorboard::{rewrite_logs, EventWriter};
use crate::train::checkpoint::{
    append_trainer_log, LogHistoryEntry, TrainerLogRecord, TrainerState,
};
use crate::train::config::SftConfig;

pub(super) struct RunLog {
    output_dir: PathBuf,
    tensorboard: Option<EventWriter>,
}

impl RunLog {
    /// The run's records in `output_dir`; the TensorBoard file is created now when asked for.
    pub fn open(config: &SftConfig, output_dir: &Path) -> Result<RunLog> {
        let tensorboard = match config.reports_to_tensorboard() {
            true => {
                let logging_dir = config.output.logging_dir.as_deref().map(Path::new);
                Some(EventWriter::create(output_dir, logging_dir)?)
            }
            false => None,
        };
        Ok(RunLog {
            output_dir: output_dir.to_path_buf(),
            tensorboard,
        })
    }

    /// The TensorBoard event file, when the run writes one.
    pub fn event_file(&self) -> Option<&Path> {
        self.tensorboard.as_ref().map(EventWriter::path)
    }

    /// Appends a line to `trainer_log.jsonl`.
    pub fn line(&self, record: &TrainerLogRecord) -> Result<()> {
        append_trainer_log(&self.output_dir, record)
    }

    /// Adds `entry` to the log history, and its numbers to TensorBoard at its step.
    pub fn entry(&mut self, state: &mut TrainerState, entry: LogHistoryEntry) -> Result<()> {
        if let Some(writer) = &mut self.tensorboard {
            if let serde_json::Value::Object(mut logs) = serde_json::to_value(&entry)? {
                logs.remove("step");
                writer.scalars(entry.step, &rewrite_logs(&logs))?;
            }
        }
        state.log_history.push(entry);
        Ok(())
    }
}
