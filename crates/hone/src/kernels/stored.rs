//! Matrix products on weights kept in their stored type — ggml quantized blocks, f16 or bf16 —
//! read in place from the model file's memory map, never expanded to f32 as a whole.
//!
//! Two ways through, by the number of activation rows:
//! - a few rows (decoding: one token per sequence of a batch), [`dots`]: the activations are
//!   quantized once ([`qdot`]) and every weight row is dotted with each of them while it is in L1
//!   (up to four at once where a multi-row kernel exists), so a step streams the weights once, in
//!   their stored size;
//! - many rows (a prompt, a perplexity window): quantized and bf16 weights, where the CPU has bf16
//!   units ([`bf16::kernel`]: AMX, or AVX-512 BF16 where it is fast), go through
//!   [`bf16::prompt`]: blocks of weight rows dequantized and rounded to bf16, multiplied by every
//!   row rounded to bf16, accumulating in f32. AMX runs ~9× a core's f32 rate, and the roundings
//!   are small beside the quantization itself (perplexity of the default Q4_1 model moves 0.15%
//!   from the f32 path's, against 0.03% for the f32 GEMM). f16 and f32 weights would lose bits to
//!   bf16, more than anything else costs them, so they take the f32 way, as every type does where
//!   there are no bf16 units: tiles of weight rows dequantized into a small f32 buffer and
//!   multiplied by all rows with the f32 GEMM, equal to the f32 model up to summation order.
//!   Either way the dequantization is paid once per weight and product.
//!
//! Several matrices with the same input (q|k|v, gate|up) run as one product: one parallel pass over
//! all their rows, one quantization of the input.

use std::ops::Range;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use memmap2::Mmap;
use rayon::prelude::*;

mod dots;

pub use dots::set_batch_invariant;

use super::bf16;
use super::matmul::{matmul as gemm, MatMut, MatRef, Threads};
use super::qdot::{float16, fourbit, kquants, legacy};
use crate::quant::{self, GgmlType};

/// Up to this many activation rows take the dot-product path; more take the tiled GEMM.
pub const FEW_ROWS: usize = 16;
/// f32 bytes of a dequantized GEMM tile: large tiles amortize the GEMM's packing of the activations
/// (once per tile), small ones stay in cache. 64-row tiles ran prompts at 0.6× the speed of 2 MiB.
const TILE_BYTES: usize = 2 << 20;

/// The bytes of a weight matrix: a range of a memory-mapped file, or an owned buffer.
#[derive(Clone)]
pub enum WeightBytes {
    Mapped { map: Arc<Mmap>, range: Range<usize> },
    Owned(Arc<Vec<u8>>),
}

impl WeightBytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            WeightBytes::Mapped { map, range } => &map[range.clone()],
            WeightBytes::Owned(v) => v,
        }
    }
}

/// A `[rows, cols]` weight matrix in a ggml storage type (PyTorch's `[out, in]` orientation).
#[derive(Clone)]
pub struct StoredMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    bytes: WeightBytes,
    /// Row `r` of the matrix is stored row `row_order[r]`: llama.cpp's q/k row permutation is undone
    /// by indexing rather than by copying the file's bytes.
    row_order: Option<Arc<[u32]>>,
}

impl std::fmt::Debug for StoredMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} [{}, {}]", self.ty.name(), self.rows, self.cols)
    }
}

impl StoredMatrix {
    /// Checks that a kernel reads `ty`, that rows are whole blocks and that `bytes` holds them all.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, bytes: WeightBytes) -> Result<Self> {
        if row_dot(ty).is_none() {
            bail!(
                "{} weights have no matrix-product kernel (Hone multiplies F32, F16, BF16, Q4_0, \
                 Q4_1, Q5_0, Q5_1, Q8_0, Q2_K–Q6_K, NF4 and FP4 weights)",
                ty.name()
            );
        }
        let block = ty.block_size();
        if !cols.is_multiple_of(block) {
            bail!(
                "rows of {cols} values are not a whole number of {} blocks ({block} values each)",
                ty.name()
            );
        }
        let row_bytes = cols / block * ty.type_size();
        let have = bytes.as_slice().len();
        ensure!(
            have == rows * row_bytes,
            "{rows}×{cols} {} values take {} bytes, the tensor has {have}",
            ty.name(),
            rows * row_bytes
        );
        Ok(StoredMatrix {
            ty,
            rows,
            cols,
            row_bytes,
            bytes,
            row_order: None,
        })
    }

    /// The same matrix with its bytes copied out of any memory map into an owned buffer, so the
    /// map (and every page of the file read through it) can be released.
    pub fn into_owned(self) -> Self {
        let bytes = match self.bytes {
            WeightBytes::Mapped { .. } => {
                WeightBytes::Owned(Arc::new(self.bytes.as_slice().to_vec()))
            }
            owned => owned,
        };
        StoredMatrix { bytes, ..self }
    }

    /// The same matrix with its rows read in `order` (row `r` is stored row `order[r]`).
    pub fn with_row_order(mut self, order: Vec<u32>) -> Self {
        assert_eq!(order.len(), self.rows, "one index per row");
        assert!(order.iter().all(|&r| (r as usize) < self.rows));
        self.row_order = Some(order.into());
        self
    }

    pub fn ggml_type(&self) -> GgmlType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of storage the matrix reads.
    pub fn n_bytes(&self) -> usize {
        self.rows * self.row_bytes
    }

    /// The stored bytes of row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> &[u8] {
        let stored = self.row_order.as_ref().map_or(r, |o| o[r] as usize);
        &self.bytes.as_slice()[stored * self.row_bytes..][..self.row_bytes]
    }

    /// Rows `rows` as f32 into `out` (`rows.len() × cols` values).
    pub fn dequantize_rows(&self, rows: Range<usize>, out: &mut [f32]) {
        self.dequantize_block(rows, 0..self.cols, out);
    }

    /// Columns `cols` of rows `rows` as f32 into `out` (`rows.len() × cols.len()` values, row-major).
    ///
    /// # Panics
    /// If `cols` does not start and end on block boundaries, or `out` is not the block's size.
    pub fn dequantize_block(&self, rows: Range<usize>, cols: Range<usize>, out: &mut [f32]) {
        let (block, size) = (self.ty.block_size(), self.ty.type_size());
        assert!(
            cols.start.is_multiple_of(block) && cols.end.is_multiple_of(block),
            "columns {cols:?} are not whole {} blocks",
            self.ty.name()
        );
        assert_eq!(
            out.len(),
            rows.len() * cols.len(),
            "out is not the block's size"
        );
        let bytes = cols.start / block * size..cols.end / block * size;
        for (r, out) in rows.zip(out.chunks_exact_mut(cols.len())) {
            quant::dequantize_into(self.ty, &self.row(r)[bytes.clone()], out)
                .expect("the row's size was checked when the matrix was made");
        }
    }

    /// `parts` stacked by rows into one owned matrix (each part's rows in its own row order):
    /// they must share a type and a width.
    pub fn stack_rows(parts: &[&StoredMatrix]) -> Result<StoredMatrix> {
        let first = parts.first().context("nothing to stack")?;
        if let Some(other) = parts
            .iter()
            .find(|p| p.ty != first.ty || p.cols != first.cols)
        {
            bail!(
                "cannot stack a {} [{}, {}] matrix under a {} [{}, {}] one",
                other.ty.name(),
                other.rows,
                other.cols,
                first.ty.name(),
                first.rows,
                first.cols
            );
        }
        let rows: usize = parts.iter().map(|p| p.rows).sum();
        let mut bytes = Vec::with_capacity(rows * first.row_bytes);
        for part in parts {
            (0..part.rows).for_each(|r| bytes.extend_from_slice(part.row(r)));
        }
        StoredMatrix::new(
            first.ty,
            rows,
            first.cols,
            WeightBytes::Owned(Arc::new(bytes)),
        )
    }

    /// The whole matrix as f32, row-major.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        let rows_per_chunk = (TILE_BYTES / 4 / self.cols).max(1);
        out.par_chunks_mut(rows_per_chunk * self.cols)
            .enumerate()
            .for_each(|(t, out)| {
                let start = t * rows_per_chunk;
                self.dequantize_rows(start..start + out.len() / self.cols, out)
            });
        out
    }
}

/// A weight row's dot product with one activation row, by the activation format it wants.
#[derive(Clone, Copy)]
enum RowDot {
    Q8(legacy::DotQ8),
    Q8K(kquants::DotQ8K),
    F32(float16::DotF32),
}

fn row_dot(ty: GgmlType) -> Option<RowDot> {
    legacy::dot_q8(ty)
        .map(RowDot::Q8)
        .or_else(|| kquants::dot_q8k(ty).map(RowDot::Q8K))
        .or_else(|| float16::dot_f32(ty).map(RowDot::F32))
        .or_else(|| fourbit::dot_f32(ty).map(RowDot::F32))
}

/// `y[m, Σ rows] = x[m, k] · [W₀; W₁; …]ᵀ`: the outputs of every matrix side by side, row-major.
///
/// # Panics
/// If the matrices differ in width or `x` is not `m` rows of that width.
pub fn matmul(parts: &[&StoredMatrix], x: &[f32], m: usize) -> Vec<f32> {
    // f16 and f32 weights would lose bits to bf16 (see above).
    let suits_bf16 = |p: &&StoredMatrix| !matches!(p.ty, GgmlType::F16 | GgmlType::F32);
    let kernel = bf16::kernel().filter(|_| parts.iter().all(suits_bf16));
    matmul_on(parts, x, m, kernel)
}

/// [`matmul`] with many rows on the bf16 `kernel`, or in f32 where there is none.
fn matmul_on(
    parts: &[&StoredMatrix],
    x: &[f32],
    m: usize,
    kernel: Option<bf16::Kernel>,
) -> Vec<f32> {
    check_widths(parts, x, m);
    // The many-row paths write the output transposed (`[n, m]`), so each task owns a contiguous
    // slice.
    match kernel {
        _ if m <= FEW_ROWS => dots::products(parts, x, m),
        Some(kernel) => untranspose(
            parts,
            &bf16::prompt::products_transposed(kernel, parts, x, m),
            m,
        ),
        None => untranspose(parts, &tiled_products(parts, x, m), m),
    }
}

/// [`matmul`] in f32 throughout, whatever the number of rows (training, where the activations'
/// 8-bit rounding of the few-row path would bias the gradients): equal to the product with the
/// dequantized matrices up to summation order.
pub fn matmul_f32(parts: &[&StoredMatrix], x: &[f32], m: usize) -> Vec<f32> {
    check_widths(parts, x, m);
    untranspose(parts, &tiled_products(parts, x, m), m)
}

/// The width `k` every matrix shares, after checking `x` is `[m, k]`.
fn check_widths(parts: &[&StoredMatrix], x: &[f32], m: usize) -> usize {
    let k = shared_width(parts);
    assert_eq!(x.len(), m * k, "x is not [{m}, {k}]");
    k
}

/// The width every matrix of a stack shares.
fn shared_width(parts: &[&StoredMatrix]) -> usize {
    let k = parts[0].cols;
    assert!(
        parts.iter().all(|p| p.cols == k),
        "matrices of different widths"
    );
    k
}

/// `[m, n]` from the products' transposed `[n, m]` output, in bands of output rows: each band
/// reads one cache line of every column, in parallel when there are several bands (a training
/// batch's thousand rows took a seventh of a step transposed element by element on one thread).
fn untranspose(parts: &[&StoredMatrix], yt: &[f32], m: usize) -> Vec<f32> {
    const BAND: usize = 16;
    let n: usize = parts.iter().map(|p| p.rows).sum();
    let mut y = vec![0f32; m * n];
    let band = |(b, rows): (usize, &mut [f32])| {
        let first = b * BAND;
        let count = rows.len() / n;
        for (j, column) in yt.chunks_exact(m).enumerate() {
            for (i, &value) in column[first..first + count].iter().enumerate() {
                rows[i * n + j] = value;
            }
        }
    };
    if m <= BAND {
        band((0, &mut y));
    } else {
        y.par_chunks_mut(BAND * n).enumerate().for_each(band);
    }
    y
}

/// A run of one matrix's rows and the slice of the transposed output they fill.
pub(super) struct Task<'a> {
    pub(super) matrix: &'a StoredMatrix,
    pub(super) rows: Range<usize>,
    pub(super) out: &'a mut [f32],
}

/// Splits the transposed output `yt` (`[Σ rows, m]`) into tasks of `per_task` weight rows.
pub(super) fn tasks<'a>(
    parts: &[&'a StoredMatrix],
    yt: &'a mut [f32],
    m: usize,
    per_task: usize,
) -> Vec<Task<'a>> {
    let mut out = Vec::new();
    let mut rest = yt;
    for &matrix in parts {
        for start in (0..matrix.rows).step_by(per_task) {
            let rows = start..(start + per_task).min(matrix.rows);
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(rows.len() * m);
            out.push(Task {
                matrix,
                rows,
                out: head,
            });
            rest = tail;
        }
    }
    out
}

/// The many-row path: tiles of weight rows dequantized to f32, multiplied by all rows of `x`.
fn tiled_products(parts: &[&StoredMatrix], x: &[f32], m: usize) -> Vec<f32> {
    let n: usize = parts.iter().map(|p| p.rows).sum();
    let k = parts[0].cols;
    let tile_rows = (TILE_BYTES / (4 * k)).clamp(16, 256);
    let mut yt = vec![0f32; n * m];
    tasks(parts, &mut yt, m, tile_rows)
        .into_par_iter()
        .for_each_init(Vec::new, |tile: &mut Vec<f32>, task| {
            let rows = task.rows.len();
            tile.resize(rows * k, 0.0);
            task.matrix.dequantize_rows(task.rows, tile);
            gemm(
                MatMut::new(task.out, rows, m),
                MatRef::new(tile, rows, k),
                MatRef::new(x, m, k).t(),
                false,
                Threads::Single,
            );
        });
    yt
}

/// `dx[m, k] = dy[m, Σ rows] · [W₀; W₁; …]`: the input gradient of [`matmul_f32`], in f32 on
/// dequantized tiles.
///
/// The output is split into strips of whole-block columns, about two per thread, so each task
/// owns its strip; a task walks down the matrices' rows in tiles of that strip, accumulating
/// `dy[:, rows] · W[rows, strip]`.
///
/// # Panics
/// If the matrices differ in width or `dy` is not `m` rows of their summed height.
pub fn matmul_transposed(parts: &[&StoredMatrix], dy: &[f32], m: usize) -> Vec<f32> {
    let k = shared_width(parts);
    let n: usize = parts.iter().map(|p| p.rows).sum();
    assert_eq!(dy.len(), m * n, "dy is not [{m}, {n}]");
    // Block sizes are 1, 32 or 256 values, so the largest is a multiple of the others.
    let block = parts.iter().map(|p| p.ty.block_size()).max().unwrap_or(1);
    let strips = (2 * rayon::current_num_threads()).min(k / block).max(1);
    let width = (k / block).div_ceil(strips) * block;
    let strips: Vec<Range<usize>> = (0..k)
        .step_by(width)
        .map(|c| c..(c + width).min(k))
        .collect();
    let outs: Vec<Vec<f32>> = strips
        .par_iter()
        .map(|cols| {
            let w = cols.len();
            let mut out = vec![0f32; m * w];
            let tile_rows = (TILE_BYTES / (4 * w)).max(16);
            let mut tile = Vec::new();
            let mut first_row = 0;
            for p in parts {
                for start in (0..p.rows).step_by(tile_rows) {
                    let rows = start..(start + tile_rows).min(p.rows);
                    tile.resize(rows.len() * w, 0.0);
                    p.dequantize_block(rows.clone(), cols.clone(), &mut tile);
                    gemm(
                        MatMut::new(&mut out, m, w),
                        MatRef::strided(&dy[first_row + start..], m, rows.len(), n),
                        MatRef::new(&tile, rows.len(), w),
                        true,
                        Threads::Single,
                    );
                }
                first_row += p.rows;
            }
            out
        })
        .collect();
    let mut dx = vec![0f32; m * k];
    for (cols, out) in strips.iter().zip(&outs) {
        for (dst, src) in dx.chunks_exact_mut(k).zip(out.chunks_exact(cols.len())) {
            dst[cols.clone()].copy_from_slice(src);
        }
    }
    dx
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919 % 1013) as f32 - 506.0) / 400.0)
            .collect()
    }

    pub(crate) fn stored(ty: GgmlType, rows: usize, cols: usize, seed: usize) -> StoredMatrix {
        let bytes = quant::quantize(ty, &values(rows * cols, seed)).unwrap();
        StoredMatrix::new(ty, rows, cols, WeightBytes::Owned(Arc::new(bytes))).unwrap()
    }

    /// `x · Wᵀ` in f64 over the matrices' dequantized values.
    fn reference(parts: &[&StoredMatrix], x: &[f32], m: usize) -> Vec<f64> {
        let k = parts[0].cols;
        let ws: Vec<Vec<f32>> = parts.iter().map(|p| p.to_f32()).collect();
        let mut y = Vec::new();
        for r in 0..m {
            for w in &ws {
                for row in w.chunks_exact(k) {
                    y.push((0..k).map(|i| row[i] as f64 * x[r * k + i] as f64).sum());
                }
            }
        }
        y
    }

    /// Stacked rows read as the parts' rows, each in its own row order (a permuted part's as
    /// permuted); parts of another type or width are refused.
    #[test]
    fn stacked_rows_are_the_parts_rows_in_order() {
        let q = stored(GgmlType::Q4_0, 4, 64, 1).with_row_order(vec![2, 0, 3, 1]);
        let v = stored(GgmlType::Q4_0, 2, 64, 2);
        let stacked = StoredMatrix::stack_rows(&[&q, &v]).unwrap();
        let want: Vec<f32> = q.to_f32().into_iter().chain(v.to_f32()).collect();
        assert_eq!(stacked.to_f32(), want);
        let other = stored(GgmlType::Q8_0, 2, 64, 3);
        let err = StoredMatrix::stack_rows(&[&q, &other]).unwrap_err();
        assert!(err.to_string().contains("cannot stack"), "{err}");
    }

    /// The bf16 kernels this CPU runs (each is tested wherever it exists, whichever `kernel` picks).
    pub(crate) fn bf16_kernels() -> Vec<bf16::Kernel> {
        [bf16::Kernel::Amx, bf16::Kernel::Avx512]
            .into_iter()
            .filter(|k| k.supported())
            .collect()
    }

    /// With batch invariance on, each row of a few-row product is bit-for-bit that row's product
    /// alone (the default model's Q4_1 and the other legacy types, whatever kernel this CPU has).
    #[test]
    fn batch_invariant_rows_equal_each_row_alone() {
        use GgmlType::*;
        let k = 576;
        set_batch_invariant(true);
        for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0] {
            let w = stored(ty, 40, k, 3);
            for m in [2, 3, 5, 9] {
                let x = values(m * k, 11);
                let together = matmul(&[&w], &x, m);
                for (r, row) in x.chunks_exact(k).enumerate() {
                    let alone = matmul(&[&w], row, 1);
                    assert_eq!(
                        alone,
                        together[r * 40..(r + 1) * 40],
                        "{ty:?}, row {r} of {m}"
                    );
                }
            }
        }
        set_batch_invariant(false);
    }

    #[test]
    fn fused_products_match_the_dequantized_reference_on_both_paths() {
        use GgmlType::*;
        let k = 512;
        // Odd row counts (not a multiple of either task size), three storage kinds side by side.
        let parts = [
            stored(Q4_1, 37, k, 1),
            stored(Q6K, 70, k, 2),
            stored(BF16, 5, k, 3),
        ];
        let refs: Vec<&StoredMatrix> = parts.iter().collect();
        for kernel in bf16_kernels().into_iter().map(Some).chain([None]) {
            for m in [1, 3, FEW_ROWS, FEW_ROWS + 1, 40] {
                let x = values(m * k, 11 + m);
                let got = matmul_on(&refs, &x, m, kernel);
                let want = reference(&refs, &x, m);
                let scale = want.iter().fold(0f64, |a, b| a.max(b.abs()));
                // The dot-product path quantizes activations to 8 bits (≈0.4% per value, averaging
                // out over 512 terms), the bf16 path rounds both operands to 8 significant bits;
                // the f32 tiled path is exact up to summation order.
                let tolerance = match kernel {
                    _ if m <= FEW_ROWS => 2e-2,
                    Some(_) => 5e-3,
                    None => 1e-5,
                };
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*g as f64 - w).abs() <= tolerance * scale,
                        "{kernel:?} m={m} [{i}]: {g} vs {w}"
                    );
                }
            }
        }
    }

    /// The bf16 prompt path on an odd width (padded to whole pairs and depth blocks) and a row
    /// count that is not a whole number of tiles, against the f64 sums.
    #[test]
    fn bf16_prompt_products_pad_odd_widths() {
        let k = 75;
        let parts = [
            stored(GgmlType::BF16, 19, k, 1),
            stored(GgmlType::BF16, 2, k, 2),
        ];
        let refs: Vec<&StoredMatrix> = parts.iter().collect();
        let m = 33;
        let x = values(m * k, 4);
        let want = reference(&refs, &x, m);
        let scale = want.iter().fold(0f64, |a, b| a.max(b.abs()));
        for kernel in bf16_kernels() {
            let got = matmul_on(&refs, &x, m, Some(kernel));
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - w).abs() <= 5e-3 * scale,
                    "{kernel:?} [{i}]: {g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn exact_products_match_the_dequantized_reference_both_ways() {
        use GgmlType::*;
        let k = 768;
        let parts = [
            stored(Q4_0, 33, k, 1),
            stored(Q6K, 20, k, 2),
            stored(F16, 7, k, 3).with_row_order((0..7).rev().collect()),
        ];
        let refs: Vec<&StoredMatrix> = parts.iter().collect();
        let n = 60;
        let ws: Vec<f32> = refs.iter().flat_map(|p| p.to_f32()).collect();
        for m in [1, 5, 37] {
            // Forward: f32 even for a few rows.
            let x = values(m * k, 7 + m);
            let got = matmul_f32(&refs, &x, m);
            let want = reference(&refs, &x, m);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    (*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "{g} vs {w}"
                );
            }
            // Backward: dx = dy · W over the stacked, dequantized rows.
            let dy = values(m * n, 3 + m);
            let dx = matmul_transposed(&refs, &dy, m);
            for r in 0..m {
                for c in 0..k {
                    let want: f64 = (0..n)
                        .map(|j| dy[r * n + j] as f64 * ws[j * k + c] as f64)
                        .sum();
                    let g = dx[r * k + c] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "[{r},{c}] {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_block_of_columns_is_the_same_columns_of_the_rows() {
        let m = stored(GgmlType::Q4K, 3, 768, 4);
        let full = m.to_f32();
        let mut block = vec![0f32; 2 * 256];
        m.dequantize_block(1..3, 256..512, &mut block);
        for (i, row) in block.chunks_exact(256).enumerate() {
            assert_eq!(row, &full[(i + 1) * 768 + 256..(i + 1) * 768 + 512]);
        }
    }

    #[test]
    fn a_row_order_reads_rows_through_it() {
        let plain = stored(GgmlType::Q8_0, 4, 64, 5);
        let order = vec![2, 0, 3, 1];
        let reordered = plain.clone().with_row_order(order.clone());
        let (a, b) = (plain.to_f32(), reordered.to_f32());
        for (r, &o) in order.iter().enumerate() {
            assert_eq!(
                b[r * 64..(r + 1) * 64],
                a[o as usize * 64..(o as usize + 1) * 64]
            );
        }
        let x = values(64, 9);
        let (ya, yb) = (matmul(&[&plain], &x, 1), matmul(&[&reordered], &x, 1));
        for (r, &o) in order.iter().enumerate() {
            assert_eq!(yb[r], ya[o as usize]);
        }
    }

    #[test]
    fn bad_matrices_are_errors() {
        let bytes = |n| WeightBytes::Owned(Arc::new(vec![0u8; n]));
        let err = StoredMatrix::new(GgmlType::Q4_0, 2, 48, bytes(54)).unwrap_err();
        assert!(
            err.to_string()
                .contains("not a whole number of Q4_0 blocks"),
            "{err}"
        );
        let err = StoredMatrix::new(GgmlType::Q4_0, 2, 64, bytes(70)).unwrap_err();
        assert!(err.to_string().contains("take 72 bytes"), "{err}");
        let err = StoredMatrix::new(GgmlType::I8, 2, 64, bytes(128)).unwrap_err();
        assert!(
            err.to_string().contains("no matrix-product kernel"),
            "{err}"
        );
    }
}
