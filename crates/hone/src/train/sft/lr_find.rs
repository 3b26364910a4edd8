//! `hone lr-find`: a learning-rate range test (fastai's `Learner.lr_find`) on the run a config
//! describes — the same model, trainable tensors, data order, batches and AdamW as `hone train`,
//! but the learning rate ramps exponentially from `start_lr` to `end_lr`, one optimizer step per
//! rate, with no schedule, evaluation or checkpoint.
//!
//! As fastai: step `i` of `steps` trains at `start · (end / start)^(i / steps)`; the recorded loss
//! is the debiased exponential average (β 0.98) of the steps' losses; the test stops once that
//! exceeds 4× its best (or the loss is not finite). Suggestions come from the points after the
//! first tenth and before the last five: `valley` (about half-way down the longest descent,
//! fastai's default), `steep` (the steepest fall per log-rate) and `minimum` (the lowest loss's
//! rate / 10). Nothing is saved to the model: the run ends with the test.

mod plot;

use anyhow::{bail, Result};
use serde::Serialize;

pub use plot::write_png;

use super::{clip, epoch_order, new_optimizer, rows, setup, window_gradients, Event};
use crate::data::{flatten, Batch, Row};
use crate::model;
use crate::train::config::{SftConfig, Stage};
use crate::train::model::TrainModel;

/// The range and length of a test.
#[derive(Clone, Copy, Debug)]
pub struct RangeTest {
    pub start_lr: f64,
    pub end_lr: f64,
    pub steps: usize,
}

/// What a test found (`lr_find.json`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Finding {
    pub lrs: Vec<f64>,
    pub raw_losses: Vec<f64>,
    pub smoothed_losses: Vec<f64>,
    pub suggestions: Suggestions,
    pub stopped_early: bool,
}

/// Suggested learning rates (None when too few points remain).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Suggestions {
    pub valley: Option<f64>,
    pub steep: Option<f64>,
    pub minimum: Option<f64>,
}

/// fastai's smoothing factor and divergence threshold.
const BETA: f64 = 0.98;
const DIVERGED: f64 = 4.0;

/// Runs the range test of `config`'s training run; `on` hears notes and a line per step.
pub fn range_test(
    config: &SftConfig,
    test: &RangeTest,
    on: &mut dyn FnMut(Event),
) -> Result<Finding> {
    if !matches!(config.method.stage, Stage::Sft | Stage::Pt) {
        bail!(
            "stage: {}: hone lr-find runs the token-loss stages (sft, pt)",
            config.method.stage.name()
        );
    }
    if !(test.start_lr > 0.0 && test.end_lr > test.start_lr && test.steps >= 6) {
        bail!(
            "the range needs 0 < start_lr < end_lr and at least 6 steps (got {} to {} over {})",
            test.start_lr,
            test.end_lr,
            test.steps
        );
    }
    let (_, _, tokenizer) = model::inspect(&config.model.model_name_or_path)?;
    let rows = rows::load_rows(config, &tokenizer)?;
    if rows.train.is_empty() {
        bail!("no training rows");
    }
    let mut base = setup::load_base(config)?;
    if let Some(note) = setup::choose_base_storage(config, &mut base)? {
        on(Event::Note(&note));
    }
    let (mut model, _) = setup::build_model(config, base)?;
    model.recompute = config.train.gradient_checkpointing;
    let mut optimizer = new_optimizer(config, &mut model)?;
    let windows = Windows::new(config, &rows.train);
    let (mut average, mut best) = (0.0, f64::INFINITY);
    let mut finding = Finding {
        lrs: Vec::new(),
        raw_losses: Vec::new(),
        smoothed_losses: Vec::new(),
        suggestions: Suggestions::default(),
        stopped_early: false,
    };
    on(Event::Start {
        step: 0,
        total: test.steps as u64,
    });
    for (i, window) in windows.take(test.steps).enumerate() {
        let lr = test.start_lr * (test.end_lr / test.start_lr).powf(i as f64 / test.steps as f64);
        let loss = step(&mut model, &window, config, i as u64)?;
        let Some(loss) = loss else {
            finding.stopped_early = true;
            break;
        };
        optimizer.step(&mut model.params_mut(), lr / config.train.learning_rate)?;
        model.refresh_bf16();
        average = BETA * average + (1.0 - BETA) * loss;
        let smoothed = average / (1.0 - BETA.powi(i as i32 + 1));
        finding.lrs.push(lr);
        finding.raw_losses.push(loss);
        finding.smoothed_losses.push(smoothed);
        on(Event::Note(&format!(
            "step {}/{}: lr {lr:.3e}, loss {loss:.4}, smoothed {smoothed:.4}",
            i + 1,
            test.steps
        )));
        best = best.min(smoothed);
        if smoothed > DIVERGED * best {
            finding.stopped_early = true;
            break;
        }
    }
    finding.suggestions = suggest(&finding.lrs, &finding.smoothed_losses, test.steps);
    Ok(finding)
}

/// The training windows (micro-batches of one optimizer step) in `hone train`'s order, epoch
/// after epoch for as long as the test asks.
struct Windows<'a> {
    rows: &'a [Row],
    batch: usize,
    accumulation: usize,
    seed: u64,
    epoch: u64,
    pending: Vec<Vec<Batch>>,
}

impl<'a> Windows<'a> {
    fn new(config: &SftConfig, rows: &'a [Row]) -> Windows<'a> {
        let t = &config.train;
        Windows {
            rows,
            batch: t.per_device_train_batch_size as usize,
            accumulation: t.gradient_accumulation_steps as usize,
            seed: t.seed,
            epoch: 0,
            pending: Vec::new(),
        }
    }
}

impl Iterator for Windows<'_> {
    type Item = Vec<Batch>;

    fn next(&mut self) -> Option<Vec<Batch>> {
        if self.pending.is_empty() {
            let order = epoch_order(self.rows.len(), self.seed, self.epoch);
            self.epoch += 1;
            let batches: Vec<Batch> = order
                .chunks(self.batch.max(1))
                .map(|idx| flatten(&idx.iter().map(|&i| &self.rows[i]).collect::<Vec<_>>()))
                .collect();
            let mut windows: Vec<Vec<Batch>> = batches
                .chunks(self.accumulation.max(1))
                .map(<[Batch]>::to_vec)
                .collect();
            windows.reverse();
            self.pending = windows;
        }
        self.pending.pop()
    }
}

/// One optimizer step's gradients over `window`, as `hone train` takes them, clipped; the mean
/// loss, or None when it is not finite (the test then stops, as a diverged run would).
fn step(
    model: &mut TrainModel,
    window: &[Batch],
    config: &SftConfig,
    i: u64,
) -> Result<Option<f64>> {
    let loss = window_gradients(model, window, config, i)?;
    if !loss.is_finite() {
        return Ok(None);
    }
    let norm = clip(model, config);
    Ok(norm.is_finite().then_some(loss))
}

/// fastai's suggestions from the points after the first tenth of `steps` and before the last
/// five, cut at the first non-finite loss.
pub fn suggest(lrs: &[f64], losses: &[f64], steps: usize) -> Suggestions {
    let end = lrs.len().saturating_sub(5);
    let start = (steps / 10).min(end);
    let cut = losses[start..end]
        .iter()
        .position(|l| !l.is_finite())
        .map_or(end, |k| start + k);
    let (lrs, losses) = (&lrs[start..cut], &losses[start..cut]);
    if losses.len() < 2 {
        return Suggestions::default();
    }
    let lowest = (0..losses.len())
        .min_by(|&a, &b| losses[a].total_cmp(&losses[b]))
        .expect("two points at least");
    let steepest = (0..losses.len() - 1)
        .min_by(|&a, &b| {
            let slope = |k: usize| (losses[k + 1] - losses[k]) / (lrs[k + 1].ln() - lrs[k].ln());
            slope(a).total_cmp(&slope(b))
        })
        .expect("two points at least");
    Suggestions {
        valley: Some(lrs[valley(losses)]),
        steep: Some(lrs[steepest]),
        minimum: Some(lrs[lowest] / 10.0),
    }
}

/// fastai's `valley`: the longest strictly decreasing subsequence of `losses` ends at `end`
/// and has `length` points; its `start` is `end − length` (one before its first point, as fastai
/// computes it), and the suggestion is a third plus a sixth of the way from there. A negative
/// index counts from the end, as Python's does.
fn valley(losses: &[f64]) -> usize {
    let n = losses.len();
    let mut lengths = vec![1i64; n];
    let (mut start, mut end) = (0i64, 0usize);
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && lengths[i] < lengths[j] + 1 {
                lengths[i] = lengths[j] + 1;
            }
            if lengths[end] < lengths[i] {
                end = i;
                start = end as i64 - lengths[end];
            }
        }
    }
    let sections = (end as i64 - start) as f64 / 3.0;
    let idx = start + sections as i64 + (sections / 2.0) as i64;
    idx.rem_euclid(n as i64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_follow_fastai() {
        // A loss that falls, flattens and rises again over an exponential ramp, as fastai's
        // suggestion functions would read it (values worked out by hand from its code).
        let steps = 20;
        let lrs: Vec<f64> = (0..steps)
            .map(|i| 1e-4 * 10f64.powf(i as f64 / 5.0))
            .collect();
        let losses = [
            5.0, 4.9, 4.8, 4.6, 4.3, 3.9, 3.4, 3.0, 2.8, 2.7, 2.65, 2.7, 2.9, 3.3, 3.9, 4.5, 5.5,
            7.0, 9.0, 12.0,
        ];
        let s = suggest(&lrs, &losses, steps);
        // Points 2..14 (window 0..12): the longest descent is window 0 → 8 (nine points), so
        // start = 8 − 9 = −1 and idx = −1 + 3 + 1 = 3: point 5.
        assert_eq!(s.valley, Some(lrs[5]));
        // Steepest fall per log-rate: 3.9 → 3.4 (points 5 → 6).
        assert_eq!(s.steep, Some(lrs[5]));
        assert_eq!(s.minimum, Some(lrs[10] / 10.0));
        assert_eq!(
            suggest(&lrs[..6], &losses[..6], steps),
            Suggestions::default()
        );
    }

    #[test]
    fn a_non_finite_loss_cuts_the_points() {
        let lrs: Vec<f64> = (0..30).map(|i| 1e-5 * 1.5f64.powi(i)).collect();
        let mut losses: Vec<f64> = (0..30).map(|i| 3.0 - 0.05 * i as f64).collect();
        losses[12] = f64::NAN;
        let s = suggest(&lrs, &losses, 30);
        assert_eq!(s.minimum, Some(lrs[11] / 10.0));
    }
}
