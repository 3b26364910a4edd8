//! Reward modelling (`stage: rm`): the model learns to score each pair's chosen response above
//! its rejected one, as LLaMA-Factory's `PairwiseTrainer` does. A value head (TRL's
//! `ValueHead`: dropout, then `Linear(hidden, 1)` with a bias) reads the final norm's output; a
//! response's score is its value at the response's last token, and a pair's loss is
//! `−log σ(score_chosen − score_rejected)`, averaged over the micro-batch's pairs.
//!
//! The LM head plays no part: the step is the blocks' forward, the value head at one position
//! per response, and the blocks' backward from those positions alone. The value head trains with
//! the adapter (or the whole model) and is saved beside it as `value_head.safetensors`
//! (`v_head.summary.weight` `[1, hidden]`, `v_head.summary.bias` `[1]`), LLaMA-Factory's file,
//! which a later run continuing the adapter or the model reads back.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::data::{flatten, Batch, Row};
use crate::io::safetensors as st;
use crate::model::norm::Tensor1;
use crate::model::value_head as stored;
use crate::train::dropout;
use crate::train::model::TrainModel;

pub use crate::model::value_head::{BIAS, VALUE_HEAD_FILE, WEIGHT};

/// TRL's `summary_dropout_prob` default: the value head's input is dropped out in training.
const SUMMARY_DROPOUT: f32 = 0.1;

/// The value head: `value(h) = w · dropout(h) + b` on a final hidden state `h`.
pub struct ValueHead {
    pub weight: Tensor1,
    pub bias: Tensor1,
    /// The drop probability of its input in training.
    pub dropout: f32,
}

impl ValueHead {
    /// A new head as `torch.nn.Linear(hidden, 1)` starts: weight and bias uniform in
    /// ±1/√hidden (PyTorch's default init), drawn from `seed`.
    pub fn new(hidden: usize, seed: u64) -> ValueHead {
        let bound = 1.0 / (hidden as f32).sqrt();
        let mut rng = StdRng::seed_from_u64(dropout::stream(seed, u64::MAX - 1));
        let mut draw =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
        ValueHead {
            weight: Tensor1::new(draw(hidden), true),
            bias: Tensor1::new(draw(1), true),
            dropout: SUMMARY_DROPOUT,
        }
    }

    /// The head saved in `dir`, when `dir` has one (a reward model's output or checkpoint).
    pub fn load(dir: &Path, hidden: usize) -> Result<Option<ValueHead>> {
        Ok(stored::ValueHead::load(dir, hidden)?.map(|head| ValueHead {
            weight: Tensor1::new(head.weight, true),
            bias: Tensor1::new(vec![head.bias], true),
            dropout: SUMMARY_DROPOUT,
        }))
    }

    /// Writes `value_head.safetensors` into `dir` (atomically), as LLaMA-Factory saves it.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let hidden = self.weight.value.len();
        let tensors = [
            (WEIGHT.to_string(), vec![1, hidden], &self.weight.value[..]),
            (BIAS.to_string(), vec![1], &self.bias.value[..]),
        ];
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        st::write_f32(&dir.join(VALUE_HEAD_FILE), &tensors, metadata)
    }

    /// The value of hidden state `h` without dropout (evaluation).
    pub fn value(&self, h: &[f32]) -> f64 {
        stored::value(&self.weight.value, self.bias.value[0], h)
    }

    /// The value of `h` in training, through a dropout mask drawn from `seed`, and the input
    /// the weight saw (for the backward).
    fn value_dropped(&self, h: &[f32], seed: u64) -> (f64, Vec<f32>) {
        let seen = dropout::apply(h, self.dropout, seed);
        (self.value(&seen), seen)
    }
}

/// The last position of each row of a flattened batch, in row order.
fn last_positions(batch: &Batch) -> Vec<usize> {
    let segments = batch
        .segment_ids
        .as_ref()
        .expect("a flattened batch has segment ids");
    (0..segments.len())
        .filter(|&i| i + 1 == segments.len() || segments[i + 1] != segments[i])
        .collect()
}

/// A pair's scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairScores {
    pub chosen: f64,
    pub rejected: f64,
}

impl PairScores {
    /// `−log σ(chosen − rejected)`, computed without overflow.
    pub fn loss(self) -> f64 {
        let m = self.chosen - self.rejected;
        (-m).max(0.0) + (-m.abs()).exp().ln_1p()
    }

    /// `∂loss/∂chosen` (= `−∂loss/∂rejected`): `−σ(rejected − chosen)`.
    fn d_chosen(self) -> f64 {
        -1.0 / (1.0 + (self.chosen - self.rejected).exp())
    }
}

/// Forward and backward of a micro-batch of pairs, `rows` chosen and rejected in turn: adds
/// `grad_scale · ∂(mean pair loss)/∂θ` to the trainable gradients, the value head's included.
pub fn pairs_forward_backward(
    model: &mut TrainModel,
    rows: &[&Row],
    grad_scale: f32,
    dropout_seed: u64,
) -> Result<Vec<PairScores>> {
    let batch = flatten(rows);
    let ends = last_positions(&batch);
    ensure!(
        ends.len().is_multiple_of(2),
        "{} responses do not make pairs",
        ends.len()
    );
    model.forward_backward_with(&batch, dropout_seed, |head| {
        let v = head
            .value_head
            .context("stage: rm needs the model's value head")?;
        let hidden = v.weight.value.len();
        let unscale = 1.0 / head.input_scale;
        let mut values = Vec::with_capacity(ends.len());
        for (k, &end) in ends.iter().enumerate() {
            let h: Vec<f32> = head.input[end * hidden..(end + 1) * hidden]
                .iter()
                .map(|&x| (f64::from(x) * unscale) as f32)
                .collect();
            let seed = dropout::stream(dropout_seed, u64::MAX - 2 - k as u64);
            values.push((v.value_dropped(&h, seed), seed));
        }
        let pairs: Vec<PairScores> = values
            .chunks_exact(2)
            .map(|p| PairScores {
                chosen: p[0].0 .0,
                rejected: p[1].0 .0,
            })
            .collect();
        let per_pair = f64::from(grad_scale) / pairs.len() as f64;
        let (w_grad, b_grad) = (
            v.weight.grad.as_mut().expect("the value head trains"),
            v.bias.grad.as_mut().expect("the value head trains"),
        );
        for (k, ((_, seen), seed)) in values.iter().enumerate() {
            let pair = pairs[k / 2];
            let sign = if k % 2 == 0 { 1.0 } else { -1.0 };
            let d_value = sign * pair.d_chosen() * per_pair;
            b_grad[0] += d_value as f32;
            for (g, &x) in w_grad.iter_mut().zip(seen) {
                *g += (d_value * f64::from(x)) as f32;
            }
            // ∂value/∂h = dropout'(w), then back through the head input's scaling.
            let dw: Vec<f32> = v
                .weight
                .value
                .iter()
                .map(|&w| (d_value * f64::from(w) * unscale) as f32)
                .collect();
            let end = ends[k];
            dropout::backward_accumulate(
                &dw,
                v.dropout,
                *seed,
                &mut head.dh[end * hidden..(end + 1) * hidden],
            );
        }
        Ok(pairs)
    })
}

/// The scores of `rows` (pairs, chosen and rejected in turn) without gradients or dropout,
/// `batch` pairs at a time.
pub fn scores(model: &TrainModel, rows: &[Row], batch: usize) -> Result<Vec<PairScores>> {
    let head = model
        .value_head
        .as_ref()
        .context("stage: rm needs the model's value head")?;
    let hidden = head.weight.value.len();
    let mut out = Vec::with_capacity(rows.len() / 2);
    for chunk in rows.chunks(2 * batch.max(1)) {
        let refs: Vec<&Row> = chunk.iter().collect();
        let flat = flatten(&refs);
        let states = model.final_hidden(&flat)?;
        let values: Vec<f64> = last_positions(&flat)
            .into_iter()
            .map(|end| head.value(&states[end * hidden..(end + 1) * hidden]))
            .collect();
        out.extend(values.chunks_exact(2).map(|p| PairScores {
            chosen: p[0],
            rejected: p[1],
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_stable_and_its_derivative_is_minus_sigmoid_of_the_reverse_margin() {
        let at = |chosen, rejected| PairScores { chosen, rejected };
        assert!((at(0.0, 0.0).loss() - std::f64::consts::LN_2).abs() < 1e-15);
        assert!((at(0.0, 0.0).d_chosen() + 0.5).abs() < 1e-15);
        // Far apart: no overflow, the loss is the margin or zero.
        assert!((at(-800.0, 0.0).loss() - 800.0).abs() < 1e-9);
        assert!(at(800.0, 0.0).loss() < 1e-300);
        let (c, r, eps) = (0.3, -1.2, 1e-6);
        let numeric = (at(c + eps, r).loss() - at(c - eps, r).loss()) / (2.0 * eps);
        assert!((numeric - at(c, r).d_chosen()).abs() < 1e-9);
    }

    #[test]
    fn a_head_survives_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let head = ValueHead::new(6, 42);
        let bound = 1.0 / 6f32.sqrt();
        assert!(head.weight.value.iter().all(|w| w.abs() <= bound));
        head.save(dir.path()).unwrap();
        let back = ValueHead::load(dir.path(), 6).unwrap().unwrap();
        assert_eq!(back.weight.value, head.weight.value);
        assert_eq!(back.bias.value, head.bias.value);
        let wrong = ValueHead::load(dir.path(), 7).err().unwrap().to_string();
        assert!(
            wrong.contains("v_head.summary.weight has 6 values"),
            "{wrong}"
        );
        assert!(ValueHead::load(&dir.path().join("none"), 6)
            .unwrap()
            .is_none());
    }
}
