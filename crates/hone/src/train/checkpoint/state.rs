//! transformers' `trainer_state.json` (`TrainerState`): the loop's progress saved in every
//! checkpoint and at the end of training, with transformers' field names and layout (keys
//! sorted, two-space indent), so HF tooling reads Hone's and Hone resumes from HF's.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::io::atomic;

/// The file name transformers uses (`TRAINER_STATE_NAME`).
pub const TRAINER_STATE_NAME: &str = "trainer_state.json";

/// transformers' `TrainerState`. Fields are declared in sorted order because transformers
/// writes the file with `sort_keys=True`; absent optional fields are written as null, as there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainerState {
    pub best_global_step: Option<u64>,
    pub best_metric: Option<f64>,
    /// The best checkpoint's directory, as `output_dir/checkpoint-N`.
    pub best_model_checkpoint: Option<String>,
    /// Epochs done, the fraction being the share of the current epoch.
    pub epoch: f64,
    pub eval_steps: u64,
    /// Optimizer steps done.
    pub global_step: u64,
    pub is_hyper_param_search: bool,
    pub is_local_process_zero: bool,
    pub is_world_process_zero: bool,
    pub log_history: Vec<LogHistoryEntry>,
    pub logging_steps: u64,
    pub max_steps: u64,
    pub num_input_tokens_seen: u64,
    pub num_train_epochs: u64,
    pub save_steps: u64,
    /// Saved states of transformers callbacks, kept as read so a resumed HF checkpoint keeps them.
    pub stateful_callbacks: Value,
    pub total_flos: f64,
    pub train_batch_size: Option<u64>,
    pub trial_name: Option<String>,
    pub trial_params: Option<Value>,
}

impl Default for TrainerState {
    /// transformers' defaults.
    fn default() -> Self {
        TrainerState {
            best_global_step: None,
            best_metric: None,
            best_model_checkpoint: None,
            epoch: 0.0,
            eval_steps: 500,
            global_step: 0,
            is_hyper_param_search: false,
            is_local_process_zero: true,
            is_world_process_zero: true,
            log_history: Vec::new(),
            logging_steps: 500,
            max_steps: 0,
            num_input_tokens_seen: 0,
            num_train_epochs: 0,
            save_steps: 500,
            stateful_callbacks: Value::Object(Default::default()),
            total_flos: 0.0,
            train_batch_size: None,
            trial_name: None,
            trial_params: None,
        }
    }
}

/// One `log_history` record: a training log (loss, grad_norm, learning_rate), an evaluation
/// (eval_*), or the end-of-training summary (train_*), each stamped with epoch and step. Only the
/// present metrics are written, as transformers writes only the ones it logged.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LogHistoryEntry {
    pub epoch: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_runtime: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_samples_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub eval_steps_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grad_norm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub learning_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub num_input_tokens_seen: Option<u64>,
    pub step: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub total_flos: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub train_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub train_runtime: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub train_samples_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub train_steps_per_second: Option<f64>,
    /// A stage's own metrics, under TRL's names (`rewards/chosen`, `eval_logps/rejected`, …).
    #[serde(flatten)]
    pub metrics: BTreeMap<String, f64>,
}

impl TrainerState {
    /// Reads `dir/trainer_state.json`.
    pub fn load(dir: &Path) -> Result<TrainerState> {
        let path = dir.join(TRAINER_STATE_NAME);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a trainer state", path.display()))
    }

    /// Writes `dir/trainer_state.json` atomically, formatted as transformers formats it.
    pub fn save(&self, dir: &Path) -> Result<()> {
        atomic::write_json(&dir.join(TRAINER_STATE_NAME), self)
    }
}
