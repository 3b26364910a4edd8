//! VeRA as PEFT defines it (`peft.VeraConfig`): one pair of frozen random matrices shared by
//! every targeted layer, `A [r, max in]` and `B [max out, r]` (kaiming-uniform with gain √2), and
//! per layer two trained vectors: `y = W x + λ_b ⊙ (B[:out] (λ_d ⊙ (A[:, :in] dropout(x))))`,
//! λ_d starting at `d_initial` and λ_b at zero, so training starts from the base model exactly.
//! Forward and backward side by side; a layer reads the shared matrices in place (its slice of
//! A is strided).

use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rayon::prelude::*;

use super::factored::Factored;
use super::linear::lora_input_with;
use super::model::TrainModel;
use crate::adapters::{VeraConfig, VeraWeights};
use crate::kernels::matmul::{matmul, MatMut, MatRef, Threads};
use crate::model::layout::SLOTS;
use crate::model::norm::Tensor1;

/// The shared projections: `a` `[r, max_in]`, `b` `[max_out, r]`.
#[derive(Debug)]
pub struct Shared {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    pub r: usize,
    pub max_in: usize,
    pub max_out: usize,
}

/// A VeRA run's settings: the config it saves and the shared projections.
pub struct VeraSettings {
    pub config: VeraConfig,
    pub shared: Arc<Shared>,
}

/// One layer's vectors and its view of the shared projections.
#[derive(Clone, Debug)]
pub struct Vera {
    pub shared: Arc<Shared>,
    pub in_features: usize,
    pub out_features: usize,
    pub dropout: f32,
    /// `[r]`.
    pub lambda_d: Tensor1,
    /// `[out]`.
    pub lambda_b: Tensor1,
}

impl Shared {
    /// New projections for layers of at most `max_in` inputs and `max_out` outputs, drawn from
    /// `seed` as PEFT draws them (uniform ±√(6 / fan_in); not torch's generator, so not its
    /// values: the adapter saves them).
    pub fn draw(r: usize, (max_in, max_out): (usize, usize), seed: u64) -> Shared {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x7665_7261);
        let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
            let bound = (6.0 / fan_in as f32).sqrt();
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        let a = uniform(r * max_in, max_in);
        let b = uniform(max_out * r, r);
        Shared {
            a,
            b,
            r,
            max_in,
            max_out,
        }
    }

    /// The projections of a saved adapter.
    pub fn of(weights: &VeraWeights) -> Shared {
        Shared {
            a: weights.a.clone(),
            b: weights.b.clone(),
            r: weights.r,
            max_in: weights.max_in,
            max_out: weights.max_out,
        }
    }

    /// `[r, in]`, a strided view of A's first `in` columns.
    fn a(&self, in_features: usize) -> MatRef<'_> {
        MatRef::strided(&self.a, self.r, in_features, self.max_in)
    }

    /// `[out, r]`, B's first `out` rows.
    fn b(&self, out_features: usize) -> MatRef<'_> {
        MatRef::new(&self.b[..out_features * self.r], out_features, self.r)
    }
}

impl Vera {
    /// `u = dropout(x) A[:, :in]ᵀ` (`[tokens, r]`, kept for the backward), and
    /// `y[:, part] += λ_b ⊙ ((u ⊙ λ_d) B[:out]ᵀ)`, the part's columns starting at `col` of `y`'s
    /// `y_cols`.
    pub fn forward(
        &self,
        x: &[f32],
        (y, y_cols, col): (&mut [f32], usize, usize),
        dropout_seed: Option<u64>,
    ) -> Vec<f32> {
        let x = lora_input_with(self.dropout, x, dropout_seed);
        let u = self.down(&x);
        let z = self.up(&u);
        let out = self.out_features;
        let rows = y.chunks_exact_mut(y_cols).zip(z.chunks_exact(out));
        for (y, z) in rows {
            let y = &mut y[col..col + out];
            for ((y, z), s) in y.iter_mut().zip(z).zip(&self.lambda_b.value) {
                *y += z * s;
            }
        }
        u
    }

    /// With `g = dy[:, part]` (the part's columns from `col` of `dy`'s `dy_cols`):
    /// `dλ_b += Σ_t g ⊙ z`, `dh = (g ⊙ λ_b) B`, `dλ_d += Σ_t dh ⊙ u`,
    /// `dx += dropout'((dh ⊙ λ_d) A)`.
    pub fn backward(
        &mut self,
        (dy, dy_cols, col): (&[f32], usize, usize),
        x: &[f32],
        u: &[f32],
        seed: u64,
        dx: &mut [f32],
    ) {
        let (n, r, out) = (u.len() / self.shared.r, self.shared.r, self.out_features);
        let g: Vec<f32> = dy
            .chunks_exact(dy_cols)
            .flat_map(|row| &row[col..col + out])
            .copied()
            .collect();
        let z = self.up(u);
        if let Some(grad) = &mut self.lambda_b.grad {
            for (g_row, z) in g.chunks_exact(out).zip(z.chunks_exact(out)) {
                for ((gr, g), z) in grad.iter_mut().zip(g_row).zip(z) {
                    *gr += g * z;
                }
            }
        }
        let b = &self.lambda_b.value;
        let dz: Vec<f32> = g
            .chunks_exact(out)
            .flat_map(|row| row.iter().zip(b).map(|(g, b)| g * b))
            .collect();
        let mut dh = vec![0.0; n * r];
        let shared = Arc::clone(&self.shared);
        matmul(
            MatMut::new(&mut dh, n, r),
            MatRef::new(&dz, n, out),
            shared.b(out),
            false,
            Threads::Pool,
        );
        if let Some(grad) = &mut self.lambda_d.grad {
            for (dh, u) in dh.chunks_exact(r).zip(u.chunks_exact(r)) {
                grad.iter_mut()
                    .zip(dh.iter().zip(u))
                    .for_each(|(g, (d, u))| *g += d * u);
            }
        }
        let d = &self.lambda_d.value;
        dh.par_chunks_mut(r)
            .for_each(|row| row.iter_mut().zip(d).for_each(|(v, d)| *v *= d));
        let mut dx_vera = vec![0.0; x.len()];
        matmul(
            MatMut::new(&mut dx_vera, n, self.in_features),
            MatRef::new(&dh, n, r),
            shared.a(self.in_features),
            false,
            Threads::Pool,
        );
        let mask = (self.dropout > 0.0).then(|| super::dropout::mask(x.len(), self.dropout, seed));
        match mask {
            Some(mask) => dx
                .par_iter_mut()
                .zip(dx_vera)
                .zip(mask)
                .for_each(|((d, g), m)| *d += g * m),
            None => dx.par_iter_mut().zip(dx_vera).for_each(|(d, g)| *d += g),
        }
    }

    /// `[tokens, r]`: `x A[:, :in]ᵀ`.
    fn down(&self, x: &[f32]) -> Vec<f32> {
        let (n, r) = (x.len() / self.in_features, self.shared.r);
        let mut u = vec![0.0; n * r];
        matmul(
            MatMut::new(&mut u, n, r),
            MatRef::new(x, n, self.in_features),
            self.shared.a(self.in_features).t(),
            false,
            Threads::Pool,
        );
        u
    }

    /// `[tokens, out]`: `(u ⊙ λ_d) B[:out]ᵀ`.
    fn up(&self, u: &[f32]) -> Vec<f32> {
        let (r, out) = (self.shared.r, self.out_features);
        let n = u.len() / r;
        let d = &self.lambda_d.value;
        let h: Vec<f32> = u
            .chunks_exact(r)
            .flat_map(|row| row.iter().zip(d).map(|(u, d)| u * d))
            .collect();
        let mut z = vec![0.0; n * out];
        matmul(
            MatMut::new(&mut z, n, out),
            MatRef::new(&h, n, r),
            self.shared.b(out).t(),
            false,
            Threads::Pool,
        );
        z
    }

    /// The module's vectors as the adapter saves them: `(λ_d, λ_b)`.
    pub fn lambdas(&self) -> (Vec<f32>, Vec<f32>) {
        (self.lambda_d.value.clone(), self.lambda_b.value.clone())
    }
}

/// Gives every module of `model` that `config` targets its VeRA vectors: those of `start` (an
/// adapter the run continues, with its projections) or PEFT's start (λ_d = `d_initial`, λ_b = 0)
/// over projections drawn from `seed` for the largest targeted layer.
pub fn attach(
    model: &mut TrainModel,
    config: &VeraConfig,
    start: Option<&VeraWeights>,
    seed: u64,
) -> Result<()> {
    let mut targets = Vec::new();
    for (b, block) in model.blocks.iter().enumerate() {
        for (s, &slot) in SLOTS.iter().enumerate() {
            let projection = block.linear(slot);
            for (p, part) in projection.parts.iter().enumerate() {
                if config.selects(&part.path)? {
                    targets.push(((b, s, p), projection.in_features, part.out_features));
                }
            }
        }
    }
    if targets.is_empty() {
        bail!("target_modules: selects none of the model's linear layers");
    }
    let max_in = targets.iter().map(|t| t.1).max().unwrap_or(0);
    let max_out = targets.iter().map(|t| t.2).max().unwrap_or(0);
    let shared = Arc::new(match start {
        Some(w) => Shared::of(w),
        None => Shared::draw(config.r, (max_in, max_out), seed),
    });
    if shared.max_in < max_in || shared.max_out < max_out || shared.r != config.r {
        bail!(
            "adapter_name_or_path: vera_A [{}, {}] and vera_B [{}, {}] are too small for this model's targets ({max_in} \
             inputs, {max_out} outputs at most)",
            shared.r,
            shared.max_in,
            shared.max_out,
            shared.r
        );
    }
    for ((b, s, p), in_features, out_features) in targets {
        let part = &mut model.blocks[b].linears_mut()[s].parts[p];
        let (d, b) = match start {
            Some(w) => {
                let (d, b) = w.lambdas.get(&part.path).with_context(|| {
                    format!("adapter_name_or_path: no VeRA vectors for {}", part.path)
                })?;
                ensure!(
                    d.len() == config.r && b.len() == out_features,
                    "adapter_name_or_path: {}'s vectors are [{}] and [{}], not [{}] and [{out_features}]",
                    part.path,
                    d.len(),
                    b.len(),
                    config.r
                );
                (d.clone(), b.clone())
            }
            None => (
                vec![config.d_initial as f32; config.r],
                vec![0.0; out_features],
            ),
        };
        part.factored = Some(Factored::Vera(Vera {
            shared: Arc::clone(&shared),
            in_features,
            out_features,
            dropout: config.vera_dropout as f32,
            lambda_d: Tensor1::new(d, true),
            lambda_b: Tensor1::new(b, true),
        }));
    }
    Ok(())
}
