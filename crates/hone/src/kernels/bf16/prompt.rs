//! The many-row inference product `x · Wᵀ` on weights of any stored type (quantized, bf16): a
//! prompt's tokens, or a perplexity window, on the bf16 units.
//!
//! Training's forward packs W into B panels, which for a quantized weight means dequantizing each
//! row and scattering its values 64 bytes apart into a panel column: measured, that packing took as
//! long as the products it fed on a 100-token prompt. Here the roles swap, `yᵀ = W · xᵀ`: blocks of
//! weight rows are the left operand, each row dequantized and rounded in order into a contiguous
//! buffer, and the few hundred tokens are packed once into B panels. The dequantization is paid
//! once per weight and product, in a task that then multiplies it by every token while it is in L2.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{convert_row, pairs_for, run_task, to_bf16_pairs, Kernel, SharedOut, PANEL};
use crate::kernels::stored::{tasks, StoredMatrix, Task};

/// Weight rows per block at most: a block's bf16 values (1 MiB at 4096 columns) stay in L2.
const MAX_BLOCK_ROWS: usize = 128;
/// Blocks per thread at least, so threads that start late or run slow even out.
const BLOCKS_PER_THREAD: usize = 3;

/// `yᵀ[Σ rows, m] = [W₀; W₁; …] · x[m, k]ᵀ`: the products of every matrix's rows with every row of
/// `x`, one output row per weight row (so each task owns a contiguous slice), the weights and `x`
/// rounded to bf16 and every sum accumulated in f32.
///
/// # Panics
/// If the matrices differ in width or `x` is not `m` rows of that width.
pub fn products_transposed(
    kernel: Kernel,
    parts: &[&StoredMatrix],
    x: &[f32],
    m: usize,
) -> Vec<f32> {
    let k = parts[0].cols();
    assert!(
        parts.iter().all(|p| p.cols() == k),
        "matrices of different widths"
    );
    assert_eq!(x.len(), m * k, "x is not [{m}, {k}]");
    let n: usize = parts.iter().map(|p| p.rows()).sum();
    let mut yt = vec![0f32; n * m];
    if m == 0 || n == 0 {
        return yt;
    }
    let pairs = pairs_for(k);
    let panels = token_panels(kernel, x, m, k);
    let block_rows = (n / (BLOCKS_PER_THREAD * rayon::current_num_threads()))
        .next_multiple_of(kernel.tile_rows())
        .clamp(kernel.tile_rows(), MAX_BLOCK_ROWS);
    tasks(parts, &mut yt, m, block_rows)
        .into_par_iter()
        .for_each_init(
            || (Vec::new(), vec![0f32; k]),
            |(a, row), Task { matrix, rows, out }| {
                let count = rows.len();
                weight_pairs(matrix, rows, pairs, kernel, a, row);
                let out = SharedOut(out.as_mut_ptr());
                // SAFETY: `a` holds `count` rows padded to whole tiles, `pairs` pairs each; the
                // panels hold every token, padded to whole tiles; `out` is this block's `[count, m]`
                // rows of the output, which no other task touches.
                unsafe { run_task(kernel, a, count, pairs, &panels, 0..m, &out, m, false) };
            },
        );
    yt
}

/// Rows `rows` of `matrix` as bf16 pairs into `a` (`pairs` per row), rows padded with zeros to
/// whole tiles; `row` is room for one row of f32 values.
fn weight_pairs(
    matrix: &StoredMatrix,
    rows: std::ops::Range<usize>,
    pairs: usize,
    kernel: Kernel,
    a: &mut Vec<u32>,
    row: &mut [f32],
) {
    let count = rows.len();
    a.resize(count.next_multiple_of(kernel.tile_rows()) * pairs, 0);
    let (filled, padding) = a.split_at_mut(count * pairs);
    for (r, dst) in rows.zip(filled.chunks_exact_mut(pairs)) {
        matrix.dequantize_rows(r..r + 1, row);
        convert_row(row, as_uninit(dst));
    }
    padding.fill(0);
}

/// `values` viewed as room to write into.
fn as_uninit(values: &mut [u32]) -> &mut [MaybeUninit<u32>] {
    // SAFETY: MaybeUninit<u32> has u32's layout, and the slice is only ever written with
    // initialized values through this view.
    unsafe { &mut *(values as *mut [u32] as *mut [MaybeUninit<u32>]) }
}

/// `xᵀ` as B panels: column `j` of panel `q` is token `16q + j`, pair `p` its values `2p`, `2p + 1`
/// rounded to bf16; panels padded with zero tokens to whole tiles.
fn token_panels(kernel: Kernel, x: &[f32], m: usize, k: usize) -> Vec<u32> {
    let pairs = pairs_for(k);
    let rows = to_bf16_pairs(kernel, x, m, k);
    let n_panels = m.div_ceil(PANEL).next_multiple_of(kernel.tile_panels());
    let mut out = vec![0u32; n_panels * pairs * PANEL];
    out.par_chunks_mut(pairs * PANEL)
        .enumerate()
        .for_each(|(q, panel)| {
            for j in 0..PANEL.min(m.saturating_sub(q * PANEL)) {
                let token = &rows[(q * PANEL + j) * pairs..][..pairs];
                for (p, &v) in token.iter().enumerate() {
                    panel[p * PANEL + j] = v;
                }
            }
        });
    out
}
