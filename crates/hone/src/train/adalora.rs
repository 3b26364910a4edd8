//! AdaLoRA as PEFT defines it (`peft.AdaLoraConfig`): each targeted layer's update is
//! `s · B diag(E) A` (`A` `[r, in]`, `B` `[out, r]` drawn from N(0, 0.02²), `E` zero, so training
//! starts from the base model exactly; `s = alpha / (init_r + 1e-5)`), and the loss gains PEFT's
//! orthogonality penalty, `orth_reg_weight` times the mean over every A and B of
//! `‖AAᵀ − I‖_F` / `‖BᵀB − I‖_F`. Each step runs as the LoRA `A' = diag(E)·A` and chains its
//! gradients back ([`Adalora::chain`]); after each optimizer step the rank allocator
//! ([`super::rank_allocator`]) masks the least important triplets to meet a shrinking budget.

use anyhow::Result;
use rand::{rngs::StdRng, SeedableRng};

use super::factored::{self, Factored};
use super::lora::Lora;
use super::model::TrainModel;
use super::prompt::normal;
use crate::adapters::{AdaloraConfig, AdaloraWeights, Adapter};
use crate::model::norm::Tensor1;

/// One layer's triplets, and the allocator's view of them.
#[derive(Clone, Debug)]
pub struct Adalora {
    /// `[r, in]`.
    pub a: Tensor1,
    /// `[r]`: the singular values; a masked triplet's is held at 0.
    pub e: Tensor1,
    /// `[out, r]`.
    pub b: Tensor1,
    pub r: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub scale: f32,
    pub dropout: f32,
    /// Which triplets the last allocation kept (None: none has run).
    pub kept: Option<Vec<bool>>,
    /// The sensitivity EMAs of A, E and B (PEFT's `exp_avg_ipt`, `exp_avg_unc`).
    pub importance: Option<[Importance; 3]>,
}

/// One tensor's smoothed sensitivity `|w · ∂L/∂w|` and its uncertainty.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Importance {
    pub ipt: Vec<f32>,
    pub unc: Vec<f32>,
}

impl Importance {
    /// PEFT's `update_ipt`: `ipt ← β1·ipt + (1−β1)·|w·g|`, then
    /// `unc ← β2·unc + (1−β2)·| |w·g| − ipt |`.
    pub fn update(&mut self, w: &[f32], g: &[f32], (beta1, beta2): (f32, f32)) {
        if self.ipt.is_empty() {
            self.ipt = vec![0.0; w.len()];
            self.unc = vec![0.0; w.len()];
        }
        for (((ipt, unc), w), g) in self.ipt.iter_mut().zip(&mut self.unc).zip(w).zip(g) {
            let now = (w * g).abs();
            *ipt = beta1 * *ipt + (1.0 - beta1) * now;
            *unc = beta2 * *unc + (1.0 - beta2) * (now - *ipt).abs();
        }
    }

    /// Each element's score, `ipt · unc`.
    pub fn scores(&self) -> impl Iterator<Item = f32> + '_ {
        self.ipt.iter().zip(&self.unc).map(|(i, u)| i * u)
    }
}

impl Adalora {
    /// PEFT's start: A and B from N(0, 0.02²) (Hone's generator, not torch's), E zero.
    pub fn init(
        config: &AdaloraConfig,
        (in_features, out_features): (usize, usize),
        (seed, stream): (u64, u64),
    ) -> Adalora {
        let mut rng = StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let r = config.init_r;
        let mut draw = |n: usize| {
            let values = normal(n, &mut rng).into_iter().map(|v| v * 0.02).collect();
            Tensor1::new(values, true)
        };
        Adalora {
            a: draw(r * in_features),
            b: draw(out_features * r),
            e: Tensor1::new(vec![0.0; r], true),
            r,
            in_features,
            out_features,
            scale: config.scale() as f32,
            dropout: config.lora_dropout as f32,
            kept: None,
            importance: None,
        }
    }

    /// The triplets of a saved adapter (the rows it kept), to train on.
    pub fn from_weights(w: &AdaloraWeights, dropout: f32) -> Adalora {
        let t = |v: &Vec<f32>| Tensor1::new(v.clone(), true);
        Adalora {
            a: t(&w.a),
            e: t(&w.e),
            b: t(&w.b),
            r: w.r,
            in_features: w.in_features,
            out_features: w.out_features,
            scale: w.scale as f32,
            dropout,
            kept: None,
            importance: None,
        }
    }

    /// Every triplet, as PEFT holds them in training.
    pub fn weights(&self) -> AdaloraWeights {
        AdaloraWeights {
            a: self.a.value.clone(),
            e: self.e.value.clone(),
            b: self.b.value.clone(),
            r: self.r,
            in_features: self.in_features,
            out_features: self.out_features,
            scale: f64::from(self.scale),
        }
    }

    /// The triplets as PEFT saves them: the kept rows only.
    pub fn saved_weights(&self) -> AdaloraWeights {
        match &self.kept {
            Some(kept) => self.weights().keeping(kept),
            None => self.weights(),
        }
    }

    /// The update as a LoRA (`A' = diag(E)·A`), with zeroed gradients.
    pub(super) fn as_lora(&self) -> Lora {
        Lora::from_weights(&self.weights().as_lora(), self.dropout)
    }

    /// From the LoRA's gradients to the triplets': `dA[i] += E_i dA'[i]`,
    /// `dE_i += dA'[i] · A[i]`, `dB += dB'`.
    pub(super) fn chain(&mut self, grad_a: &[f32], grad_b: &[f32]) {
        let inp = self.in_features;
        let rows = grad_a.chunks_exact(inp).zip(self.a.value.chunks_exact(inp));
        if let (Some(ga), Some(ge)) = (&mut self.a.grad, &mut self.e.grad) {
            for (i, (g, a)) in rows.enumerate() {
                let e = self.e.value[i];
                ge[i] += g.iter().zip(a).map(|(g, a)| g * a).sum::<f32>();
                ga[i * inp..(i + 1) * inp]
                    .iter_mut()
                    .zip(g)
                    .for_each(|(d, g)| *d += e * g);
            }
        }
        if let Some(gb) = &mut self.b.grad {
            gb.iter_mut().zip(grad_b).for_each(|(d, g)| *d += g);
        }
    }

    /// Zeroes E where `kept` is false (PEFT's `masked_fill_`).
    pub fn mask(&mut self, kept: Vec<bool>) {
        for (e, &k) in self.e.value.iter_mut().zip(&kept) {
            if !k {
                *e = 0.0;
            }
        }
        self.kept = Some(kept);
    }

    /// `‖AAᵀ − I‖_F` and `‖BᵀB − I‖_F` (PEFT's `torch.norm(p p.T − I)`), each with its gradient
    /// times `weight` added to A's or B's.
    fn orthogonality(&mut self, weight: f32) -> f64 {
        let r = self.r;
        let a = gram(&self.a.value, r, self.in_features, false);
        let b = gram(&self.b.value, r, self.out_features, true);
        let (na, nb) = (frobenius(&a), frobenius(&b));
        // ∂‖M − I‖/∂A = 2 (M − I) A / ‖M − I‖ for M = AAᵀ; for M = BᵀB it is 2 B (M − I) / ‖·‖.
        if let Some(ga) = &mut self.a.grad {
            add_gram_grad(
                ga,
                &a,
                &self.a.value,
                (r, self.in_features),
                weight / na as f32,
                false,
            );
        }
        if let Some(gb) = &mut self.b.grad {
            add_gram_grad(
                gb,
                &b,
                &self.b.value,
                (r, self.out_features),
                weight / nb as f32,
                true,
            );
        }
        na + nb
    }
}

/// `A Aᵀ` of `A` `[r, n]`, or (`transposed`) `BᵀB` of `B` `[n, r]`, as `[r, r]` minus `I`.
fn gram(m: &[f32], r: usize, n: usize, transposed: bool) -> Vec<f64> {
    let at = |i: usize, k: usize| -> f64 {
        match transposed {
            false => f64::from(m[i * n + k]),
            true => f64::from(m[k * r + i]),
        }
    };
    let mut g = vec![0.0; r * r];
    for i in 0..r {
        for j in 0..r {
            let dot: f64 = (0..n).map(|k| at(i, k) * at(j, k)).sum();
            g[i * r + j] = dot - if i == j { 1.0 } else { 0.0 };
        }
    }
    g
}

/// `‖D‖_F`.
fn frobenius(d: &[f64]) -> f64 {
    d.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// Adds `factor · 2 D A` (`[r, n]`, A's layout) or `factor · 2 B D` (`[n, r]`) to `grad`.
fn add_gram_grad(
    grad: &mut [f32],
    d: &[f64],
    m: &[f32],
    (r, n): (usize, usize),
    factor: f32,
    transposed: bool,
) {
    if !factor.is_finite() {
        return;
    }
    for i in 0..r {
        for k in 0..n {
            let (at, sum): (usize, f64) = match transposed {
                false => (
                    i * n + k,
                    (0..r).map(|j| d[i * r + j] * f64::from(m[j * n + k])).sum(),
                ),
                true => (
                    k * r + i,
                    (0..r).map(|j| f64::from(m[k * r + j]) * d[j * r + i]).sum(),
                ),
            };
            grad[at] += factor * 2.0 * sum as f32;
        }
    }
}

impl TrainModel {
    /// Every AdaLoRA part, in model order.
    pub fn adalora_parts(&mut self) -> Vec<&mut Adalora> {
        self.adalora_named().into_iter().map(|(_, a)| a).collect()
    }

    /// Every AdaLoRA part with its module path, in model order.
    pub(super) fn adalora_named(&mut self) -> Vec<(String, &mut Adalora)> {
        let parts = self.blocks.iter_mut().flat_map(|b| b.linears_mut());
        parts
            .flat_map(|p| p.parts.iter_mut())
            .filter_map(|part| match &mut part.factored {
                Some(Factored::Adalora(a)) => Some((part.path.clone(), a)),
                _ => None,
            })
            .collect()
    }

    /// AdaLoRA's orthogonality penalty, `weight` × the mean of every A's and B's deviation from
    /// orthonormal rows (columns): its gradient added, its value returned (0 without AdaLoRA).
    /// PEFT adds it to each forward's loss; Hone once per optimizer step, the same with
    /// `gradient_accumulation_steps: 1`.
    pub fn orthogonality_penalty(&mut self, weight: f64) -> f64 {
        let mut parts = self.adalora_parts();
        if parts.is_empty() || weight == 0.0 {
            return 0.0;
        }
        let count = 2 * parts.len();
        let per = (weight / count as f64) as f32;
        let sum: f64 = parts.iter_mut().map(|a| a.orthogonality(per)).sum();
        weight * sum / count as f64
    }
}

/// Gives every module of `model` that `config` targets its triplets: those of `start` (an
/// adapter the run continues) or PEFT's start drawn from `seed`.
pub fn attach(
    model: &mut TrainModel,
    config: &AdaloraConfig,
    start: Option<&Adapter>,
    seed: u64,
) -> Result<()> {
    let make = |path: &str, shape: (usize, usize), stream: u64| {
        let saved = (start.is_some(), start.and_then(|a| a.adalora.get(path)));
        let dims = |w: &AdaloraWeights| (w.out_features, w.in_features);
        let adalora = match factored::continued((path, shape), saved, dims, "AdaLoRA triplets")? {
            Some(w) => Adalora::from_weights(w, config.lora_dropout as f32),
            None => Adalora::init(config, shape, (seed, stream)),
        };
        Ok(Factored::Adalora(adalora))
    };
    factored::attach(model, |path| config.selects(path), make)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The penalty's gradient against central differences.
    #[test]
    fn the_orthogonality_gradient_is_the_penalty_s() {
        let config = AdaloraConfig::new(3, 2, 8.0, vec![]);
        let mut part = Adalora::init(&config, (4, 5), (1, 2));
        part.orthogonality(1.0);
        let (ga, gb) = (part.a.grad.clone().unwrap(), part.b.grad.clone().unwrap());
        let value = |p: &Adalora| {
            let mut p = p.clone();
            p.orthogonality(1.0)
        };
        for (i, g) in ga.iter().enumerate() {
            let (mut up, mut down) = (part.clone(), part.clone());
            up.a.value[i] += 1e-3;
            down.a.value[i] -= 1e-3;
            let numeric = (value(&up) - value(&down)) / 2e-3;
            assert!(
                (f64::from(*g) - numeric).abs() < 1e-3,
                "A[{i}]: {g} vs {numeric}"
            );
        }
        for (i, g) in gb.iter().enumerate() {
            let (mut up, mut down) = (part.clone(), part.clone());
            up.b.value[i] += 1e-3;
            down.b.value[i] -= 1e-3;
            let numeric = (value(&up) - value(&down)) / 2e-3;
            assert!(
                (f64::from(*g) - numeric).abs() < 1e-3,
                "B[{i}]: {g} vs {numeric}"
            );
        }
    }
}
