//! Preference optimization (`stage: dpo`): the policy learns to prefer each pair's chosen
//! response over its rejected one, with LLaMA-Factory's `pref_loss` family (formulas in
//! [`loss`]). It runs inside the SFT recipe's loop, which batches pairs instead of rows.
//!
//! **Batches.** A micro-batch of pairs is one padding-free batch of their responses, chosen and
//! rejected in turn (each after its prompt, labelled on the response only), so each response's
//! log-probability is minus the summed loss of its segment's positions. The gradient of a pair's
//! loss through those log-probabilities is a per-position factor on the cross-entropy's gradient:
//! one forward, the head's losses, the factors, the head's backward with them, the blocks'
//! backward.
//!
//! **The reference** is the model as the run starts — the base for a new adapter, or the adapter
//! being continued (`adapter_name_or_path`, TRL's behaviour; LLaMA-Factory disables that adapter
//! too and so compares against the bare base). Since it never changes, its log-probabilities are
//! computed once for every pair before the first step (TRL's `precompute_ref_log_probs`): no
//! second model copy and no second forward per step, and the same values a per-batch reference
//! forward gives. Checkpoints keep them, so a resumed run compares against the same reference.
//! Dropout is off in preference runs, as TRL and LLaMA-Factory disable it, so the loss of a
//! sigmoid run's first step is exactly ln 2.

pub mod kto;
pub mod loss;

use std::path::Path;

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::{flatten, Batch, Row};
use crate::io::atomic;
use crate::kernels::cross_entropy::{self, IGNORE_INDEX};
use crate::train::config::SftConfig;
use crate::train::model::{shifted_labels, Head, TrainModel};
use loss::{PairLogps, PairLoss, PreferenceLoss, SequenceLogp};

/// The file a checkpoint keeps the reference's log-probabilities in.
const REFERENCE_FILE: &str = "reference_logps.json";

/// How an item's two rows go through the model in a training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// In one batch, item by item (DPO's pairs).
    Together,
    /// The items' first rows in one batch, their second rows in another (KTO's responses, with
    /// gradients, and their mismatched responses, without).
    Apart,
}

/// The reference's log-probabilities of every response, in the loss's form, in row order
/// (chosen, rejected, chosen, …), for the training and validation rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reference {
    pub train: Vec<f64>,
    pub val: Vec<f64>,
}

impl Reference {
    /// Computes the reference with `model` as it is (the run's start). The training pairs go in
    /// the micro-batches the first epoch trains on (`first_epoch` chunked by `batch`), so a
    /// sigmoid run's first loss is exactly ln 2 whatever the kernels' rounding; validation pairs
    /// `eval_batch` at a time. `progress` hears the responses done and their total.
    pub fn compute(
        model: &TrainModel,
        (form, layout): (&dyn Fn(SequenceLogp) -> f64, Layout),
        (train, val): (&[Row], &[Row]),
        (first_epoch, batch, eval_batch): (&[usize], usize, usize),
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Reference> {
        let total = train.len() + val.len();
        let mut done = 0;
        // The rows of `items` as the training step batches them: both rows of each item in one
        // batch (DPO), or each item's first rows together and its second rows together (KTO).
        let mut run = |rows: &[Row], items: &[usize], out: &mut [f64]| -> Result<()> {
            let batches: Vec<Vec<usize>> = match layout {
                Layout::Together => vec![items.iter().flat_map(|&k| [2 * k, 2 * k + 1]).collect()],
                Layout::Apart => vec![
                    items.iter().map(|&k| 2 * k).collect(),
                    items.iter().map(|&k| 2 * k + 1).collect(),
                ],
            };
            for indices in batches {
                let batch_rows: Vec<&Row> = indices.iter().map(|&i| &rows[i]).collect();
                let flat = flatten(&batch_rows);
                let losses = model.position_losses(&flat)?;
                for (&i, s) in indices.iter().zip(sequence_logps(&losses, &flat)) {
                    out[i] = form(s);
                }
                done += batch_rows.len();
            }
            progress(done, total);
            Ok(())
        };
        let mut reference = Reference {
            train: vec![0.0; train.len()],
            val: vec![0.0; val.len()],
        };
        for pairs in first_epoch.chunks(batch.max(1)) {
            run(train, pairs, &mut reference.train)?;
        }
        let val_pairs: Vec<usize> = (0..val.len() / 2).collect();
        for pairs in val_pairs.chunks(eval_batch.max(1)) {
            run(val, pairs, &mut reference.val)?;
        }
        Ok(reference)
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        atomic::write_json(&dir.join(REFERENCE_FILE), self)
    }

    /// The reference a checkpoint kept; it must cover `train` and `val` responses.
    pub fn load(dir: &Path, train: usize, val: usize) -> Result<Reference> {
        let path = dir.join(REFERENCE_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let reference: Reference = serde_json::from_str(&text)
            .with_context(|| format!("{}: malformed", path.display()))?;
        ensure!(
            reference.train.len() == train && reference.val.len() == val
                || reference.train.is_empty() && reference.val.is_empty(),
            "{}: {} training and {} validation responses, the run has {train} and {val} (was \
             the dataset changed?)",
            path.display(),
            reference.train.len(),
            reference.val.len()
        );
        Ok(reference)
    }

    /// Pair `k`'s reference log-probabilities among `logps`, when the loss uses a reference.
    fn pair(logps: &[f64], k: usize) -> Option<(f64, f64)> {
        (!logps.is_empty()).then(|| (logps[2 * k], logps[2 * k + 1]))
    }
}

/// Each response's log-probability in a flattened batch of responses: minus the summed losses of
/// its segment's labelled positions, and their count.
pub fn sequence_logps(position_losses: &[f64], batch: &Batch) -> Vec<SequenceLogp> {
    let labels = shifted_labels(batch);
    let segments = batch
        .segment_ids
        .as_ref()
        .expect("a flattened batch has segment ids");
    let count = segments.last().map_or(0, |&s| s as usize + 1);
    let mut out = vec![
        SequenceLogp {
            sum: 0.0,
            tokens: 0
        };
        count
    ];
    for ((&label, &segment), &loss) in labels.iter().zip(segments).zip(position_losses) {
        if label != IGNORE_INDEX {
            let s = &mut out[segment as usize];
            s.sum -= loss;
            s.tokens += 1;
        }
    }
    out
}

/// Forward and backward of a micro-batch of pairs, `rows` chosen and rejected in turn:
/// adds `grad_scale · ∂(Σ pair losses)/∂θ` to the trainable gradients. `reference` holds the
/// pairs' reference log-probabilities in the same order (empty for reference-free losses).
pub fn pairs_forward_backward(
    model: &mut TrainModel,
    rows: &[&Row],
    reference: &[f64],
    settings: &PreferenceLoss,
    grad_scale: f32,
    dropout_seed: u64,
) -> Result<Vec<PairLoss>> {
    let batch = flatten(rows);
    let segments = batch.segment_ids.clone().expect("flattened");
    model.forward_backward_with(&batch, dropout_seed, |head| {
        weighted_head(head, |losses| {
            let pairs = pair_losses(&sequence_logps(losses, &batch), reference, settings)?;
            // ∂loss/∂(position's cross-entropy) = −∂loss/∂(its response's summed log-probability).
            let weights: Vec<f32> = segments
                .iter()
                .map(|&s| {
                    let pair = &pairs[s as usize / 2];
                    let d = if s % 2 == 0 {
                        pair.d_chosen
                    } else {
                        pair.d_rejected
                    };
                    -(d as f32) * grad_scale
                })
                .collect();
            Ok((pairs, weights))
        })
    })
}

/// The head's part of an objective built on the positions' losses (responses' log-probabilities):
/// `factors` turns the losses into the objective's result and each position's gradient factor
/// (`−∂loss/∂logp` of its response). A frozen head takes one pass — the losses with each
/// position's own input gradient, whose rows are then scaled by their factors — since the input
/// gradient is linear in them; a head that trains needs the factors inside its weight gradient,
/// so it takes a second, weighted pass.
fn weighted_head<R>(
    head: Head,
    factors: impl FnOnce(&[f64]) -> Result<(R, Vec<f32>)>,
) -> Result<R> {
    let Head {
        input,
        weight,
        grad,
        labels,
        shape,
        dh,
        ..
    } = head;
    if grad.is_none() {
        let losses =
            cross_entropy::position_losses_and_input_grads(input, weight, labels, shape, dh)?;
        let (out, weights) = factors(&losses)?;
        for (row, &factor) in dh.chunks_exact_mut(shape.hidden).zip(&weights) {
            row.iter_mut().for_each(|g| *g *= factor);
        }
        return Ok(out);
    }
    let losses = cross_entropy::position_losses(input, weight, labels, shape)?;
    let (out, weights) = factors(&losses)?;
    cross_entropy::forward_backward_weighted(input, weight, labels, shape, &weights, dh, grad)?;
    Ok(out)
}

/// The pairs' losses from their responses' log-probabilities (chosen, rejected, …).
fn pair_losses(
    sequences: &[SequenceLogp],
    reference: &[f64],
    settings: &PreferenceLoss,
) -> Result<Vec<PairLoss>> {
    ensure!(
        sequences.len().is_multiple_of(2)
            && (reference.is_empty() || reference.len() == sequences.len()),
        "{} responses and {} reference log-probabilities do not make pairs",
        sequences.len(),
        reference.len()
    );
    Ok(sequences
        .chunks_exact(2)
        .enumerate()
        .map(|(k, pair)| {
            settings.pair(PairLogps {
                chosen: pair[0],
                rejected: pair[1],
                reference: Reference::pair(reference, k),
            })
        })
        .collect())
}

/// The mean loss and metrics of `rows` (pairs) without gradients, `batch` pairs at a time.
pub fn evaluate(
    model: &TrainModel,
    rows: &[Row],
    reference: &[f64],
    settings: &PreferenceLoss,
    batch: usize,
) -> Result<Metrics> {
    let mut metrics = Metrics::default();
    for (k, chunk) in rows.chunks(2 * batch.max(1)).enumerate() {
        let refs: Vec<&Row> = chunk.iter().collect();
        let flat = flatten(&refs);
        let losses = model.position_losses(&flat)?;
        let start = 2 * batch.max(1) * k;
        let reference = match reference.is_empty() {
            true => &[][..],
            false => &reference[start..start + chunk.len()],
        };
        for pair in pair_losses(&sequence_logps(&losses, &flat), reference, settings)? {
            metrics.add(&pair);
        }
    }
    Ok(metrics)
}

/// A running mean.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Mean {
    sum: f64,
    count: f64,
}

impl Mean {
    fn add(&mut self, value: f64) {
        self.sum += value;
        self.count += 1.0;
    }

    fn merge(&mut self, other: Mean) {
        self.sum += other.sum;
        self.count += other.count;
    }

    fn value(self) -> Option<f64> {
        (self.count > 0.0).then(|| self.sum / self.count)
    }
}

/// The logged quantities of a preference run since the last log line: DPO's and a reward
/// model's per pair, KTO's per response (chosen = desirable, rejected = undesirable).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Pairs (DPO) or responses (KTO) and their summed loss.
    pub items: u64,
    pub loss: f64,
    reward_chosen: Mean,
    reward_rejected: Mean,
    correct: Mean,
    logp_chosen: Mean,
    logp_rejected: Mean,
    sft_loss: Mean,
    odds_ratio_loss: Mean,
    kl: Mean,
    /// Reward models: the share of pairs scored chosen above rejected.
    #[serde(default)]
    ranked: Mean,
}

impl Metrics {
    /// One DPO pair.
    pub fn add(&mut self, p: &PairLoss) {
        self.items += 1;
        self.loss += p.loss;
        self.reward_chosen.add(p.reward_chosen);
        self.reward_rejected.add(p.reward_rejected);
        self.correct
            .add(f64::from(u8::from(p.reward_chosen > p.reward_rejected)));
        self.logp_chosen.add(p.logp_chosen);
        self.logp_rejected.add(p.logp_rejected);
        if let Some((sft, ratio)) = p.orpo_parts {
            self.sft_loss.add(sft);
            self.odds_ratio_loss.add(ratio);
        }
    }

    /// One KTO micro-batch: its mean loss, each response's reward, summed log-probability and
    /// tag, and its reference point.
    pub fn add_kto(&mut self, loss: f64, responses: &[(f64, f64, bool)], kl: f64) {
        let n = responses.len();
        self.items += n as u64;
        self.loss += loss * n as f64;
        for &(reward, logp, desirable) in responses {
            match desirable {
                true => {
                    self.reward_chosen.add(reward);
                    self.logp_chosen.add(logp);
                }
                false => {
                    self.reward_rejected.add(reward);
                    self.logp_rejected.add(logp);
                }
            }
        }
        self.kl.add(kl);
    }

    /// One reward-model pair: its loss and whether the chosen response scored higher.
    pub fn add_ranked(&mut self, loss: f64, chosen_higher: bool) {
        self.items += 1;
        self.loss += loss;
        self.ranked.add(f64::from(u8::from(chosen_higher)));
    }

    /// Adds another set of sums.
    pub fn merge(&mut self, other: &Metrics) {
        self.items += other.items;
        self.loss += other.loss;
        for (mine, theirs) in [
            (&mut self.reward_chosen, other.reward_chosen),
            (&mut self.reward_rejected, other.reward_rejected),
            (&mut self.correct, other.correct),
            (&mut self.logp_chosen, other.logp_chosen),
            (&mut self.logp_rejected, other.logp_rejected),
            (&mut self.sft_loss, other.sft_loss),
            (&mut self.odds_ratio_loss, other.odds_ratio_loss),
            (&mut self.kl, other.kl),
            (&mut self.ranked, other.ranked),
        ] {
            mine.merge(theirs);
        }
    }

    /// The share of pairs whose chosen reward is above the rejected one (DPO).
    pub fn accuracy(&self) -> Option<f64> {
        self.correct.value()
    }

    pub fn mean_loss(&self) -> f64 {
        self.loss / self.items.max(1) as f64
    }

    /// The means, under TRL's and LLaMA-Factory's names (`prefix` "eval_" for evaluations);
    /// `rewards/margins` is the chosen mean minus the rejected mean (the mean of the pairs'
    /// margins for DPO), and a quantity with nothing to average is left out.
    pub fn named(&self, prefix: &str) -> Vec<(String, f64)> {
        let margin = match (self.reward_chosen.value(), self.reward_rejected.value()) {
            (Some(c), Some(r)) => Some(c - r),
            _ => None,
        };
        [
            ("rewards/chosen", self.reward_chosen.value()),
            ("rewards/rejected", self.reward_rejected.value()),
            ("rewards/accuracies", self.correct.value()),
            ("rewards/margins", margin),
            ("logps/chosen", self.logp_chosen.value()),
            ("logps/rejected", self.logp_rejected.value()),
            ("sft_loss", self.sft_loss.value()),
            ("odds_ratio_loss", self.odds_ratio_loss.value()),
            ("kl", self.kl.value()),
            ("accuracy", self.ranked.value()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (format!("{prefix}{k}"), v)))
        .collect()
    }
}

/// The loss settings of a config.
pub fn settings(config: &SftConfig) -> PreferenceLoss {
    let m = &config.method;
    PreferenceLoss {
        loss: m.pref_loss,
        beta: m.pref_beta,
        label_smoothing: m.dpo_label_smoothing,
        ftx: m.pref_ftx,
        simpo_gamma: m.simpo_gamma,
    }
}

/// A golden fixture of `scripts/golden/dpo.py` (fixtures/train/NAME) as JSON.
#[cfg(test)]
fn golden(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/train")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A list of numbers in a golden fixture.
#[cfg(test)]
fn numbers(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}
