//! A reward model's value head (LLaMA-Factory's `stage: rm`, TRL's `ValueHead`): `Linear(hidden,
//! 1)` on the final norm's output, saved as `value_head.safetensors` (`v_head.summary.weight`
//! `[1, hidden]`, `v_head.summary.bias` `[1]`) beside the adapter or the model it was trained
//! with. A sequence's score is the value at its last token. Training keeps its own copy with
//! gradients (`train::reward`); this is the file and the product.

use std::path::Path;

use anyhow::{ensure, Context, Result};

use crate::io::safetensors as st;

/// LLaMA-Factory's name for the value head's file.
pub const VALUE_HEAD_FILE: &str = "value_head.safetensors";
pub const WEIGHT: &str = "v_head.summary.weight";
pub const BIAS: &str = "v_head.summary.bias";

#[derive(Debug, Clone, PartialEq)]
pub struct ValueHead {
    pub weight: Vec<f32>,
    pub bias: f32,
}

impl ValueHead {
    /// The head saved in `dir`, when `dir` has one; its width must be the model's `hidden`.
    pub fn load(dir: &Path, hidden: usize) -> Result<Option<ValueHead>> {
        let path = dir.join(VALUE_HEAD_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let mut tensors = st::read_f32_values(&path)?;
        let mut take = |name: &str, len: usize| -> Result<Vec<f32>> {
            let values = tensors
                .remove(name)
                .with_context(|| format!("{}: no tensor {name}", path.display()))?;
            ensure!(
                values.len() == len,
                "{}: {name} has {} values, the model's hidden size is {hidden}",
                path.display(),
                values.len()
            );
            Ok(values)
        };
        Ok(Some(ValueHead {
            weight: take(WEIGHT, hidden)?,
            bias: take(BIAS, 1)?[0],
        }))
    }

    /// The value of final hidden state `h`.
    pub fn value(&self, h: &[f32]) -> f64 {
        value(&self.weight, self.bias, h)
    }
}

/// `weight · h + bias`, accumulated in f64: the head's product, for serving and for training's
/// copy of the head alike.
pub fn value(weight: &[f32], bias: f32, h: &[f32]) -> f64 {
    let dot: f64 = weight
        .iter()
        .zip(h)
        .map(|(&w, &x)| f64::from(w) * f64::from(x))
        .sum();
    dot + f64::from(bias)
}
