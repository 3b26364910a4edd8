//! A preference run's part of the SFT loop (`stage: dpo`, `kto` and `rm`): the objective and
//! the reference set up before the first step, one optimizer step's gradients over a window of
//! items (a DPO or reward-model pair, or a KTO response with its mismatched KL response: two rows
//! each), and the evaluation.

use std::path::Path;

use anyhow::{bail, Result};

use super::rows::Rows;
use super::{epoch_order, finish_step, Event};
use crate::data::Row;
use crate::train::config::{SftConfig, Stage};
use crate::train::dpo::kto::{self, KtoLoss};
use crate::train::dpo::{self, loss::PreferenceLoss, Layout, Metrics, Reference};
use crate::train::dropout;
use crate::train::model::TrainModel;
use crate::train::reward;

/// What a preference run optimizes.
pub(super) enum Objective {
    /// `stage: dpo`: pairs, `pref_loss`.
    Pairs(PreferenceLoss),
    /// `stage: kto`: tagged responses.
    Kto(KtoLoss),
    /// `stage: rm`: pairs scored by the value head.
    Reward,
}

impl Objective {
    fn uses_reference(&self) -> bool {
        match self {
            Objective::Pairs(settings) => settings.loss.uses_reference(),
            Objective::Kto(_) => true,
            Objective::Reward => false,
        }
    }
}

/// A preference run's objective and its reference.
pub(super) struct Preference {
    pub objective: Objective,
    pub reference: Reference,
}

/// The run's objective and reference. The reference is the model as the run first started:
/// computed now (the training items in the first epoch's micro-batches), or kept by the
/// checkpoint the run resumes from. None for the stages that learn from tokens (sft, pt).
pub(super) fn start(
    config: &SftConfig,
    model: &TrainModel,
    rows: &Rows,
    resume: Option<&Path>,
    on: &mut dyn FnMut(Event),
) -> Result<Option<Preference>> {
    let objective = match config.method.stage {
        Stage::Dpo => Objective::Pairs(dpo::settings(config)),
        Stage::Kto => Objective::Kto(kto_settings(config)),
        Stage::Rm => Objective::Reward,
        Stage::Sft | Stage::Pt => return Ok(None),
    };
    if let Some(dir) = resume {
        let reference = Reference::load(dir, rows.train.len(), rows.val.len())?;
        if objective.uses_reference() && reference.train.is_empty() {
            bail!(
                "{}: the checkpoint keeps no reference log-probabilities (its run used a \
                 reference-free pref_loss, orpo or simpo); resume it with that pref_loss",
                dir.display()
            );
        }
        return Ok(Some(Preference {
            objective,
            reference,
        }));
    }
    if !objective.uses_reference() {
        return Ok(Some(Preference {
            objective,
            reference: Reference::default(),
        }));
    }
    on(Event::Note(&format!(
        "reference: the starting model's log-probabilities of {} responses, computed once",
        rows.train.len() + rows.val.len()
    )));
    let first_epoch = epoch_order(rows.train.len() / 2, config.train.seed, 0);
    let batches = (
        &first_epoch[..],
        config.train.per_device_train_batch_size as usize,
        config.eval.per_device_eval_batch_size as usize,
    );
    let mut shown = 0;
    let mut progress = |done: usize, total: usize| {
        // A line at every tenth: a large dataset takes minutes.
        if done * 10 / total > shown {
            shown = done * 10 / total;
            on(Event::Note(&format!("reference: {done}/{total} responses")));
        }
    };
    let form = |s: dpo::loss::SequenceLogp| match &objective {
        Objective::Pairs(settings) => settings.logp(s),
        Objective::Kto(_) | Objective::Reward => s.sum,
    };
    let layout = match &objective {
        Objective::Pairs(_) | Objective::Reward => Layout::Together,
        Objective::Kto(_) => Layout::Apart,
    };
    let items = (&rows.train[..], &rows.val[..]);
    let reference = Reference::compute(model, (&form, layout), items, batches, &mut progress)?;
    Ok(Some(Preference {
        objective,
        reference,
    }))
}

fn kto_settings(config: &SftConfig) -> KtoLoss {
    let m = &config.method;
    KtoLoss {
        beta: m.pref_beta,
        desirable_weight: m.kto_chosen_weight,
        undesirable_weight: m.kto_rejected_weight,
        ftx: m.pref_ftx,
    }
}

/// The reference values of `items` (two rows each) among `reference` (empty when there is none).
fn item_references(reference: &[f64], items: &[usize]) -> Vec<f64> {
    match reference.is_empty() {
        true => Vec::new(),
        false => items
            .iter()
            .flat_map(|&i| [reference[2 * i], reference[2 * i + 1]])
            .collect(),
    }
}

/// [`train_step`](super::train_step) for a window of preference items (`window_rows[k]` holds
/// the rows of the items `window_items[k]`). DPO weighs each pair's loss 1 / (pairs in the
/// window), so accumulation equals one big batch; KTO's and a reward model's loss is a mean per
/// micro-batch (KTO's reference point is one; LLaMA-Factory's `PairwiseTrainer` averages), each
/// weighing 1 / (micro-batches in the window), as transformers' accumulation divides. Returns
/// the loss, the gradient norm and the metrics.
pub(super) fn step(
    model: &mut TrainModel,
    (window_rows, window_items): (&[Vec<&Row>], &[&[usize]]),
    (preference, desirable): (&Preference, &[bool]),
    config: &SftConfig,
    step: u64,
) -> Result<(f64, f32, Metrics)> {
    let pairs: usize = window_items.iter().map(|items| items.len()).sum();
    model.zero_grad();
    let mut metrics = Metrics::default();
    let mut reward_loss = 0.0;
    for (micro, (rows, items)) in window_rows.iter().zip(window_items).enumerate() {
        let refs = item_references(&preference.reference.train, items);
        let seed = dropout::stream(config.train.seed, step * 1024 + micro as u64);
        match &preference.objective {
            Objective::Pairs(settings) => {
                let scale = 1.0 / pairs as f32;
                for pair in dpo::pairs_forward_backward(model, rows, &refs, settings, scale, seed)?
                {
                    metrics.add(&pair);
                }
            }
            Objective::Kto(settings) => {
                let tags: Vec<bool> = items.iter().map(|&i| desirable[i]).collect();
                let scale = (1.0 / window_rows.len() as f32, seed, true);
                let m = kto::micro_batch(model, rows, &tags, &refs, settings, scale)?;
                metrics.merge(&m);
            }
            Objective::Reward => {
                let scale = 1.0 / window_rows.len() as f32;
                let pairs = reward::pairs_forward_backward(model, rows, scale, seed)?;
                for p in &pairs {
                    metrics.add_ranked(p.loss(), p.chosen > p.rejected);
                }
                let mean = pairs.iter().map(|p| p.loss()).sum::<f64>() / pairs.len() as f64;
                reward_loss += mean / window_rows.len() as f64;
            }
        }
    }
    let loss = match preference.objective {
        Objective::Reward => reward_loss,
        _ => metrics.mean_loss(),
    };
    let norm = finish_step(model, loss, config, step)?;
    Ok((loss, norm, metrics))
}

/// The validation items' loss and metrics, `per_device_eval_batch_size` items at a time.
pub(super) fn evaluate(
    model: &mut TrainModel,
    rows: &Rows,
    preference: &Preference,
    config: &SftConfig,
) -> Result<Metrics> {
    let batch = config.eval.per_device_eval_batch_size as usize;
    let reference = &preference.reference.val;
    match &preference.objective {
        Objective::Pairs(settings) => dpo::evaluate(model, &rows.val, reference, settings, batch),
        Objective::Reward => {
            let mut metrics = Metrics::default();
            for p in reward::scores(model, &rows.val, batch)? {
                metrics.add_ranked(p.loss(), p.chosen > p.rejected);
            }
            Ok(metrics)
        }
        Objective::Kto(settings) => {
            let mut metrics = Metrics::default();
            let items: Vec<usize> = (0..rows.val.len() / 2).collect();
            for chunk in items.chunks(batch.max(1)) {
                let chunk_rows: Vec<&Row> = chunk
                    .iter()
                    .flat_map(|&i| &rows.val[2 * i..2 * i + 2])
                    .collect();
                let tags: Vec<bool> = chunk.iter().map(|&i| rows.val_desirable[i]).collect();
                let refs = item_references(reference, chunk);
                let no_gradient = (1.0, 0, false);
                metrics.merge(&kto::micro_batch(
                    model,
                    &chunk_rows,
                    &tags,
                    &refs,
                    settings,
                    no_gradient,
                )?);
            }
            Ok(metrics)
        }
    }
}
