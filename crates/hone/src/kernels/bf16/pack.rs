//! Packing the weights into the kernels' B layout: panels of 16 output columns, each a column's
//! pair of bf16 values per u32 (see the module above). A product reads the weight in one of two
//! orientations: transposed for the forward `x·Wᵀ` (a pair is two neighbours in a weight row) or as
//! stored for the input gradient `dy·W` (a pair is one column of two neighbouring rows).

use super::PANEL;
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

/// Packs `n_panels` panels of B, from column `col0` on, `pairs` pairs deep, into `out`
/// (`n_panels · pairs · PANEL` values); columns and pairs beyond B are zero.
pub(super) fn panels(
    w: &Rows,
    orientation: Orientation,
    col0: usize,
    n_panels: usize,
    pairs: usize,
    out: &mut [u32],
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { panels_avx512(w, orientation, col0, n_panels, pairs, out) };
    }
    panels_portable(w, orientation, col0, n_panels, pairs, out)
}

/// [`panels_portable`] compiled for AVX-512: the crate is built for baseline x86-64 (SSE2), and
/// packing at that width took as long as the AMX products it feeds.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn panels_avx512(
    w: &Rows,
    orientation: Orientation,
    col0: usize,
    n_panels: usize,
    pairs: usize,
    out: &mut [u32],
) {
    panels_portable(w, orientation, col0, n_panels, pairs, out)
}

#[inline(always)]
fn panels_portable(
    w: &Rows,
    orientation: Orientation,
    col0: usize,
    n_panels: usize,
    pairs: usize,
    out: &mut [u32],
) {
    assert_eq!(out.len(), n_panels * pairs * PANEL, "panel buffer size");
    match orientation {
        Orientation::Transposed => {
            for (q, panel) in out.chunks_exact_mut(pairs * PANEL).enumerate() {
                transposed_panel(w, col0 + q * PANEL, panel);
            }
        }
        Orientation::AsStored => stored_panels(w, col0, n_panels, pairs, out),
    }
}

/// B = Wᵀ: column `j` of the panel is weight row `first + j`, its pairs neighbours in that row.
#[inline(always)]
fn transposed_panel(w: &Rows, first: usize, panel: &mut [u32]) {
    panel.fill(0);
    let whole_pairs = w.cols / 2;
    for j in 0..PANEL.min(w.rows.saturating_sub(first)) {
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
    out.fill(0);
    for p in 0..pairs.min(w.rows.div_ceil(2)) {
        for (half, r) in [2 * p, 2 * p + 1].into_iter().enumerate() {
            if r >= w.rows {
                continue;
            }
            let row = &w.row(r)[2 * col0..2 * (col0 + cols)];
            for (q, values) in row.as_chunks::<2>().0.chunks(PANEL).enumerate() {
                let out = &mut out[(q * pairs + p) * PANEL..][..PANEL];
                for (o, bytes) in out.iter_mut().zip(values) {
                    *o |= u32::from(u16::from_le_bytes(*bytes)) << (16 * half);
                }
            }
        }
    }
}
