//! Packing the weights into the kernels' B layout: panels of 16 output columns, each a column's
//! pair of bf16 values per u32 (see the module above). A product reads the weight in one of two
//! orientations: transposed for the forward `x·Wᵀ` (a pair is two neighbours in a weight row) or as
//! stored for the input gradient `dy·W` (a pair is one column of two neighbouring rows).

use super::{pair, PANEL};
use crate::kernels::stored::StoredMatrix;
use crate::quant::GgmlType;

/// How the product reads the weight matrix W as its B operand.
#[derive(Clone, Copy, Debug)]
pub(super) enum Orientation {
    /// B = W: the reduction runs over W's rows.
    AsStored,
    /// B = Wᵀ: the reduction runs over W's columns.
    Transposed,
}

/// Where a product's B operand comes from.
#[derive(Clone, Copy)]
pub(super) enum Source<'a> {
    /// A bf16 weight matrix, in one of its two orientations.
    Weight(&'a Rows<'a>, Orientation),
    /// f32 activations, row-major `[k, n]` (a weight gradient's `x`), rounded as they are packed.
    Activations(&'a [f32]),
}

/// bf16 matrices of one width stacked by rows, read row by row.
pub(super) struct Rows<'a> {
    /// Each matrix and the stacked index of its first row.
    parts: Vec<(usize, &'a StoredMatrix)>,
    rows: usize,
    cols: usize,
}

impl<'a> Rows<'a> {
    /// # Panics
    /// If a matrix is not bf16 or the widths differ.
    pub(super) fn new(parts: &[&'a StoredMatrix]) -> Self {
        let cols = parts[0].cols();
        let mut first = 0;
        let parts = parts
            .iter()
            .map(|&p| {
                assert_eq!(
                    p.ggml_type(),
                    GgmlType::BF16,
                    "bf16 products need bf16 weights"
                );
                assert_eq!(p.cols(), cols, "matrices of different widths");
                first += p.rows();
                (first - p.rows(), p)
            })
            .collect();
        Rows {
            parts,
            rows: first,
            cols,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.rows
    }

    pub(super) fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r`'s bf16 values as stored (little-endian bytes).
    #[inline(always)]
    fn row(&self, r: usize) -> &'a [u8] {
        let index = self.parts.partition_point(|&(first, _)| first <= r) - 1;
        let (first, matrix) = self.parts[index];
        matrix.row(r - first)
    }

    /// Row `r`'s value at column `c`, as bits.
    #[inline(always)]
    fn at(row: &[u8], c: usize) -> u32 {
        u32::from(u16::from_le_bytes([row[2 * c], row[2 * c + 1]]))
    }
}

avx512_or_portable! {
    /// Packs `n_panels` panels of B, from column `col0` on, `pairs` pairs deep, into `out`
    /// (`n_panels · pairs · PANEL` values); columns and pairs beyond B are zero. At baseline
    /// x86-64 width, packing took as long as the AMX products it feeds.
    pub(super) fn panels(
        b: Source,
        n: usize,
        col0: usize,
        n_panels: usize,
        pairs: usize,
        out: &mut [u32],
    ) = panels_portable;
}

#[inline(always)]
fn panels_portable(
    b: Source,
    n: usize,
    col0: usize,
    n_panels: usize,
    pairs: usize,
    out: &mut [u32],
) {
    assert_eq!(out.len(), n_panels * pairs * PANEL, "panel buffer size");
    match b {
        Source::Weight(w, Orientation::Transposed) => {
            for (q, panel) in out.chunks_exact_mut(pairs * PANEL).enumerate() {
                transposed_panel(w, col0 + q * PANEL, panel);
            }
        }
        Source::Weight(w, Orientation::AsStored) => stored_panels(w, col0, n_panels, pairs, out),
        Source::Activations(x) => activation_panels(x, n, col0, n_panels, pairs, out),
    }
}

/// B = Wᵀ: column `j` of the panel is weight row `first + j`, its pairs neighbours in that row.
/// Every value is written once (zero where the panel lies beyond the matrix).
#[inline(always)]
fn transposed_panel(w: &Rows, first: usize, panel: &mut [u32]) {
    let whole_pairs = w.cols / 2;
    let filled = w.cols.div_ceil(2);
    panel[filled * PANEL..].fill(0);
    for j in 0..PANEL {
        if first + j >= w.rows {
            for p in 0..filled {
                panel[p * PANEL + j] = 0;
            }
            continue;
        }
        let row = w.row(first + j);
        let (pairs, _) = row.as_chunks::<4>();
        for (p, bytes) in pairs.iter().enumerate() {
            panel[p * PANEL + j] = u32::from_le_bytes(*bytes);
        }
        if w.cols % 2 == 1 {
            panel[whole_pairs * PANEL + j] = Rows::at(row, w.cols - 1);
        }
    }
}

/// B = W: column `j` of panel `q` is weight column `col0 + 16q + j`, pair `p` its rows `2p`,
/// `2p + 1`. Pair by pair across all the panels, so each weight row is read once, whole cache
/// lines at a time (panel by panel, the head's rows were read once per panel, 32 bytes of each
/// 64-byte line).
#[inline(always)]
fn stored_panels(w: &Rows, col0: usize, n_panels: usize, pairs: usize, out: &mut [u32]) {
    let cols = (n_panels * PANEL).min(w.cols.saturating_sub(col0));
    let filled = pairs.min(w.rows.div_ceil(2));
    for q in 0..n_panels {
        out[(q * pairs + filled) * PANEL..(q + 1) * pairs * PANEL].fill(0);
    }
    for p in 0..filled {
        let lo = &w.row(2 * p)[2 * col0..2 * (col0 + cols)];
        let hi = (2 * p + 1 < w.rows).then(|| &w.row(2 * p + 1)[2 * col0..2 * (col0 + cols)]);
        let (lo, hi) = (
            lo.as_chunks::<2>().0,
            hi.map_or(&[][..], |hi| hi.as_chunks::<2>().0),
        );
        for q in 0..n_panels {
            let out = &mut out[(q * pairs + p) * PANEL..][..PANEL];
            let span = q * PANEL..(q + 1) * PANEL;
            match (lo.get(span.clone()), hi.get(span)) {
                (Some(lo), Some(hi)) => {
                    // Fixed-size arrays, so the loop unrolls into vector operations.
                    let lo: &[[u8; 2]; PANEL] = lo.try_into().expect("a panel's columns");
                    let hi: &[[u8; 2]; PANEL] = hi.try_into().expect("a panel's columns");
                    for j in 0..PANEL {
                        out[j] = u32::from(u16::from_le_bytes(lo[j]))
                            | u32::from(u16::from_le_bytes(hi[j])) << 16;
                    }
                }
                _ => {
                    // The last columns, or the last row of an odd count.
                    let bits = |values: &[[u8; 2]], j: usize| {
                        values
                            .get(j)
                            .map_or(0, |&b| u32::from(u16::from_le_bytes(b)))
                    };
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = bits(lo, q * PANEL + j) | bits(hi, q * PANEL + j) << 16;
                    }
                }
            }
        }
    }
}

/// B = x (`[k, n]` f32): column `j` of panel `q` is column `col0 + 16q + j`, pair `p` its rows
/// `2p`, `2p + 1`, rounded to bf16.
#[inline(always)]
fn activation_panels(
    x: &[f32],
    n: usize,
    col0: usize,
    n_panels: usize,
    pairs: usize,
    out: &mut [u32],
) {
    let k = x.len() / n;
    let cols = (n_panels * PANEL).min(n.saturating_sub(col0));
    let filled = pairs.min(k.div_ceil(2));
    for q in 0..n_panels {
        out[(q * pairs + filled) * PANEL..(q + 1) * pairs * PANEL].fill(0);
    }
    for p in 0..filled {
        let lo = &x[2 * p * n + col0..][..cols];
        let hi = (2 * p + 1 < k).then(|| &x[(2 * p + 1) * n + col0..][..cols]);
        for q in 0..n_panels {
            let out = &mut out[(q * pairs + p) * PANEL..][..PANEL];
            let span = q * PANEL..(q + 1) * PANEL;
            match (lo.get(span.clone()), hi.and_then(|hi| hi.get(span))) {
                (Some(lo), Some(hi)) => {
                    // Fixed-size arrays, so the loop becomes vector operations (with the
                    // bounds and the missing last row checked inside, it stayed scalar).
                    let lo: &[f32; PANEL] = lo.try_into().expect("a panel's columns");
                    let hi: &[f32; PANEL] = hi.try_into().expect("a panel's columns");
                    for j in 0..PANEL {
                        out[j] = pair(lo[j], hi[j]);
                    }
                }
                _ => {
                    // The last columns, or the last row of an odd count.
                    let at = |row: Option<&[f32]>, j: usize| {
                        row.and_then(|r| r.get(q * PANEL + j)).copied()
                    };
                    for (j, o) in out.iter_mut().enumerate() {
                        *o = match at(Some(lo), j) {
                            Some(lo) => pair(lo, at(hi, j).unwrap_or(0.0)),
                            None => 0,
                        };
                    }
                }
            }
        }
    }
}
