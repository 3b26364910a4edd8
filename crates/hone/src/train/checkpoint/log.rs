//! LLaMA-Factory's `trainer_log.jsonl`: one JSON record per log event, appended to `output_dir`
//! as `LogCallback.on_log` writes it, so LLaMA-Board and scripts that follow that file read
//! Hone's runs. Hone adds `grad_norm` to the record.

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::io::atomic;

/// LLaMA-Factory's `TRAINER_LOG`.
pub const TRAINER_LOG_NAME: &str = "trainer_log.jsonl";

/// One line of `trainer_log.jsonl`, fields in LLaMA-Factory's order; absent metrics are left
/// out, as LLaMA-Factory drops its None values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainerLogRecord {
    pub current_steps: u64,
    pub total_steps: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_loss: Option<f64>,
    /// Preference runs: `rewards/accuracies` (LLaMA-Factory's name for it here).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub lr: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub epoch: Option<f64>,
    /// current_steps / total_steps in percent, rounded to 2 decimals (100 when total is 0).
    pub percentage: f64,
    /// "H:MM:SS" since training started.
    pub elapsed_time: String,
    /// "H:MM:SS" left at the average pace so far.
    pub remaining_time: String,
    /// Input tokens per second since training started.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub throughput: Option<f64>,
    /// Input tokens seen so far.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total_tokens: Option<u64>,
}

impl TrainerLogRecord {
    /// A record with LLaMA-Factory's progress fields for step `current` of `total`, `elapsed_s`
    /// seconds into training, and `tokens` input tokens seen (throughput and total_tokens are
    /// written only once tokens were seen, as there). Metrics are filled in by the caller.
    pub fn progress(current: u64, total: u64, elapsed_s: f64, tokens: u64) -> Self {
        let per_step = if current == 0 {
            0.0
        } else {
            elapsed_s / current as f64
        };
        let percentage = if total == 0 {
            100.0
        } else {
            round2(current as f64 / total as f64 * 100.0)
        };
        let seen = tokens > 0 && elapsed_s > 0.0;
        TrainerLogRecord {
            current_steps: current,
            total_steps: total,
            percentage,
            elapsed_time: hms(elapsed_s),
            remaining_time: hms(total.saturating_sub(current) as f64 * per_step),
            throughput: seen.then(|| round2(tokens as f64 / elapsed_s)),
            total_tokens: (tokens > 0).then_some(tokens),
            ..Default::default()
        }
    }
}

/// Rounded to 2 decimals, as LLaMA-Factory rounds its logged values.
pub(crate) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Whole seconds as Python's `str(timedelta(seconds=int(s)))`: "H:MM:SS", and "D day(s), H:MM:SS"
/// from a day on.
pub fn hms(seconds: f64) -> String {
    let total = seconds.max(0.0) as u64;
    let (days, rest) = (total / 86_400, total % 86_400);
    let clock = format!("{}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    match days {
        0 => clock,
        1 => format!("1 day, {clock}"),
        d => format!("{d} days, {clock}"),
    }
}

/// Appends `record` to `output_dir/trainer_log.jsonl` as one line, written in one call and
/// flushed, so a reader following the file never sees half a record from a live run.
pub fn append_trainer_log(output_dir: &Path, record: &TrainerLogRecord) -> Result<()> {
    atomic::append_json_lines(
        &output_dir.join(TRAINER_LOG_NAME),
        std::slice::from_ref(record),
    )
}
