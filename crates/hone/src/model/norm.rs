//! The block's norms as parameters: an RMSNorm's weight or a LayerNorm's weight and bias, each
//! with a gradient when it trains, and their forward and backward over the kernels. One
//! definition for inference and training (`model::block`, the final norm of both models).

use std::borrow::Cow;

use crate::kernels::{layernorm, rmsnorm};
use crate::model::ModelConfig;

/// A tensor's values and, when it trains, its gradient (same length).
#[derive(Clone, Debug)]
pub struct Tensor1 {
    pub value: Vec<f32>,
    pub grad: Option<Vec<f32>>,
}

impl Tensor1 {
    pub fn new(value: Vec<f32>, trainable: bool) -> Tensor1 {
        let grad = trainable.then(|| vec![0.0; value.len()]);
        Tensor1 { value, grad }
    }
}

/// A norm's weight and, for a LayerNorm (StarCoder2), its bias; an RMSNorm has none.
#[derive(Clone, Debug)]
pub struct NormParam {
    pub weight: Tensor1,
    pub bias: Option<Tensor1>,
}

/// How the model's norms compute: eps, and what is added to each weight (Gemma's `1 + w`).
#[derive(Clone, Copy, Debug)]
pub struct NormCtx {
    eps: f32,
    offset: f32,
}

impl NormCtx {
    pub fn of(cfg: &ModelConfig) -> Self {
        NormCtx {
            eps: cfg.rms_norm_eps as f32,
            offset: cfg.norm_offset,
        }
    }

    /// The weights a norm scales by: the stored ones plus the offset, so a trained weight keeps
    /// the layout checkpoints store and its gradient is the scale's.
    fn weights<'a>(&self, w: &'a [f32]) -> Cow<'a, [f32]> {
        if self.offset == 0.0 {
            Cow::Borrowed(w)
        } else {
            Cow::Owned(w.iter().map(|&w| w + self.offset).collect())
        }
    }
}

impl NormParam {
    /// The norm's output for `x` (`[rows, width]`), with its `rstd` per row for the backward.
    pub fn forward(&self, x: &[f32], n: NormCtx) -> (Vec<f32>, Vec<f32>) {
        let w = &self.weight;
        let mut y = vec![0.0; x.len()];
        let mut rstd = vec![0.0; x.len() / w.value.len()];
        let weights = n.weights(&w.value);
        match &self.bias {
            Some(b) => layernorm::forward(x, &weights, &b.value, n.eps, &mut y, &mut rstd),
            None => rmsnorm::forward(x, &weights, n.eps, &mut y, &mut rstd),
        }
        (y, rstd)
    }

    /// The gradient of the norm's input from `dy`, that of its output, accumulating the weight
    /// (and a LayerNorm's bias) gradient when it trains (the offset leaves it as it is).
    pub fn backward(&mut self, dy: &[f32], x: &[f32], rstd: &[f32], n: NormCtx) -> Vec<f32> {
        let mut dx = vec![0.0; x.len()];
        let w = &mut self.weight;
        let weights = n.weights(&w.value);
        match &mut self.bias {
            Some(b) => {
                let grads = (w.grad.as_deref_mut(), b.grad.as_deref_mut());
                layernorm::backward(dy, x, &weights, rstd, &mut dx, grads);
            }
            None => rmsnorm::backward(dy, x, &weights, rstd, &mut dx, w.grad.as_deref_mut()),
        }
        dx
    }
}
