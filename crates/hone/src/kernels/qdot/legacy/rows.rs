//! One weight row against several activation rows at once: a decoding step of a batch (a server's
//! running requests, `eval generate`'s rows) or a short prompt.
//!
//! Dotting a weight row with each activation row in turn unpacks its quants and collects its
//! scales once per activation row: at 16 rows that work, not the memory traffic, set the pace (a
//! 16-row step cost ~12× a 1-row step). Here the quants of a pair of blocks are unpacked once and
//! multiplied with up to four activation rows. The activations are laid out for it once per
//! product ([`Q8Rows`]), since every weight row reads them.

use super::super::Q8Block;
use crate::quant::GgmlType;

/// `out[i] = Σ_j w_j·x_ij` for every row `i` of `x`: `w` is one weight row's bytes, of as many
/// ggml blocks as each row of `x` has.
pub type DotQ8Rows = fn(w: &[u8], x: &Q8Rows, out: &mut [f32]);

/// The multi-row kernel this CPU runs for weight type `ty`, if any (AVX-512 VNNI); elsewhere a
/// product dots each activation row on its own.
pub fn dot_q8_rows(ty: GgmlType) -> Option<DotQ8Rows> {
    #[cfg(target_arch = "x86_64")]
    return super::avx512_rows::dot_q8_rows(ty);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ty;
        None
    }
}

/// 64 bytes on a cache line of their own: one pair of blocks' quants, or 16 lanes of f32.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line<T: Copy>(pub(super) T);

/// Quantized activation rows as the multi-row kernel reads them. Each row is padded with zero
/// blocks to whole groups of 8 (they add nothing), and holds, per pair of blocks, the 64 quants on
/// one line; per group of 8 blocks, block j's scale `d` in lane 2j (beside the weight's in its
/// heads) and `d·Σ qs` in lanes 2j and 2j + 1 (the factor of the offset or minimum term,
/// whichever lane the weight's heads put it against).
pub struct Q8Rows {
    rows: usize,
    blocks: usize,
    qs: Vec<Line<[i8; 64]>>,
    scales: Vec<Line<[f32; 16]>>,
    sums: Vec<Line<[f32; 16]>>,
}

impl Q8Rows {
    /// `rows` rows of quantized activations, `blocks` holding them one after another.
    pub fn new(blocks: &[Q8Block], rows: usize) -> Self {
        assert!(
            rows > 0 && blocks.len().is_multiple_of(rows),
            "{} blocks are not {rows} rows",
            blocks.len()
        );
        let per_row = blocks.len() / rows;
        let padded = per_row.div_ceil(8) * 8;
        let mut out = Q8Rows {
            rows,
            blocks: per_row,
            qs: vec![Line([0; 64]); rows * padded / 2],
            scales: vec![Line([0.0; 16]); rows * padded / 8],
            sums: vec![Line([0.0; 16]); rows * padded / 8],
        };
        for (i, row) in blocks.chunks_exact(per_row).enumerate() {
            for (j, block) in row.iter().enumerate() {
                let (pair, half) = (i * padded / 2 + j / 2, j % 2);
                out.qs[pair].0[32 * half..][..32].copy_from_slice(&block.qs);
                let group = i * padded / 8 + j / 8;
                put_heads(&mut out.scales[group], &mut out.sums[group], j % 8, block);
            }
        }
        out
    }

    /// Activation rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Blocks per row, without the padding.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Groups of 8 blocks per row, the last one padded.
    pub(super) fn groups(&self) -> usize {
        self.blocks.div_ceil(8)
    }

    /// Row `i`'s pairs of quants (`4 × groups` lines).
    pub(super) fn quants(&self, i: usize) -> &[Line<[i8; 64]>] {
        let n = 4 * self.groups();
        &self.qs[i * n..][..n]
    }

    /// Row `i`'s scales, one line per group of 8 blocks.
    pub(super) fn scales(&self, i: usize) -> &[Line<[f32; 16]>] {
        let n = self.groups();
        &self.scales[i * n..][..n]
    }

    /// Row `i`'s `d·Σ qs`, one line per group of 8 blocks.
    pub(super) fn sums(&self, i: usize) -> &[Line<[f32; 16]>] {
        let n = self.groups();
        &self.sums[i * n..][..n]
    }
}

/// Block `slot` (of 8) of a group into its group's lines of scales and sums: `d` in lane
/// 2·slot, `d·Σ qs` in lanes 2·slot and 2·slot + 1, against the weight's heads (`d_w` and `m_w`).
pub(super) fn put_heads(
    scales: &mut Line<[f32; 16]>,
    sums: &mut Line<[f32; 16]>,
    slot: usize,
    block: &Q8Block,
) {
    let lane = 2 * slot;
    scales.0[lane] = block.d;
    sums.0[lane..lane + 2].fill(block.d * block.sum as f32);
}

#[cfg(test)]
mod tests {
    use super::super::super::{dequantize_q8, quantize_q8, Q8Block};
    use super::super::implementations;
    use super::*;
    use crate::quant::{dequantize, quantize};

    /// Deterministic values in [-1, 1), with some blocks of extremes.
    fn values(seed: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i * 2_654_435_761 + seed * 40_503) % 1_000_003;
                let v = h as f32 / 500_001.5 - 1.0;
                match (i / 32 + seed) % 9 {
                    2 => 0.0,
                    5 => v * 300.0,
                    7 => v * 1e-5,
                    _ => v,
                }
            })
            .collect()
    }

    /// Σ |w_j·x_j|: the scale of the rounding errors of any summation order.
    fn magnitude(ty: GgmlType, w: &[u8], x: &[Q8Block]) -> f32 {
        let n = 32 * x.len();
        let w = dequantize(ty, w, n).unwrap();
        w.iter()
            .zip(dequantize_q8(x))
            .map(|(a, b)| (a * b).abs())
            .sum()
    }

    #[test]
    fn every_row_equals_the_single_row_kernel() {
        let types = [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
        ];
        for ty in types {
            let Some(rows_dot) = dot_q8_rows(ty) else {
                continue;
            };
            let (_, single) = *implementations(ty).last().expect("the portable kernel");
            // Whole groups of 8 blocks and every tail, one to nine activation rows.
            for blocks in [1, 2, 7, 8, 9, 16, 18, 23, 48] {
                let n = 32 * blocks;
                let w = quantize(ty, &values(1, n)).unwrap();
                for m in 1..=9 {
                    let mut x = vec![Q8Block::default(); m * blocks];
                    quantize_q8(&values(m + 2, m * n), &mut x);
                    let packed = Q8Rows::new(&x, m);
                    let mut out = vec![f32::NAN; m];
                    rows_dot(&w, &packed, &mut out);
                    for (i, got) in out.iter().enumerate() {
                        let row = &x[i * blocks..][..blocks];
                        let want = single(&w, row);
                        let tolerance = 1e-5 * magnitude(ty, &w, row) + 1e-6;
                        assert!(
                            (got - want).abs() <= tolerance,
                            "{ty:?}, {blocks} blocks, row {i} of {m}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn padding_blocks_are_zero() {
        let mut x = vec![Q8Block::default(); 3];
        quantize_q8(&values(0, 96), &mut x);
        let packed = Q8Rows::new(&x, 1);
        assert_eq!((packed.rows(), packed.blocks(), packed.groups()), (1, 3, 1));
        assert!(packed.quants(0)[2..].iter().all(|l| l.0 == [0; 64]));
        assert!(packed.scales(0)[0].0[5..].iter().all(|&d| d == 0.0));
        assert!(packed.sums(0)[0].0[6..].iter().all(|&s| s == 0.0));
    }
}
