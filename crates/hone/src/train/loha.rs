//! LoHa as PEFT defines it (`peft.LoHaConfig`): `y = W x + s · ((W1a W1b) ⊙ (W2a W2b)) x` with
//! `s = alpha / r`, W1a, W1b, W2a kaiming-uniform(a=√5) and W2b zero at init, so training starts
//! from the base model exactly. The Hadamard product is a LoRA update of rank r²
//! ([`crate::adapters::loha::face_split`]): each step builds that LoRA from the factors, runs
//! LoRA's forward and backward, and takes the factors' gradients from LoRA's.

use anyhow::Result;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::factored::{self, Factored};
use super::lora::Lora;
use super::model::TrainModel;
use crate::adapters::{Adapter, LohaConfig, LohaWeights};
use crate::model::norm::Tensor1;

/// One layer's LoHa factors: `w1a`, `w2a` `[out, r]`, `w1b`, `w2b` `[r, in]`.
#[derive(Clone, Debug)]
pub struct Loha {
    pub w1a: Tensor1,
    pub w1b: Tensor1,
    pub w2a: Tensor1,
    pub w2b: Tensor1,
    pub r: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub scale: f32,
}

impl Loha {
    /// PEFT's start (`init_weights: true`), drawn from `seed` and `stream` (the module).
    pub fn init(
        r: usize,
        (in_features, out_features): (usize, usize),
        scale: f32,
        (seed, stream): (u64, u64),
    ) -> Loha {
        let mut rng = StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut kaiming = |n: usize, fan_in: usize| -> Tensor1 {
            let bound = 1.0 / (fan_in as f32).sqrt();
            Tensor1::new(
                (0..n).map(|_| rng.random_range(-bound..bound)).collect(),
                true,
            )
        };
        Loha {
            w1a: kaiming(out_features * r, r),
            w1b: kaiming(r * in_features, in_features),
            w2a: kaiming(out_features * r, r),
            w2b: Tensor1::new(vec![0.0; r * in_features], true),
            r,
            in_features,
            out_features,
            scale,
        }
    }

    /// The factors of a saved adapter.
    pub fn from_weights(w: &LohaWeights) -> Loha {
        let t = |v: &Vec<f32>| Tensor1::new(v.clone(), true);
        Loha {
            w1a: t(&w.w1a),
            w1b: t(&w.w1b),
            w2a: t(&w.w2a),
            w2b: t(&w.w2b),
            r: w.r,
            in_features: w.in_features,
            out_features: w.out_features,
            scale: w.scale as f32,
        }
    }

    /// The factors as PEFT saves them.
    pub fn weights(&self) -> LohaWeights {
        LohaWeights {
            w1a: self.w1a.value.clone(),
            w1b: self.w1b.value.clone(),
            w2a: self.w2a.value.clone(),
            w2b: self.w2b.value.clone(),
            r: self.r,
            in_features: self.in_features,
            out_features: self.out_features,
            scale: f64::from(self.scale),
        }
    }

    /// The update as a LoRA of rank r², with zeroed gradients.
    pub(super) fn as_lora(&self) -> Lora {
        Lora::from_weights(&self.weights().as_lora(), 0.0)
    }

    /// From the rank-r² LoRA's gradients to the factors': `B'[o, (i, j)] = w1a[o, i] w2a[o, j]`
    /// and `A'[(i, j), k] = w1b[i, k] w2b[j, k]`.
    pub(super) fn chain(&mut self, grad_a: &[f32], grad_b: &[f32]) {
        let (r, inp, out) = (self.r, self.in_features, self.out_features);
        let (w1a, w2a) = (&self.w1a.value, &self.w2a.value);
        if let (Some(g1), Some(g2)) = (&mut self.w1a.grad, &mut self.w2a.grad) {
            for o in 0..out {
                for i in 0..r {
                    for j in 0..r {
                        let d = grad_b[o * r * r + i * r + j];
                        g1[o * r + i] += d * w2a[o * r + j];
                        g2[o * r + j] += d * w1a[o * r + i];
                    }
                }
            }
        }
        let (w1b, w2b) = (&self.w1b.value, &self.w2b.value);
        if let (Some(g1), Some(g2)) = (&mut self.w1b.grad, &mut self.w2b.grad) {
            for i in 0..r {
                for j in 0..r {
                    let d = &grad_a[(i * r + j) * inp..(i * r + j + 1) * inp];
                    for k in 0..inp {
                        g1[i * inp + k] += d[k] * w2b[j * inp + k];
                        g2[j * inp + k] += d[k] * w1b[i * inp + k];
                    }
                }
            }
        }
    }
}

/// Gives every module of `model` that `config` targets its LoHa factors: those of `start` (an
/// adapter the run continues) or PEFT's start drawn from `seed`.
pub fn attach(
    model: &mut TrainModel,
    config: &LohaConfig,
    start: Option<&Adapter>,
    seed: u64,
) -> Result<()> {
    let make = |path: &str, shape: (usize, usize), stream: u64| {
        let saved = (start.is_some(), start.and_then(|a| a.loha.get(path)));
        let dims = |w: &LohaWeights| (w.out_features, w.in_features);
        let loha = match factored::continued((path, shape), saved, dims, "LoHa factors")? {
            Some(w) => Loha::from_weights(w),
            None => Loha::init(config.r, shape, config.scale() as f32, (seed, stream)),
        };
        Ok(Factored::Loha(loha))
    };
    factored::attach(model, |path| config.selects(path), make)
}
