//! A checkpoint's contents and how a run resumes from one, bit for bit.
//!
//! `checkpoint-N/` holds `trainable.safetensors` (every trainable tensor, f32, Hone's names),
//! `optimizer.safetensors` + `optimizer.json` (AdamW's moments and step counts), `progress.json`
//! (the data cursor and loop counters below), HF's `trainer_state.json`, and, for LoRA runs, the
//! PEFT adapter files so a checkpoint is usable as an adapter; preference runs add the reference's
//! log-probabilities (`reference_logps.json`), reward models their `value_head.safetensors`, AdaLoRA
//! runs their rank allocator's masks and sensitivities (`rank_allocator.safetensors`). There is no random-generator state
//! to save: the data order of an epoch and every dropout mask are pure functions of the seed and
//! these counters, so a resumed run draws exactly what the uninterrupted run drew.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::adapters::{write_adapter, PeftConfig};
use crate::io::{atomic, safetensors as st};
use crate::train::checkpoint::TrainerState;
use crate::train::dpo::{self, Reference};
use crate::train::model::TrainModel;
use crate::train::optim::AdamW;

/// Where the loop is: enough, with the seed, to continue exactly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps taken.
    pub global_step: u64,
    /// The epoch in progress and the next accumulation window within it.
    pub epoch: u64,
    pub window: u64,
    /// Input tokens (padding excluded) and labelled tokens seen.
    pub tokens_seen: u64,
    /// Loss summed over the steps since the last log line, and their count.
    pub loss_since_log: f64,
    pub steps_since_log: u64,
    /// Lowest validation loss and the evaluations since it improved (early stopping).
    pub best_eval_loss: Option<f64>,
    pub evals_without_improvement: u64,
    /// Seconds of training before this process started (for throughput and ETA).
    pub elapsed_before: f64,
    /// Preference runs: the pairs' metrics since the last log line.
    #[serde(default)]
    pub pairs_since_log: dpo::Metrics,
}

const TRAINABLE_FILE: &str = "trainable.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const OPTIMIZER_STATE: &str = "optimizer.json";
const PROGRESS_FILE: &str = "progress.json";
const ALLOCATOR_FILE: &str = "rank_allocator.safetensors";

/// What to write into a checkpoint directory.
pub struct Snapshot<'a> {
    pub model: &'a mut TrainModel,
    pub optimizer: &'a AdamW,
    pub progress: &'a Progress,
    pub trainer_state: &'a TrainerState,
    pub adapter: Option<&'a PeftConfig>,
    /// Preference runs: the reference's log-probabilities.
    pub reference: Option<&'a Reference>,
}

/// Fills checkpoint directory `dir` (a fresh temporary that the caller renames into place).
pub fn write_checkpoint(dir: &Path, s: Snapshot) -> Result<()> {
    if let Some(config) = s.adapter {
        write_adapter(dir, &s.model.to_adapter(config.clone()), None)?;
    }
    if let Some(head) = &s.model.value_head {
        head.save(dir)?;
    }
    let params = s.model.params_mut();
    let shapes: Vec<st::F32Tensor> = params
        .iter()
        .map(|p| (p.name.clone(), vec![p.value.len()], &*p.value))
        .collect();
    st::write_f32(&dir.join(TRAINABLE_FILE), &shapes, HashMap::new())?;
    drop(shapes);
    drop(params);
    write_optimizer(dir, s.optimizer)?;
    if s.model.rank_allocator.is_some() {
        let state = s.model.allocator_state();
        let tensors: Vec<st::F32Tensor> = state
            .iter()
            .map(|(name, values)| (name.clone(), vec![values.len()], &values[..]))
            .collect();
        st::write_f32(&dir.join(ALLOCATOR_FILE), &tensors, HashMap::new())?;
    }
    atomic::write_json(&dir.join(PROGRESS_FILE), s.progress)?;
    if let Some(reference) = s.reference {
        reference.save(dir)?;
    }
    s.trainer_state.save(dir)
}

/// Restores the trainable tensors and the optimizer from `dir`; returns the loop's progress and
/// the trainer state.
pub fn restore_checkpoint(
    dir: &Path,
    model: &mut TrainModel,
    optimizer: &mut AdamW,
) -> Result<(Progress, TrainerState)> {
    let mut saved = st::read_f32_values(&dir.join(TRAINABLE_FILE))?;
    for p in model.params_mut() {
        let values = saved.remove(&p.name).with_context(|| {
            format!(
                "{}: no tensor {} (was the checkpoint made with another finetuning_type or model?)",
                dir.display(),
                p.name
            )
        })?;
        ensure!(
            values.len() == p.value.len(),
            "{}: tensor {} has {} values, the model {}",
            dir.display(),
            p.name,
            values.len(),
            p.value.len()
        );
        p.value.copy_from_slice(&values);
    }
    if let Some(extra) = saved.keys().next() {
        anyhow::bail!(
            "{}: tensor {extra} does not train in this run: the checkpoint is from a different configuration",
            dir.display()
        );
    }
    *optimizer = read_optimizer(dir)?;
    if model.rank_allocator.is_some() {
        let path = dir.join(ALLOCATOR_FILE);
        model
            .restore_allocator_state(st::read_f32_values(&path)?)
            .with_context(|| path.display().to_string())?;
    }
    let progress = read_json(&dir.join(PROGRESS_FILE))?;
    Ok((progress, TrainerState::load(dir)?))
}

/// AdamW's moments go to safetensors (they are as large as the trainable tensors); its groups,
/// hyper-parameters and step counts to JSON.
fn write_optimizer(dir: &Path, opt: &AdamW) -> Result<()> {
    let mut tensors = Vec::new();
    let mut skeleton = opt.clone();
    for group in &mut skeleton.groups {
        for p in &mut group.params {
            p.exp_avg.clear();
            p.exp_avg_sq.clear();
        }
    }
    for p in opt.groups.iter().flat_map(|g| &g.params) {
        tensors.push((
            format!("exp_avg.{}", p.name),
            vec![p.exp_avg.len()],
            &p.exp_avg[..],
        ));
        tensors.push((
            format!("exp_avg_sq.{}", p.name),
            vec![p.exp_avg_sq.len()],
            &p.exp_avg_sq[..],
        ));
    }
    st::write_f32(&dir.join(OPTIMIZER_FILE), &tensors, HashMap::new())?;
    atomic::write_json(&dir.join(OPTIMIZER_STATE), &skeleton)
}

fn read_optimizer(dir: &Path) -> Result<AdamW> {
    let mut opt: AdamW = read_json(&dir.join(OPTIMIZER_STATE))?;
    let mut moments = st::read_f32_values(&dir.join(OPTIMIZER_FILE))?;
    for p in opt.groups.iter_mut().flat_map(|g| &mut g.params) {
        let mut take = |kind: &str| {
            moments
                .remove(&format!("{kind}.{}", p.name))
                .with_context(|| {
                    format!(
                        "{}: no {kind} for {}",
                        dir.join(OPTIMIZER_FILE).display(),
                        p.name
                    )
                })
        };
        p.exp_avg = take("exp_avg")?;
        p.exp_avg_sq = take("exp_avg_sq")?;
    }
    Ok(opt)
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: malformed", path.display()))
}
