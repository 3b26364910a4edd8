//! A trainable projection: one or more Linear layers that read the same input, their base weights
//! stacked by rows so the forward is one matrix product (q, k and v run as one), each part with
//! its own optional bias, weight gradient (full or partial fine-tuning) and adapter: LoRA, DoRA
//! ([`super::dora`]), VeRA, LoHa or LoKr ([`super::factored`]), an IA3 vector ([`super::ia3`])
//! or an OFT rotation of its input ([`super::oft`]: the parts then multiply one by one, each on
//! its own input). A frozen base may stay in its stored type (a quantized GGUF: QLoRA), see
//! [`Matrix`].
//!
//! Forward and backward sit side by side. The backward always produces the input gradient
//! `dx = dy W`, but a weight gradient only where a part is trainable: a frozen base weight costs
//! neither the `dyᵀ x` product nor a gradient buffer, which is most of LoRA's saving.

use std::borrow::Cow;

use rayon::prelude::*;

use super::dora::{self, DoraSaved, PartWeights};
use super::dropout;
use super::factored::Factored;
use super::ia3::{self, Ia3};
use super::lora::Lora;
use super::oft::{Oft, OftSaved};
use crate::kernels::columns::{column_sums, Columns};
use crate::kernels::matmul::{matmul, MatMut, MatRef, Threads};
use crate::kernels::matrix::{Matrix, MatrixRef};
use crate::model::block::{Backprop, Project};
use crate::model::layout::Slot;
use crate::model::norm::Tensor1;

/// A matrix outside the blocks (the embedding, the LM head) and its gradient when it trains; a
/// matrix that trains is always f32.
#[derive(Clone, Debug)]
pub struct MatrixParam {
    pub matrix: Matrix,
    pub grad: Option<Vec<f32>>,
    /// Under mixed precision, the bf16 copy the products read while `matrix` stays f32: it
    /// trains, or it is the embedding (looked up in f32) tied to the head.
    pub bf16: Option<Matrix>,
}

impl MatrixParam {
    /// The matrix the products read.
    pub fn for_products(&self) -> &Matrix {
        self.bf16.as_ref().unwrap_or(&self.matrix)
    }
}

/// One Linear layer's share of a [`Projection`].
#[derive(Clone, Debug)]
pub struct Part {
    /// HF module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub path: String,
    pub out_features: usize,
    /// Gradient of this part's rows of the stacked weight, when the base weight trains.
    pub weight_grad: Option<Vec<f32>>,
    pub bias: Option<Tensor1>,
    pub lora: Option<Lora>,
    pub ia3: Option<Ia3>,
    pub factored: Option<Factored>,
    pub oft: Option<Oft>,
}

/// Linear layers sharing one input: `y = x [W_1; W_2; …]ᵀ + b`, plus each part's LoRA term.
#[derive(Clone, Debug)]
pub struct Projection {
    pub in_features: usize,
    /// The parts' weights stacked by rows: `[Σ out_features, in_features]`; f32 when any part
    /// trains.
    pub weight: Matrix,
    /// Under mixed precision, the bf16 copy of a `weight` that trains, which the products read.
    pub bf16: Option<Matrix>,
    pub parts: Vec<Part>,
}

/// What a projection's forward keeps for its backward: per adapted part, what its adapter keeps,
/// and the dropout seed that regenerates the masks.
#[derive(Debug, Default)]
pub struct Saved {
    adapters: Vec<Option<AdapterSaved>>,
    dropout_seed: u64,
    /// Per part scaling its outputs by IA3, its outputs before the scaling.
    ia3: Vec<Option<Vec<f32>>>,
    /// Per part rotating its input by OFT, the rotations (empty: no part does).
    oft: Vec<Option<OftSaved>>,
}

/// One part's adapter: `s · A(dropout(x))` (`[tokens, r]`; VeRA's `A(dropout(x))`), and DoRA's
/// own values.
#[derive(Debug)]
struct AdapterSaved {
    xa: Vec<f32>,
    dora: Option<DoraSaved>,
}

impl Projection {
    pub fn out_features(&self) -> usize {
        self.parts.iter().map(|p| p.out_features).sum()
    }

    /// Whether the base weight (some part of it) trains.
    pub fn weight_trains(&self) -> bool {
        self.parts.iter().any(|p| p.weight_grad.is_some())
    }

    /// The weight the products read.
    fn for_products(&self) -> &Matrix {
        self.bf16.as_ref().unwrap_or(&self.weight)
    }

    /// Where the part whose rows start at `start` is, for DoRA.
    fn part_weights(&self, start: usize, part: &Part) -> PartWeights<'_> {
        PartWeights {
            products: self.for_products().as_ref(),
            stored: self.weight.as_ref(),
            start,
            rows: part.out_features,
        }
    }

    /// Gives every DoRA adapter without a magnitude its initial one (see
    /// [`dora::init_magnitudes`]).
    pub fn init_dora_magnitudes(&mut self) {
        dora::init_magnitudes(&mut self.parts, self.weight.as_ref());
    }

    /// First output column of each part.
    fn offsets(&self) -> impl Iterator<Item = (usize, &Part)> {
        self.parts.iter().scan(0, |col, p| {
            let start = *col;
            *col += p.out_features;
            Some((start, p))
        })
    }

    /// `y` (`[tokens, out]`, overwritten) for `x` (`[tokens, in]`). `dropout_seed` is `None`
    /// outside training (no dropout, nothing saved).
    pub fn forward(&self, x: &[f32], y: &mut [f32], dropout_seed: Option<u64>) -> Saved {
        let out = self.out_features();
        let oft = match self.parts.iter().any(|p| p.oft.is_some()) {
            true => self.rotated_forward(x, y),
            false => {
                let scaled_input = ia3::scaled_input(&self.parts, x);
                self.for_products()
                    .forward(scaled_input.as_deref().unwrap_or(x), y);
                Vec::new()
            }
        };
        let mut saved = Saved {
            adapters: Vec::with_capacity(self.parts.len()),
            dropout_seed: dropout_seed.unwrap_or(0),
            ia3: Vec::new(),
            oft,
        };
        for (index, (col, part)) in self.offsets().enumerate() {
            let seed = dropout_seed.map(|s| dropout::stream(s, index as u64));
            let adapter = part.lora.as_ref().map(|lora| match lora.magnitude {
                Some(_) => {
                    let w = self.part_weights(col, part);
                    let (xa, dora) = dora::forward(lora, w, x, y, out, seed);
                    AdapterSaved {
                        xa,
                        dora: Some(dora),
                    }
                }
                None => AdapterSaved {
                    xa: lora_forward(lora, x, y, out, col, seed),
                    dora: None,
                },
            });
            let factored = part.factored.as_ref().map(|f| AdapterSaved {
                xa: f.forward(x, (&mut *y, out, col), seed),
                dora: None,
            });
            saved.adapters.push(adapter.or(factored));
            // After the adapter: DoRA rescales the product without the bias.
            if let Some(bias) = &part.bias {
                add_bias(y, out, col, &bias.value);
            }
        }
        saved.ia3 = ia3::scale_outputs(&self.parts, y, out);
        saved
    }

    /// From `dy` (`[tokens, out]`) and the forward's input `x`, writes `dx` (`[tokens, in]`) and
    /// accumulates the gradients of every trainable part.
    pub fn backward(&mut self, dy: &[f32], x: &[f32], saved: &Saved, dx: &mut [f32]) {
        let (n, out) = (x.len() / self.in_features, self.out_features());
        let ia3_scaled = ia3::output_backward(&mut self.parts, dy, out, &saved.ia3);
        let dy = ia3_scaled.as_deref().unwrap_or(dy);
        // Field by field, so the parts can be borrowed mutably beside it.
        let products = self.bf16.as_ref().unwrap_or(&self.weight).as_ref();
        let stored = self.weight.as_ref();
        let dora_saved = saved
            .adapters
            .iter()
            .map(|a| a.as_ref().and_then(|a| a.dora.as_ref()));
        let starts = self.offsets().map(|(start, _)| start);
        let scaled = dora::scale_base_gradient(starts.zip(dora_saved), dy, out);
        match saved.oft.is_empty() {
            true => products.backward_input(scaled.as_deref().unwrap_or(dy), dx, false),
            false => rotated_backward(products, &mut self.parts, (dy, out), x, &saved.oft, dx),
        }
        let mut col = 0;
        for (index, part) in self.parts.iter_mut().enumerate() {
            let dy_part = MatRef::strided(&dy[col..], n, part.out_features, out);
            if let Some(grad) = &mut part.weight_grad {
                let rows = col..col + part.out_features;
                products.weight_gradient(dy, out, rows, x, grad);
            }
            if let Some(grad) = part.bias.as_mut().and_then(|b| b.grad.as_mut()) {
                add_column_sums(grad, dy, out, col);
            }
            if let (Some(lora), Some(adapter)) = (&mut part.lora, &saved.adapters[index]) {
                let seed = dropout::stream(saved.dropout_seed, index as u64);
                match &adapter.dora {
                    Some(dora) => {
                        let w = PartWeights {
                            products,
                            stored,
                            start: col,
                            rows: part.out_features,
                        };
                        dora::backward(lora, w, dy, out, x, &adapter.xa, dora, seed, dx);
                    }
                    None => lora_backward(lora, dy_part, x, &adapter.xa, seed, dx),
                }
            }
            if let (Some(f), Some(adapter)) = (&mut part.factored, &saved.adapters[index]) {
                let seed = dropout::stream(saved.dropout_seed, index as u64);
                f.backward((dy, out, col), x, &adapter.xa, seed, dx);
            }
            col += part.out_features;
        }
        ia3::input_backward(&mut self.parts, x, dx);
    }
}

impl Projection {
    /// The base product part by part, each part with an OFT rotation on its own rotated input
    /// (`y` `[tokens, out]` overwritten); returns the rotations per part.
    fn rotated_forward(&self, x: &[f32], y: &mut [f32]) -> Vec<Option<OftSaved>> {
        let (n, out) = (x.len() / self.in_features, self.out_features());
        let products = self.for_products().as_ref();
        let mut saved = Vec::with_capacity(self.parts.len());
        for (col, part) in self.offsets() {
            let rotated = part.oft.as_ref().map(|oft| oft.forward(x));
            let input = rotated.as_ref().map_or(x, |(r, _)| r.as_slice());
            let mut y_part = vec![0.0; n * part.out_features];
            products.with_rows(col..col + part.out_features, |w| {
                w.forward(input, &mut y_part)
            });
            for (row, p) in y
                .chunks_exact_mut(out)
                .zip(y_part.chunks_exact(part.out_features))
            {
                row[col..col + part.out_features].copy_from_slice(p);
            }
            saved.push(rotated.map(|(_, s)| s));
        }
        saved
    }
}

/// The backward of [`Projection::rotated_forward`]: `dx = Σ_parts (dy_p W_p)` with each rotated
/// part's term turned back (`· blockdiag(R)ᵀ`) and its rotation's gradient accumulated.
fn rotated_backward(
    products: MatrixRef,
    parts: &mut [Part],
    (dy, out): (&[f32], usize),
    x: &[f32],
    saved: &[Option<OftSaved>],
    dx: &mut [f32],
) {
    dx.fill(0.0);
    let mut col = 0;
    for (part, saved) in parts.iter_mut().zip(saved) {
        let rows = part.out_features;
        let dy_part: Vec<f32> = dy
            .chunks_exact(out)
            .flat_map(|row| &row[col..col + rows])
            .copied()
            .collect();
        match (&mut part.oft, saved) {
            (Some(oft), Some(saved)) => {
                let mut dx_rotated = vec![0.0; dx.len()];
                products.with_rows(col..col + rows, |w| {
                    w.backward_input(&dy_part, &mut dx_rotated, false)
                });
                oft.backward(x, &dx_rotated, saved, dx);
            }
            _ => products.with_rows(col..col + rows, |w| w.backward_input(&dy_part, dx, true)),
        }
        col += rows;
    }
}

/// Calls `adapt` on every part of `model` that `selects` picks (by its HF path), with its input
/// width and its index among the model's parts; a selection of no part is refused.
pub(super) fn adapt_selected_parts(
    model: &mut super::model::TrainModel,
    selects: impl Fn(&str) -> anyhow::Result<bool>,
    mut adapt: impl FnMut(&mut Part, usize, u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut stream = 0u64;
    let mut any = false;
    for block in &mut model.blocks {
        for projection in block.linears_mut() {
            let inp = projection.in_features;
            for part in &mut projection.parts {
                stream += 1;
                if selects(&part.path)? {
                    adapt(part, inp, stream)?;
                    any = true;
                }
            }
        }
    }
    anyhow::ensure!(
        any,
        "target_modules: selects none of the model's linear layers"
    );
    Ok(())
}

/// A block's products in training: `Context` is the block's dropout seed (None outside training),
/// from which each slot draws its own stream.
impl Project for Projection {
    type Context<'a> = Option<u64>;
    type Saved = Saved;

    fn out_features(&self) -> usize {
        Projection::out_features(self)
    }

    fn project(
        &self,
        x: &[f32],
        rows: usize,
        slot: Slot,
        block_seed: &Option<u64>,
    ) -> anyhow::Result<(Vec<f32>, Saved)> {
        let mut y = vec![0.0; rows * self.out_features()];
        let seed = block_seed.map(|seed| dropout::stream(seed, slot_stream(slot)));
        let saved = self.forward(x, &mut y, seed);
        Ok((y, saved))
    }
}

impl Backprop for Projection {
    fn backward(&mut self, dy: &[f32], x: &[f32], saved: &Saved, dx: &mut [f32]) {
        Projection::backward(self, dy, x, saved, dx)
    }
}

/// The sub-stream of a block's dropout seed that a slot's masks come from.
fn slot_stream(slot: Slot) -> u64 {
    match slot {
        Slot::Qkv => 0,
        Slot::O => 1,
        Slot::GateUp => 2,
        Slot::Down => 4,
    }
}

/// `y[:, col..col+out_p] += s · (dropout(x) Aᵀ) Bᵀ`; returns `s · dropout(x) Aᵀ` for the backward.
pub(super) fn lora_forward(
    lora: &Lora,
    x: &[f32],
    y: &mut [f32],
    y_cols: usize,
    col: usize,
    dropout_seed: Option<u64>,
) -> Vec<f32> {
    let n = x.len() / lora.in_features;
    let xa = lora_down(lora, &lora_input(lora, x, dropout_seed));
    let y_part = MatMut::strided(&mut y[col..], n, lora.out_features, y_cols);
    lora_up(lora, &xa, y_part, true);
    xa
}

/// The adapter's input: `x`, or `dropout(x)` in training (`dropout_seed` given).
pub(super) fn lora_input<'x>(
    lora: &Lora,
    x: &'x [f32],
    dropout_seed: Option<u64>,
) -> Cow<'x, [f32]> {
    lora_input_with(lora.dropout, x, dropout_seed)
}

/// An adapter's input at dropout rate `p`: `x`, or `dropout(x)` in training.
pub(super) fn lora_input_with<'x>(
    p: f32,
    x: &'x [f32],
    dropout_seed: Option<u64>,
) -> Cow<'x, [f32]> {
    match dropout_seed {
        Some(seed) if p > 0.0 => Cow::Owned(dropout::apply(x, p, seed)),
        _ => Cow::Borrowed(x),
    }
}

/// `s · u Aᵀ`, `[tokens, r]`.
pub(super) fn lora_down(lora: &Lora, u: &[f32]) -> Vec<f32> {
    let (n, r, inp) = (u.len() / lora.in_features, lora.r, lora.in_features);
    let mut xa = vec![0.0; n * r];
    matmul(
        MatMut::new(&mut xa, n, r),
        MatRef::new(u, n, inp),
        MatRef::new(&lora.a, r, inp).t(),
        false,
        Threads::Pool,
    );
    xa.par_iter_mut().for_each(|v| *v *= lora.scale);
    xa
}

/// `y = xa Bᵀ`, or `y += xa Bᵀ` when `accumulate`.
pub(super) fn lora_up(lora: &Lora, xa: &[f32], y: MatMut, accumulate: bool) {
    let (n, r) = (xa.len() / lora.r, lora.r);
    matmul(
        y,
        MatRef::new(xa, n, r),
        MatRef::new(&lora.b, lora.out_features, r).t(),
        accumulate,
        Threads::Pool,
    );
}

/// With `g = dy[:, part]` and `xa = s · dropout(x) Aᵀ`: `dB += gᵀ xa`, `dxa = s · g B`,
/// `dA += dxaᵀ dropout(x)`, `dx += dropout'(dxa A)`.
pub(super) fn lora_backward(
    lora: &mut Lora,
    g: MatRef,
    x: &[f32],
    xa: &[f32],
    seed: u64,
    dx: &mut [f32],
) {
    let (n, r, inp, out) = (
        x.len() / lora.in_features,
        lora.r,
        lora.in_features,
        lora.out_features,
    );
    matmul(
        MatMut::new(&mut lora.grad_b, out, r),
        g.t(),
        MatRef::new(xa, n, r),
        true,
        Threads::Pool,
    );
    let mut dxa = vec![0.0; n * r];
    matmul(
        MatMut::new(&mut dxa, n, r),
        g,
        MatRef::new(&lora.b, out, r),
        false,
        Threads::Pool,
    );
    dxa.par_iter_mut().for_each(|v| *v *= lora.scale);
    // The forward's mask, drawn once more for both of its uses here.
    let mask = (lora.dropout > 0.0).then(|| dropout::mask(x.len(), lora.dropout, seed));
    let dropped: Option<Vec<f32>> = mask
        .as_ref()
        .map(|m| x.par_iter().zip(m).map(|(x, m)| x * m).collect());
    matmul(
        MatMut::new(&mut lora.grad_a, r, inp),
        MatRef::new(&dxa, n, r).t(),
        MatRef::new(dropped.as_deref().unwrap_or(x), n, inp),
        true,
        Threads::Pool,
    );
    if let Some(mask) = mask {
        let mut dx_lora = vec![0.0; n * inp];
        matmul(
            MatMut::new(&mut dx_lora, n, inp),
            MatRef::new(&dxa, n, r),
            MatRef::new(&lora.a, r, inp),
            false,
            Threads::Pool,
        );
        dx.par_iter_mut()
            .zip(dx_lora)
            .zip(mask)
            .for_each(|((d, g), m)| *d += g * m);
    } else {
        matmul(
            MatMut::new(dx, n, inp),
            MatRef::new(&dxa, n, r),
            MatRef::new(&lora.a, r, inp),
            true,
            Threads::Pool,
        );
    }
}

/// `y[:, col..col+len(b)] += b` on every row.
fn add_bias(y: &mut [f32], y_cols: usize, col: usize, b: &[f32]) {
    y.par_chunks_mut(y_cols).for_each(|row| {
        for (v, &b) in row[col..col + b.len()].iter_mut().zip(b) {
            *v += b;
        }
    });
}

/// `grad += Σ_rows dy[:, col..col+len(grad)]` (see [`column_sums`]).
fn add_column_sums(grad: &mut [f32], dy: &[f32], dy_cols: usize, col: usize) {
    let dy = Columns {
        data: dy,
        stride: dy_cols,
        start: col,
    };
    let sums = column_sums(grad.len(), dy, None);
    for (g, s) in grad.iter_mut().zip(sums) {
        *g += s as f32;
    }
}
