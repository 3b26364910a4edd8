//! bf16 × bf16 → f32 matrix products for mixed-precision training (`bf16: true`): the frozen
//! weights are stored as bf16, the activations are rounded to bf16 (round to nearest even, as
//! PyTorch's autocast casts them) and every product accumulates in f32. Inference runs prompts
//! through the same kernels on weights of any stored type ([`prompt`]).
//!
//! Hand-written because no Rust crate multiplies bf16 on the CPU's bf16 units (`gemm` widens
//! 16-bit floats to f32 first, which is no faster than f32). Two micro-kernels, chosen once from
//! what the CPU has:
//! - AMX (Intel Sapphire Rapids and later): 16×16 f32 tiles accumulated by `tdpbf16ps`, about 9×
//!   the f32 FMA rate of a core (measured: 1.26 TFLOP/s against 144 GFLOP/s);
//! - AVX-512 BF16 (`vdpbf16ps`; AMD Zen 4/5 run it at twice their f32 FMA rate). Intel's
//!   Cooper Lake and Sapphire Rapids run it at half their FMA rate, so there it is never chosen.
//!
//! Where neither exists (or `HONE_BF16_KERNEL=none`), [`kernel`] is None and the caller computes in
//! f32 on the widened weights, which are exactly representable.
//!
//! Both kernels read the same layouts. A (the activations) is bf16, row-major, each row padded to
//! [`PAIR_BLOCK`] pairs of values, rows padded to the kernel's tile height with zeros. B is packed
//! in panels of 16 output columns: for each pair `p` of the reduction dimension, the 16 columns'
//! values `(B[2p, j], B[2p+1, j])` side by side, one u32 each (the layout both `tdpbf16ps` and
//! `vdpbf16ps` multiply). Padding is zero, so it adds nothing to the sums.

mod amx;
mod avx512;
mod pack;
pub mod prompt;

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::stored::{StoredMatrix, WeightBytes};
use crate::quant::GgmlType;
use pack::{Orientation, Rows, Source};

/// The reduction dimension is padded to a multiple of this many pairs of values (AMX's tile depth:
/// 16 rows of 64 bytes).
pub(crate) const PAIR_BLOCK: usize = 16;
/// Columns of a packed panel of B.
pub(crate) const PANEL: usize = 16;
/// Output rows a task computes at a time (their A values, a depth block of them, stay in L2).
const TASK_ROWS: usize = 256;
/// Output columns each parallel task computes, for all rows: its panels of B are packed once.
const TASK_COLS: usize = 96;
/// Pairs of values per depth block: a row tile's A values (32 rows × 512 bytes for AMX) fit in L1
/// beside the panel being multiplied.
const DEPTH: usize = 128;

/// The bf16 micro-kernel this CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    Amx,
    Avx512,
}

impl Kernel {
    /// Output rows of one micro-tile.
    fn tile_rows(self) -> usize {
        match self {
            Kernel::Amx => amx::TILE_ROWS,
            Kernel::Avx512 => avx512::TILE_ROWS,
        }
    }

    /// Panels (of [`PANEL`] columns) of one micro-tile.
    fn tile_panels(self) -> usize {
        match self {
            Kernel::Amx => amx::TILE_PANELS,
            Kernel::Avx512 => avx512::TILE_PANELS,
        }
    }

    /// Whether this CPU (and OS) runs the kernel.
    pub fn supported(self) -> bool {
        match self {
            Kernel::Amx => amx::supported(),
            Kernel::Avx512 => avx512::supported(),
        }
    }
}

/// The kernel bf16 products use on this CPU, or None (compute in f32 instead). Decided once;
/// `HONE_BF16_KERNEL=amx|avx512|none` overrides the choice (benchmarks, tests of the fallback).
pub fn kernel() -> Option<Kernel> {
    static CHOICE: OnceLock<Option<Kernel>> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("HONE_BF16_KERNEL").as_deref() {
        Ok("none") => None,
        Ok("amx") => Kernel::Amx.supported().then_some(Kernel::Amx),
        Ok("avx512") => Kernel::Avx512.supported().then_some(Kernel::Avx512),
        _ => [Kernel::Amx, Kernel::Avx512]
            .into_iter()
            .find(|k| k.supported() && (*k == Kernel::Amx || !avx512::slow_on_this_cpu())),
    })
}

/// `y[m, Σ rows] = x[m, k] · [W₀; W₁; …]ᵀ` for matrices stacked by rows (overwrites `y`): bf16
/// ones, or any stored type rounded to bf16 for the product. `packed` is for bf16 matrices only.
///
/// # Panics
/// If the widths differ or the slices are not the shapes above.
pub fn forward(
    kernel: Kernel,
    parts: &[&StoredMatrix],
    packed: Option<&Packed>,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) {
    let packed = packed.map(|p| &p.forward);
    weight_product(
        kernel,
        parts,
        Orientation::Transposed,
        packed,
        x,
        m,
        y,
        false,
    );
}

/// `dx[m, cols] = dy[m, Σ rows] · [W₀; W₁; …]`, or `+=` when `accumulate`.
///
/// # Panics
/// As [`forward`].
pub fn backward_input(
    kernel: Kernel,
    parts: &[&StoredMatrix],
    packed: Option<&Packed>,
    dy: &[f32],
    m: usize,
    dx: &mut [f32],
    accumulate: bool,
) {
    let packed = packed.map(|p| &p.backward);
    weight_product(
        kernel,
        parts,
        Orientation::AsStored,
        packed,
        dy,
        m,
        dx,
        accumulate,
    );
}

/// `c (+)= a · B` for B the stacked weights read in `orientation`.
#[allow(clippy::too_many_arguments)]
fn weight_product(
    kernel: Kernel,
    parts: &[&StoredMatrix],
    orientation: Orientation,
    packed: Option<&OnceLock<Vec<u32>>>,
    a: &[f32],
    m: usize,
    c: &mut [f32],
    accumulate: bool,
) {
    // Quantized weights (QLoRA under `bf16: true`) are rounded to bf16 copies for this product
    // only: the copy costs one pass over the weights against 2·m passes of arithmetic, and one
    // stacked matrix at a time is all the memory it takes.
    let copies: Vec<Option<StoredMatrix>> = parts
        .iter()
        .map(|p| {
            (p.ggml_type() != GgmlType::BF16)
                .then(|| rounded(p.rows(), p.cols(), |rows, out| p.dequantize_rows(rows, out)))
        })
        .collect();
    let parts: Vec<&StoredMatrix> = parts
        .iter()
        .zip(&copies)
        .map(|(&p, copy)| copy.as_ref().unwrap_or(p))
        .collect();
    let rows = Rows::new(&parts);
    let (k, n) = match orientation {
        Orientation::Transposed => (rows.cols(), rows.len()),
        Orientation::AsStored => (rows.len(), rows.cols()),
    };
    let b = Operand {
        source: Source::Weight(&rows, orientation),
        k,
        n,
    };
    let a = to_bf16_pairs(kernel, a, m, k);
    product(kernel, &a, m, b, packed, c, accumulate);
}

/// A `[rows, cols]` bf16 matrix of values rounded to nearest even, where `values(band, out)`
/// writes the f32 values of a band of rows into `out`: converted in parallel bands, so no f32
/// copy of the whole matrix is made.
pub fn rounded(
    rows: usize,
    cols: usize,
    values: impl Fn(Range<usize>, &mut [f32]) + Sync,
) -> StoredMatrix {
    const BAND: usize = 64;
    let mut bytes = vec![0u8; rows * cols * 2];
    bytes
        .par_chunks_mut(BAND * cols * 2)
        .enumerate()
        .for_each_init(Vec::new, |band_values, (band, out)| {
            let first = band * BAND;
            band_values.resize(out.len() / 2, 0.0);
            values(first..first + out.len() / (2 * cols), band_values);
            for (out, &v) in out.chunks_exact_mut(2).zip(band_values.iter()) {
                out.copy_from_slice(&to_bf16(v).to_le_bytes());
            }
        });
    StoredMatrix::new(
        GgmlType::BF16,
        rows,
        cols,
        WeightBytes::Owned(std::sync::Arc::new(bytes)),
    )
    .expect("bf16 rows of any width are whole blocks")
}

/// A weight's panels in both orientations, packed on first use and kept (see
/// `Matrix::keeping_packed`).
#[derive(Debug, Default)]
pub struct Packed {
    forward: OnceLock<Vec<u32>>,
    backward: OnceLock<Vec<u32>>,
}

/// Every task's panels of `b`, side by side: task `t`'s start at panel `t · TASK_COLS / 16`.
fn pack_all(b: Operand) -> Vec<u32> {
    let pairs = pairs_for(b.k);
    let task_panels = TASK_COLS / PANEL;
    let mut out = vec![0u32; b.n.div_ceil(TASK_COLS) * task_panels * pairs * PANEL];
    out.par_chunks_mut(task_panels * pairs * PANEL)
        .enumerate()
        .for_each(|(t, out)| pack::panels(b.source, b.n, t * TASK_COLS, task_panels, pairs, out));
    out
}

/// A Linear layer's weight gradient summed over `m` tokens: `dw[rows, cols] += dyᵀ · x`, where
/// `dy` is columns `dy_cols` of an `[m, dy_width]` matrix (one part of a stacked projection) and
/// `x` is `[m, cols]`. Both are rounded to bf16, as autocast's backward of a bf16 product does.
///
/// # Panics
/// If the slices are not the shapes above.
pub fn weight_gradient(
    kernel: Kernel,
    dy: &[f32],
    dy_width: usize,
    dy_cols: Range<usize>,
    x: &[f32],
    m: usize,
    dw: &mut [f32],
) {
    assert_eq!(dy.len(), m * dy_width, "dy is not [{m}, {dy_width}]");
    assert!(
        dy_cols.end <= dy_width,
        "columns {dy_cols:?} beyond {dy_width}"
    );
    let b = Operand {
        source: Source::Activations(x),
        k: m,
        n: x.len() / m.max(1),
    };
    let a = transposed_pairs(kernel, dy, dy_width, dy_cols.clone(), m);
    product(kernel, &a, dy_cols.len(), b, None, dw, true);
}

/// The B operand of a product, `k × n`.
#[derive(Clone, Copy)]
struct Operand<'a> {
    source: Source<'a>,
    k: usize,
    n: usize,
}

/// Pairs of values a row of A holds for a reduction over `k`: padded to whole depth blocks.
fn pairs_for(k: usize) -> usize {
    k.div_ceil(2).next_multiple_of(PAIR_BLOCK)
}

/// `c[m, n] (+)= A · B` for A as bf16 pairs (`m` rows, padded to whole tiles, of
/// `pairs_for(b.k)` pairs). With `packed`, B's panels are packed there once and read from there;
/// otherwise each task packs its own.
fn product(
    kernel: Kernel,
    a: &[u32],
    m: usize,
    b: Operand,
    packed: Option<&OnceLock<Vec<u32>>>,
    c: &mut [f32],
    accumulate: bool,
) {
    let Operand { k, n, .. } = b;
    let pairs = pairs_for(k);
    assert_eq!(
        a.len(),
        m.next_multiple_of(kernel.tile_rows()) * pairs,
        "A is not [{m}, {k}]"
    );
    assert_eq!(c.len(), m * n, "output is not [{m}, {n}]");
    if m == 0 || n == 0 {
        return;
    }
    let packed = packed.map(|p| p.get_or_init(|| pack_all(b)).as_slice());
    let out = SharedOut(c.as_mut_ptr());
    let blocks: Vec<usize> = (0..n).step_by(TASK_COLS).collect();
    blocks.into_par_iter().for_each(|col0| {
        let cols = col0..(col0 + TASK_COLS).min(n);
        let out = &out;
        PANELS.with_borrow_mut(|own| {
            let panels = match packed {
                Some(all) => &all[col0 / PANEL * pairs * PANEL..],
                None => {
                    let n_panels = cols
                        .len()
                        .div_ceil(PANEL)
                        .next_multiple_of(kernel.tile_panels());
                    own.resize(n_panels * pairs * PANEL, 0);
                    pack::panels(b.source, n, cols.start, n_panels, pairs, own);
                    own
                }
            };
            // SAFETY: tasks cover disjoint column blocks of the output, which `c` borrows
            // uniquely.
            unsafe { run_task(kernel, a, m, pairs, panels, cols, out, n, accumulate) }
        })
    });
}

thread_local! {
    /// Each thread's packed panels of B, reused across tasks and products.
    static PANELS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The output, written by tasks in disjoint blocks.
struct SharedOut(*mut f32);
// SAFETY: every task writes only its own block (see `product`).
unsafe impl Sync for SharedOut {}

/// Runs the micro-kernel over the tiles of output columns `cols` (their packed `panels`), [`TASK_ROWS`] rows and [`DEPTH`] pairs at a time: within a depth block each row tile's A
/// values stay in L1 while the panels stream from L2. Whole tiles sum straight into the output;
/// tiles cut by its edges sum in a buffer, then are copied in.
///
/// # Safety
/// `out` points at the `[m, n]` output (row stride `n`) and no other thread touches columns
/// `cols` of it.
#[allow(clippy::too_many_arguments)]
unsafe fn run_task(
    kernel: Kernel,
    a: &[u32],
    m: usize,
    pairs: usize,
    panels: &[u32],
    cols: Range<usize>,
    out: &SharedOut,
    n: usize,
    accumulate: bool,
) {
    let (tile_rows, tile_panels) = (kernel.tile_rows(), kernel.tile_panels());
    let tile_cols = tile_panels * PANEL;
    let col_tiles = cols.len().div_ceil(tile_cols);
    let panel_len = tile_panels * pairs * PANEL;
    assert!(panels.len() >= col_tiles * panel_len);
    assert!(a.len() >= m.next_multiple_of(tile_rows) * pairs);
    let step = |row: usize, c: usize, first: usize, out: *mut f32, stride: usize, acc: bool| {
        let step = Step {
            depth: DEPTH.min(pairs - first),
            a: a.as_ptr().add(row * pairs + first),
            a_stride: pairs,
            b: panels.as_ptr().add(c * panel_len + first * PANEL),
            b_stride: pairs * PANEL,
            c: out,
            c_stride: stride,
            accumulate: acc,
        };
        // SAFETY: A has whole tiles of rows (asserted above), the panels whole tiles, the pairs
        // whole depth blocks of 16, and the callers below pass a whole tile at `out`.
        match kernel {
            Kernel::Amx => amx::tile(step),
            Kernel::Avx512 => avx512::tile(step),
        }
    };

    let _amx = (kernel == Kernel::Amx).then(amx::TileConfig::load);
    let whole_rows = m / tile_rows * tile_rows;
    let whole_cols = cols.len() / tile_cols;
    for row0 in (0..whole_rows).step_by(TASK_ROWS) {
        for first in (0..pairs).step_by(DEPTH) {
            for row in (row0..whole_rows.min(row0 + TASK_ROWS)).step_by(tile_rows) {
                for c in 0..whole_cols {
                    let at = out.0.add(row * n + cols.start + c * tile_cols);
                    step(row, c, first, at, n, accumulate || first > 0);
                }
            }
        }
    }
    // The tiles cut by the last rows or columns.
    let mut tile = vec![0f32; tile_rows * tile_cols];
    for row in (0..m).step_by(tile_rows) {
        for c in 0..col_tiles {
            if row < whole_rows && c < whole_cols {
                continue;
            }
            for first in (0..pairs).step_by(DEPTH) {
                step(row, c, first, tile.as_mut_ptr(), tile_cols, first > 0);
            }
            let col = cols.start + c * tile_cols;
            let width = tile_cols.min(cols.end - col);
            for (i, src) in tile.chunks_exact(tile_cols).take(m - row).enumerate() {
                // SAFETY: row `row + i` < m and columns `col..col + width` lie in `cols`.
                let dst = std::slice::from_raw_parts_mut(out.0.add((row + i) * n + col), width);
                if accumulate {
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                } else {
                    dst.copy_from_slice(&src[..width]);
                }
            }
        }
    }
}

/// One micro-kernel call: the `tile_rows × tile_cols` f32 tile at `c` (rows `c_stride` apart)
/// `=`, or `+=` when `accumulate`, A's rows (at `a`, `a_stride` u32 apart) times the tile's panels
/// of B (at `b`, `b_stride` u32 apart), `depth` pairs of values deep.
pub(crate) struct Step {
    depth: usize,
    a: *const u32,
    a_stride: usize,
    b: *const u32,
    b_stride: usize,
    c: *mut f32,
    c_stride: usize,
    accumulate: bool,
}

/// `a` (`[m, k]` f32) as bf16 pairs, rows padded to whole tiles. Each value is written once (a
/// zeroed allocation first cost as much as the conversion).
fn to_bf16_pairs(kernel: Kernel, a: &[f32], m: usize, k: usize) -> Vec<u32> {
    assert_eq!(a.len(), m * k, "left operand is not [{m}, {k}]");
    let pairs = pairs_for(k);
    let len = m.next_multiple_of(kernel.tile_rows()) * pairs;
    let mut out = Vec::with_capacity(len);
    let (rows, padding) = out.spare_capacity_mut()[..len].split_at_mut(m * pairs);
    rows.par_chunks_mut(pairs)
        .zip(a.par_chunks(k))
        .for_each(|(dst, src)| convert_row(src, dst));
    padding.fill(MaybeUninit::new(0));
    // SAFETY: every one of the `len` values was written just above.
    unsafe { out.set_len(len) };
    out
}

/// Columns `cols` of `a` (`[m, width]` f32), transposed, as bf16 pairs: row `o` of the result
/// pairs `a[2p, o]` with `a[2p + 1, o]`; rows padded to whole tiles.
fn transposed_pairs(
    kernel: Kernel,
    a: &[f32],
    width: usize,
    cols: Range<usize>,
    m: usize,
) -> Vec<u32> {
    const BAND: usize = 64;
    let pairs = pairs_for(m);
    let mut out = vec![0u32; cols.len().next_multiple_of(kernel.tile_rows()) * pairs];
    out.par_chunks_mut(BAND * pairs)
        .enumerate()
        .for_each(|(band, out)| {
            let first = cols.start + band * BAND;
            let count = (out.len() / pairs).min(cols.end.saturating_sub(first));
            transpose_band(a, width, first..first + count, m, pairs, out);
        });
    out
}

avx512_or_portable! {
    /// Columns `cols` of `a` into rows of `out` (`pairs` apart) as [`transposed_pairs`] lays them.
    fn transpose_band(
        a: &[f32],
        width: usize,
        cols: Range<usize>,
        m: usize,
        pairs: usize,
        out: &mut [u32],
    ) = transpose_band_portable;
}

/// In 16 × 16 tiles: a tile's pairs are rounded along `a`'s rows (contiguous, so vectorized) into
/// a small buffer, then written out a row of 16 pairs at a time. Written pair by pair, each value
/// went to a different cache line, and the transposition took a tenth of a full fine-tuning step.
#[inline(always)]
fn transpose_band_portable(
    a: &[f32],
    width: usize,
    cols: Range<usize>,
    m: usize,
    pairs: usize,
    out: &mut [u32],
) {
    const TILE: usize = 16;
    let filled = m.div_ceil(2);
    for p0 in (0..filled).step_by(TILE) {
        let tile_pairs = TILE.min(filled - p0);
        for o0 in (0..cols.len()).step_by(TILE) {
            let tile_cols = TILE.min(cols.len() - o0);
            let mut tile = [[0u32; TILE]; TILE];
            for (dp, row) in tile.iter_mut().take(tile_pairs).enumerate() {
                let p = p0 + dp;
                let lo = &a[2 * p * width + cols.start + o0..][..tile_cols];
                // Two plain loops, which vectorize (one with the choice inside did not).
                if 2 * p + 1 < m {
                    let hi = &a[(2 * p + 1) * width + cols.start + o0..][..tile_cols];
                    for ((t, &lo), &hi) in row.iter_mut().zip(lo).zip(hi) {
                        *t = pair(lo, hi);
                    }
                } else {
                    for (t, &lo) in row.iter_mut().zip(lo) {
                        *t = pair(lo, 0.0);
                    }
                }
            }
            for o in 0..tile_cols {
                let dst = &mut out[(o0 + o) * pairs + p0..][..tile_pairs];
                for (dp, d) in dst.iter_mut().enumerate() {
                    *d = tile[dp][o];
                }
            }
        }
    }
}

avx512_or_portable! {
    /// One row of values as bf16 pairs, its padding zero.
    fn convert_row(src: &[f32], dst: &mut [MaybeUninit<u32>]) = convert_row_portable;
}

#[inline(always)]
fn convert_row_portable(src: &[f32], dst: &mut [MaybeUninit<u32>]) {
    let (whole, odd) = src.as_chunks::<2>();
    let (values, padding) = dst.split_at_mut(src.len().div_ceil(2));
    for (d, &[lo, hi]) in values.iter_mut().zip(whole) {
        d.write(pair(lo, hi));
    }
    if let &[last] = odd {
        values[whole.len()].write(pair(last, 0.0));
    }
    padding.fill(MaybeUninit::new(0));
}

/// Two values rounded to bf16 in one u32, the first in the low half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(to_bf16(lo)) | u32::from(to_bf16(hi)) << 16
}

/// `x` rounded to the nearest bf16, ties to even (as `half` and PyTorch round), NaN kept a quiet
/// NaN. Branch-free, so the conversion loops vectorize (`half`'s is a call per value).
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    if x.is_nan() {
        (bits >> 16) as u16 | 0x0040
    } else {
        rounded
    }
}

#[cfg(test)]
mod tests;
