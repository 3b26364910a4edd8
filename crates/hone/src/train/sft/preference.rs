//! A preference run's part of the SFT loop (`stage: dpo`): the loss settings and the reference
//! set up before the first step, and one optimizer step's gradients over a window of pairs.

use std::path::Path;

use anyhow::{bail, Result};

use super::rows::Rows;
use super::{epoch_order, finish_step, Event};
use crate::data::Row;
use crate::train::config::SftConfig;
use crate::train::dpo::{self, loss::PreferenceLoss, Reference};
use crate::train::dropout;
use crate::train::model::TrainModel;

/// A preference run's loss and its reference (`stage: dpo`).
pub(super) struct Preference {
    pub settings: PreferenceLoss,
    pub reference: Reference,
}

/// A preference run's loss and reference. The reference is the model as the run first started:
/// computed now (the training pairs in the first epoch's micro-batches), or kept by the
/// checkpoint the run resumes from.
pub(super) fn start(
    config: &SftConfig,
    model: &TrainModel,
    rows: &Rows,
    resume: Option<&Path>,
    on: &mut dyn FnMut(Event),
) -> Result<Preference> {
    let settings = dpo::settings(config);
    if let Some(dir) = resume {
        let reference = Reference::load(dir, rows.train.len(), rows.val.len())?;
        if settings.loss.uses_reference() && reference.train.is_empty() {
            bail!(
                "{}: the checkpoint keeps no reference log-probabilities (its run used a \
                 reference-free pref_loss, orpo or simpo); resume it with that pref_loss",
                dir.display()
            );
        }
        return Ok(Preference {
            settings,
            reference,
        });
    }
    if settings.loss.uses_reference() {
        on(Event::Note(&format!(
            "reference: the starting model's log-probabilities of {} responses, computed once",
            rows.train.len() + rows.val.len()
        )));
    }
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
    let pairs = (&rows.train[..], &rows.val[..]);
    let reference = Reference::compute(model, &settings, pairs, batches, &mut progress)?;
    Ok(Preference {
        settings,
        reference,
    })
}

/// [`train_step`] for a window of preference pairs (`window_rows[k]` holds the chosen and rejected
/// rows of the pairs `window_items[k]`): each pair's loss weighs 1 / (pairs in the window), so
/// accumulation equals one big batch. Returns the mean loss, the gradient norm and the metrics.
pub(super) fn step(
    model: &mut TrainModel,
    window_rows: &[Vec<&Row>],
    window_items: &[&[usize]],
    preference: &Preference,
    config: &SftConfig,
    step: u64,
) -> Result<(f64, f32, dpo::Metrics)> {
    let pairs: usize = window_items.iter().map(|items| items.len()).sum();
    model.zero_grad();
    let mut metrics = dpo::Metrics::default();
    let reference = &preference.reference.train;
    for (micro, (rows, items)) in window_rows.iter().zip(window_items).enumerate() {
        let refs: Vec<f64> = match reference.is_empty() {
            true => Vec::new(),
            false => items
                .iter()
                .flat_map(|&i| [reference[2 * i], reference[2 * i + 1]])
                .collect(),
        };
        let seed = dropout::stream(config.train.seed, step * 1024 + micro as u64);
        let scale = 1.0 / pairs as f32;
        for pair in
            dpo::pairs_forward_backward(model, rows, &refs, &preference.settings, scale, seed)?
        {
            metrics.add(&pair);
        }
    }
    let loss = metrics.mean_loss();
    let norm = finish_step(model, loss, config, step)?;
    Ok((loss, norm, metrics))
}
