//! The output directory of a finished run, laid out as LLaMA-Factory / the HF Trainer leave it:
//! the PEFT adapter (LoRA) or a complete HF checkpoint (full and freeze), a reward model's
//! `value_head.safetensors`, the tokenizer files, `trainer_state.json` and `train_results.json`;
//! and, written when the run starts, the resolved config (`training_args.yaml`) and Hone's
//! record of the data read (`dataset_record.json`).

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::rows::Rows;
use crate::adapters::{write_adapter, PeftConfig};
use crate::data::record;
use crate::export::hf::{write_hf_checkpoint, HfWriteOptions, SaveDtype};
use crate::io::atomic;
use crate::tokenizer::Tokenizer;
use crate::train::checkpoint::TrainerState;
use crate::train::config::SftConfig;
use crate::train::model::TrainModel;
use crate::train::reward::PairScores;

pub struct Final<'a> {
    pub output_dir: &'a Path,
    pub model: &'a mut TrainModel,
    pub tokenizer: &'a Tokenizer,
    pub adapter: Option<&'a PeftConfig>,
    pub trainer_state: &'a TrainerState,
    pub train_loss: f64,
    pub seconds: f64,
    pub train_examples: usize,
    /// The base model's directory when its checkpoint ships modeling code (a remote-code family),
    /// whose `*.py` a full or freeze run's model needs beside it.
    pub modeling_code: Option<&'a Path>,
}

/// The resolved config (`training_args.yaml`), written when the run starts so that a run in
/// progress shows what it runs.
pub fn write_run_config(dir: &Path, config: &SftConfig) -> Result<()> {
    atomic::write_text(&dir.join("training_args.yaml"), &config.to_yaml())
}

pub fn write_final(f: &Final) -> Result<()> {
    let dir = f.output_dir;
    match f.adapter {
        Some(config) => write_adapter(dir, &f.model.to_adapter(config.clone()), Some(f.tokenizer))?,
        None => write_model(dir, f.model, f.tokenizer, f.modeling_code)?,
    }
    if let Some(head) = &f.model.value_head {
        head.save(dir)?;
    }
    f.trainer_state.save(dir)?;
    let steps = f.trainer_state.global_step as f64;
    let epochs = f.trainer_state.epoch;
    let results = json!({
        "epoch": epochs,
        "train_loss": f.train_loss,
        "train_runtime": round4(f.seconds),
        "train_samples_per_second": round4(f.train_examples as f64 * epochs.max(1.0) / f.seconds.max(1e-9)),
        "train_steps_per_second": round4(steps / f.seconds.max(1e-9)),
    });
    let text = serde_json::to_string_pretty(&results)? + "\n";
    atomic::write_text(&dir.join("train_results.json"), &text)?;
    atomic::write_text(&dir.join("all_results.json"), &text)
}

/// A reward model's `do_predict` files, as LLaMA-Factory writes them: the validation pairs'
/// scores in `generated_predictions.jsonl` (`{"chosen": 1.23, "rejected": -0.45}`, two
/// decimals) and their loss and accuracy in `predict_results.json`.
pub fn write_reward_predictions(
    dir: &Path,
    scores: &[PairScores],
    seconds: f64,
    batches: usize,
) -> Result<()> {
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let lines: Vec<String> = scores
        .iter()
        .map(|s| json!({"chosen": round2(s.chosen), "rejected": round2(s.rejected)}).to_string())
        .collect();
    atomic::write_text(
        &dir.join("generated_predictions.jsonl"),
        &(lines.join("\n") + "\n"),
    )?;
    let n = scores.len().max(1) as f64;
    let loss = scores.iter().map(|s| s.loss()).sum::<f64>() / n;
    let correct = scores.iter().filter(|s| s.chosen > s.rejected).count() as f64 / n;
    let seconds = seconds.max(1e-9);
    let results = json!({
        "predict_accuracy": correct,
        "predict_loss": loss,
        "predict_runtime": round4(seconds),
        "predict_samples_per_second": (scores.len() as f64 / seconds * 1000.0).round() / 1000.0,
        "predict_steps_per_second": (batches as f64 / seconds * 1000.0).round() / 1000.0,
    });
    atomic::write_json(&dir.join("predict_results.json"), &results)
}

/// `dataset_record.json`: every dataset file's SHA-256, size and rows read and used, and the
/// rows of the training and validation sets.
pub fn write_dataset_record(dir: &Path, rows: &Rows) -> Result<()> {
    let record = record::record(&rows.files, rows.train.len(), rows.val.len())?;
    let text = serde_json::to_string_pretty(&record)? + "\n";
    atomic::write_text(&dir.join(record::DATASET_RECORD), &text)
}

/// A full or freeze run's weights as an HF checkpoint in `dir`, which already holds the run's
/// logs and checkpoints: written complete into a staging directory inside it, then moved in file
/// by file.
fn write_model(
    dir: &Path,
    model: &TrainModel,
    tokenizer: &Tokenizer,
    modeling_code: Option<&Path>,
) -> Result<()> {
    let staging = atomic::temp_path(&dir.join("model"), "tmp");
    let options = HfWriteOptions {
        modeling_code: modeling_code.map(Path::to_path_buf),
        ..HfWriteOptions::default()
    };
    write_hf_checkpoint(
        &staging,
        model.config(),
        model.hf_tensors(false),
        tokenizer,
        SaveDtype::F32,
        &options,
    )?;
    for entry in
        fs::read_dir(&staging).with_context(|| format!("cannot list {}", staging.display()))?
    {
        let from = entry?.path();
        let to = dir.join(from.file_name().expect("a directory entry has a name"));
        fs::rename(&from, &to)
            .with_context(|| format!("cannot move {} into place", to.display()))?;
    }
    fs::remove_dir(&staging).with_context(|| format!("cannot remove {}", staging.display()))
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}
