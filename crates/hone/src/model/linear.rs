//! Linear layers of the inference model: `y = x·Wᵀ + b` for one or several projections side by
//! side (q|k|v, gate|up), each weight either an f32 tensor or a matrix in its stored type, plus an
//! optional LoRA update kept apart from the weight.
//!
//! A LoRA adapter on a quantized base is applied unmerged, `y = W_q·x + s·B(A·x)`: merging would
//! either round the update into the base's 4-bit grid (losing most of it) or expand the weight to
//! f32 (the memory the stored path exists to save). On the f32 path (`--exact`) adapters are merged
//! into the weights instead, as PEFT's `merge_and_unload` does. A DoRA update unmerged is
//! `y = g·(W·x + s·B(A·x)) + b`, with `g = m / ‖W + s·B·A‖` per output row computed once at load.
//! An IA3 vector `l` scales the outputs, `y = l·(W·x + b)`, or, for a feedforward module, the
//! inputs, `y = W·(l·x) + b`. An OFT rotation turns the input first, `y = W·(x·blockdiag(R)) + b`
//! (its `R` built once at load), so a projection with one gets a product of its own.
//!
//! A server holding several adapters over one base passes their updates per call instead
//! ([`RowsLora`]): each group of rows gets its own adapter's `s·B(A·x)`, so requests for different
//! adapters share one product with the base weights.

use std::ops::Range;
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{Tensor, D};

use crate::adapters::dora::{adapted_row_norms, factors};
use crate::adapters::ia3::SHARED_INPUT_SCALING;
use crate::adapters::{Ia3Vector, LoraWeights, OftWeights};
use crate::kernels::columns::{rows_times, scale_columns};
use crate::kernels::few_rows;
use crate::kernels::rotation;
use crate::kernels::stored::{self, StoredMatrix};

/// A weight matrix `[out, in]`: f32, or kept in its stored type.
#[derive(Clone)]
pub enum Weight {
    F32(Tensor),
    Stored(StoredMatrix),
}

impl Weight {
    /// `[rows, cols]`, or the length of a vector.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            Weight::F32(t) => t.dims().to_vec(),
            Weight::Stored(m) => vec![m.rows(), m.cols()],
        }
    }

    /// The f32 tensor of an f32 weight (norms and biases are always f32).
    pub fn f32_tensor(&self) -> Result<&Tensor> {
        match self {
            Weight::F32(t) => Ok(t),
            Weight::Stored(m) => bail!(
                "a {} tensor where an f32 one is expected",
                m.ggml_type().name()
            ),
        }
    }

    /// Rows `ids` as f32, `[ids.len(), cols]` flattened: an embedding lookup.
    pub fn gather_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        match self {
            Weight::F32(t) => {
                let index = Tensor::from_slice(ids, ids.len(), t.device())?;
                Ok(t.index_select(&index, 0)?.flatten_all()?.to_vec1::<f32>()?)
            }
            Weight::Stored(m) => {
                let mut out = vec![0f32; ids.len() * m.cols()];
                for (&id, out) in ids.iter().zip(out.chunks_exact_mut(m.cols())) {
                    m.dequantize_rows(id as usize..id as usize + 1, out);
                }
                Ok(out)
            }
        }
    }

    /// Rows `rows` of a matrix as f32 into `out` (`rows.len() × cols`).
    pub fn rows_into(&self, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        match self {
            Weight::F32(t) => with_f32_slice(t, |w| {
                let cols = out.len() / rows.len().max(1);
                out.copy_from_slice(&w[rows.start * cols..rows.end * cols]);
                Ok(())
            }),
            Weight::Stored(m) => {
                m.dequantize_rows(rows, out);
                Ok(())
            }
        }
    }

    /// Bytes the weight occupies in memory.
    pub fn n_bytes(&self) -> usize {
        match self {
            Weight::F32(t) => t.elem_count() * 4,
            Weight::Stored(m) => m.n_bytes(),
        }
    }
}

/// An unmerged LoRA update `scale · B·A`, A `[r, in]`, B `[out, r]`, with DoRA's factors.
#[derive(Clone)]
pub struct LoraDelta {
    a: Vec<f32>,
    b: Vec<f32>,
    r: usize,
    scale: f32,
    /// DoRA's `m / ‖W + s·B·A‖` per output row (None: plain LoRA).
    dora: Option<Vec<f32>>,
}

impl LoraDelta {
    /// The update `l` of a weight whose rows `weight_rows` writes as f32 into a buffer of
    /// `[out, in]` (read only for DoRA, once).
    pub fn new(
        l: &LoraWeights,
        weight_rows: impl FnOnce(Range<usize>, &mut [f32]) -> Result<()>,
    ) -> Result<LoraDelta> {
        let dora = match &l.magnitude {
            Some(m) => {
                let cols = l.in_features;
                let mut w = vec![0f32; l.out_features * cols];
                weight_rows(0..l.out_features, &mut w)?;
                let norms = adapted_row_norms(l.low_rank(), cols, &|rows, out| {
                    out.copy_from_slice(&w[rows.start * cols..rows.end * cols])
                });
                Some(factors(m, &norms))
            }
            None => None,
        };
        Ok(LoraDelta {
            a: l.a.clone(),
            b: l.b.clone(),
            r: l.r,
            scale: l.scale as f32,
            dora,
        })
    }

    /// Applies the update of token rows `x` `[rows, in]` to `y` (`rows` rows of width `stride`,
    /// holding `W·x + bias` in columns `offset..offset + out`): adds `scale · B(A·x)`, and for
    /// DoRA rescales the product without the bias, `g·(W·x + scale · B(A·x)) + bias`.
    fn add_to(
        &self,
        x: &[f32],
        rows: usize,
        y: &mut [f32],
        stride: usize,
        offset: usize,
        bias: Option<&[f32]>,
    ) {
        let inner = x.len() / rows;
        let width = self.b.len() / self.r;
        let xa = few_rows::matmul_transposed(x, &self.a, rows, inner, self.r);
        let delta = few_rows::matmul_transposed(&xa, &self.b, rows, self.r, width);
        for (row, d) in y.chunks_exact_mut(stride).zip(delta.chunks_exact(width)) {
            let part = &mut row[offset..offset + width];
            match &self.dora {
                None => {
                    for (v, d) in part.iter_mut().zip(d) {
                        *v += self.scale * d;
                    }
                }
                Some(factors) => {
                    for (o, (v, d)) in part.iter_mut().zip(d).enumerate() {
                        let b = bias.map_or(0.0, |b| b[o]);
                        *v = factors[o] * (*v - b + self.scale * d) + b;
                    }
                }
            }
        }
    }
}

/// OFT's rotation of a projection's input, `x · blockdiag(R_1, …)`, its blocks built once.
#[derive(Clone)]
pub struct InputRotation {
    /// `[stored blocks, b, b]` (one block when all share it).
    r: Arc<Vec<f32>>,
    b: usize,
}

impl InputRotation {
    pub fn new(w: &OftWeights) -> InputRotation {
        InputRotation {
            r: Arc::new(w.rotations()),
            b: w.block_size,
        }
    }

    /// `x` (`[rows, in]`) rotated.
    fn apply(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let blocks = x.len() / rows.max(1) / self.b;
        rotation::rotate(x, &self.r, self.b, blocks)
    }
}

/// What one adapter changes in one projection: its LoRA update, IA3 vector or OFT rotation and,
/// for adapters that train biases, the shift from the base's bias to the adapter's.
#[derive(Clone, Default)]
pub struct PartUpdate {
    pub lora: Option<LoraDelta>,
    pub ia3: Option<Ia3Vector>,
    pub oft: Option<InputRotation>,
    pub bias_shift: Option<Vec<f32>>,
}

/// The updates of one adapter for some token rows of a product: `parts[p]` updates the layer's
/// `p`-th projection.
pub struct RowsLora<'a> {
    /// Token rows, ascending.
    pub rows: &'a [usize],
    pub parts: &'a [PartUpdate],
}

/// One projection (an HF module such as `self_attn.q_proj`).
pub struct Projection {
    pub weight: Weight,
    pub bias: Option<Vec<f32>>,
    pub lora: Option<LoraDelta>,
    pub ia3: Option<Ia3Vector>,
    pub oft: Option<InputRotation>,
}

impl Projection {
    fn out_features(&self) -> usize {
        // Not `dims()`, which allocates: this runs for every product of a decoding step.
        match &self.weight {
            Weight::F32(t) => t.dims()[0],
            Weight::Stored(m) => m.rows(),
        }
    }
}

/// Projections of the same input computed together, their outputs concatenated in order.
pub struct Linear {
    parts: Vec<Projection>,
    /// Output widths of the projections as given, before f32 ones were stacked: where each
    /// projection's columns are, for updates passed per call.
    widths: Vec<usize>,
}

impl Linear {
    /// The projections side by side. f32 ones without LoRA are stacked into one matrix: one larger
    /// product keeps the matmul kernel busier than several narrow ones.
    pub fn new(parts: Vec<Projection>) -> Result<Linear> {
        let widths = parts.iter().map(Projection::out_features).collect();
        let scales_input = |p: &Projection| p.ia3.as_ref().is_some_and(|v| v.feedforward);
        if parts.len() > 1 && parts.iter().any(scales_input) {
            bail!(SHARED_INPUT_SCALING);
        }
        let all_plain_f32 = parts.iter().all(|p| {
            matches!(p.weight, Weight::F32(_))
                && p.lora.is_none()
                && p.ia3.is_none()
                && p.oft.is_none()
        });
        if parts.len() < 2 || !all_plain_f32 {
            return Ok(Linear { parts, widths });
        }
        let weights = parts
            .iter()
            .map(|p| p.weight.f32_tensor())
            .collect::<Result<Vec<_>>>()?;
        let biases: Option<Vec<f32>> = parts
            .iter()
            .map(|p| p.bias.clone())
            .collect::<Option<Vec<_>>>()
            .map(|b| b.concat());
        Ok(Linear {
            parts: vec![Projection {
                weight: Weight::F32(Tensor::cat(&weights, 0)?),
                bias: biases,
                lora: None,
                ia3: None,
                oft: None,
            }],
            widths,
        })
    }

    /// Output width of each projection, in order.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// The bias of projection `p` (None: it has none).
    pub fn part_bias(&self, p: usize) -> Option<&[f32]> {
        if self.parts.len() == self.widths.len() {
            return self.parts[p].bias.as_deref();
        }
        let offset: usize = self.widths[..p].iter().sum();
        let stacked = self.parts[0].bias.as_deref()?;
        Some(&stacked[offset..offset + self.widths[p]])
    }

    pub fn out_features(&self) -> usize {
        self.parts.iter().map(Projection::out_features).sum()
    }

    /// The weight when the layer is one f32 matrix with nothing added (for the fused LM-head loss).
    pub fn plain_f32_weight(&self) -> Option<&Tensor> {
        match &self.parts[..] {
            [Projection {
                weight: Weight::F32(w),
                bias: None,
                lora: None,
                ia3: None,
                oft: None,
            }] => Some(w),
            _ => None,
        }
    }

    /// `x` `[..., in]` to `[..., out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, &[])
    }

    /// [`Self::forward`], plus each group's LoRA updates on its rows (rows of the flattened `x`).
    pub fn forward_with(&self, x: &Tensor, lora: &[RowsLora]) -> Result<Tensor> {
        let inner = x.dim(D::Minus1)?;
        let rows = x.elem_count() / inner;
        let mut out_shape = x.dims().to_vec();
        *out_shape.last_mut().expect("x has a last dim") = self.out_features();
        let x = x.flatten_all()?.to_vec1::<f32>()?;
        let y = self.forward_rows_with(&x, rows, lora)?;
        Ok(Tensor::from_vec(y, out_shape, &candle_core::Device::Cpu)?)
    }

    /// [`Self::forward_rows`], plus each group's LoRA updates on its rows.
    pub fn forward_rows_with(&self, x: &[f32], rows: usize, lora: &[RowsLora]) -> Result<Vec<f32>> {
        let mut y = self.forward_rows(x, rows)?;
        self.add_row_updates(x, rows, &mut y, lora)?;
        Ok(y)
    }

    /// `x` `[rows, in]` (flattened) to `[rows, out]`.
    pub fn forward_rows(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let n = self.out_features();
        let scaled = self.parts[0]
            .ia3
            .as_ref()
            .filter(|v| v.feedforward)
            .map(|v| rows_times(x, &v.values, 0.0));
        let mut y = match self.parts.iter().any(|p| p.oft.is_some()) {
            true => self.rotated_products(x, rows)?,
            false => self.products(scaled.as_deref().unwrap_or(x), rows)?,
        };
        let mut offset = 0;
        for p in &self.parts {
            let width = p.out_features();
            if let Some(bias) = &p.bias {
                for row in y.chunks_exact_mut(n) {
                    for (v, b) in row[offset..offset + width].iter_mut().zip(bias) {
                        *v += b;
                    }
                }
            }
            if let Some(lora) = &p.lora {
                lora.add_to(x, rows, &mut y, n, offset, p.bias.as_deref());
            }
            if let Some(v) = p.ia3.as_ref().filter(|v| !v.feedforward) {
                scale_columns(&mut y, n, offset, &v.values);
            }
            offset += width;
        }
        Ok(y)
    }

    /// Applies each group's updates to its rows of `y` (`x` `[rows, in]`, `y` `[rows, out]`, the
    /// base layer's output).
    fn add_row_updates(
        &self,
        x: &[f32],
        rows: usize,
        y: &mut [f32],
        lora: &[RowsLora],
    ) -> Result<()> {
        let (inner, n) = (x.len() / rows.max(1), self.out_features());
        for group in lora {
            let gather = |data: &[f32], width: usize| -> Vec<f32> {
                group
                    .rows
                    .iter()
                    .flat_map(|&r| &data[r * width..(r + 1) * width])
                    .copied()
                    .collect()
            };
            let xs = gather(x, inner);
            let mut ys = gather(y, n);
            let mut offset = 0;
            for (p, (width, update)) in self.widths.iter().zip(group.parts).enumerate() {
                if let Some(delta) = &update.lora {
                    let bias = self.part_bias(p);
                    delta.add_to(&xs, group.rows.len(), &mut ys, n, offset, bias);
                }
                if let Some(shift) = &update.bias_shift {
                    for row in ys.chunks_exact_mut(n) {
                        for (v, s) in row[offset..offset + width].iter_mut().zip(shift) {
                            *v += s;
                        }
                    }
                }
                match &update.ia3 {
                    // W·(l·x) = W·x + W·((l − 1)·x): the base rows plus one product more.
                    Some(v) if v.feedforward => {
                        let shifted = rows_times(&xs, &v.values, -1.0);
                        let extra = self.products(&shifted, group.rows.len())?;
                        ys.iter_mut().zip(extra).for_each(|(y, e)| *y += e);
                    }
                    Some(v) => scale_columns(&mut ys, n, offset, &v.values),
                    None => {}
                }
                // W·(x·R) = W·x + W·(x·R − x): the base rows plus this projection's product more.
                if let Some(r) = &update.oft {
                    let mut shifted = r.apply(&xs, group.rows.len());
                    shifted.iter_mut().zip(&xs).for_each(|(s, x)| *s -= x);
                    let extra = self.part_product(p, &shifted, group.rows.len())?;
                    for (row, e) in ys.chunks_exact_mut(n).zip(extra.chunks_exact(*width)) {
                        row[offset..offset + width]
                            .iter_mut()
                            .zip(e)
                            .for_each(|(y, e)| *y += e);
                    }
                }
                offset += width;
            }
            for (&r, updated) in group.rows.iter().zip(ys.chunks_exact(n)) {
                y[r * n..(r + 1) * n].copy_from_slice(updated);
            }
        }
        Ok(())
    }

    /// Rows `rows` of projection `p`'s weight as f32 into `out`.
    pub fn part_weight_rows(&self, p: usize, rows: Range<usize>, out: &mut [f32]) -> Result<()> {
        if self.parts.len() == self.widths.len() {
            return self.parts[p].weight.rows_into(rows, out);
        }
        let first: usize = self.widths[..p].iter().sum();
        self.parts[0]
            .weight
            .rows_into(first + rows.start..first + rows.end, out)
    }

    /// `x·Wᵀ` of projection `p` alone, `[rows, width]`.
    fn part_product(&self, p: usize, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        if self.parts.len() == self.widths.len() {
            return weight_product(&self.parts[p].weight, x, rows);
        }
        let inner = x.len() / rows.max(1);
        let mut w = vec![0f32; self.widths[p] * inner];
        self.part_weight_rows(p, 0..self.widths[p], &mut w)?;
        let w = Tensor::from_vec(w, (self.widths[p], inner), &candle_core::Device::Cpu)?;
        f32_product(&w, x, rows)
    }

    /// `x·Wᵀ` part by part, each part with an OFT rotation on its own rotated input.
    fn rotated_products(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let n = self.out_features();
        let mut y = vec![0f32; rows * n];
        let mut offset = 0;
        for p in &self.parts {
            let width = p.out_features();
            let rotated = p.oft.as_ref().map(|r| r.apply(x, rows));
            let part = weight_product(&p.weight, rotated.as_deref().unwrap_or(x), rows)?;
            for (row, part) in y.chunks_exact_mut(n).zip(part.chunks_exact(width)) {
                row[offset..offset + width].copy_from_slice(part);
            }
            offset += width;
        }
        Ok(y)
    }

    /// `x·Wᵀ` of every part, side by side: stored matrices in one fused product.
    fn products(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let stored: Option<Vec<&StoredMatrix>> = self
            .parts
            .iter()
            .map(|p| match &p.weight {
                Weight::Stored(m) => Some(m),
                Weight::F32(_) => None,
            })
            .collect();
        if let Some(stored) = stored {
            return Ok(stored::matmul(&stored, x, rows));
        }
        let n = self.out_features();
        let mut y = vec![0f32; rows * n];
        let mut offset = 0;
        for p in &self.parts {
            let width = p.out_features();
            let part = weight_product(&p.weight, x, rows)?;
            for (row, part) in y.chunks_exact_mut(n).zip(part.chunks_exact(width)) {
                row[offset..offset + width].copy_from_slice(part);
            }
            offset += width;
        }
        Ok(y)
    }
}

/// `x·Wᵀ` for one weight.
fn weight_product(w: &Weight, x: &[f32], rows: usize) -> Result<Vec<f32>> {
    match w {
        Weight::F32(w) => f32_product(w, x, rows),
        Weight::Stored(m) => Ok(stored::matmul(&[m], x, rows)),
    }
}

/// `x·Wᵀ` for an f32 weight: the few-row kernel for decoding, the GEMM otherwise.
fn f32_product(w: &Tensor, x: &[f32], rows: usize) -> Result<Vec<f32>> {
    let (out, inner) = w.dims2()?;
    if rows <= few_rows::MAX_ROWS {
        return with_f32_slice(w, |w| {
            Ok(few_rows::matmul_transposed(x, w, rows, inner, out))
        });
    }
    let x = Tensor::from_slice(x, (rows, inner), w.device())?;
    Ok(x.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?)
}

/// Run `f` on the f32 elements of a contiguous CPU tensor, without copying them out.
pub fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        bail!("the fused kernels run on CPU tensors");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("the fused kernels need a contiguous tensor");
    };
    f(&cpu.as_slice::<f32>()?[start..end])
}
