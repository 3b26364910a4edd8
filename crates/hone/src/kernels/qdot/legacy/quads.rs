//! One row of quantized activations laid out for the four-blocks-a-register kernel of the 4-bit
//! types (`avx512_quads`), which a decoding step's products on a Q4_0/Q4_1 model spend most of
//! their time in.
//!
//! A 4-bit block holds element j in the low nibble and element j + 16 in the high nibble of its
//! byte j. Four blocks' 16 bytes fill one register, so their low nibbles meet the activations'
//! first halves and their high nibbles the second halves in two `vpdpbusd`s into the same
//! accumulator: the activations are stored as those halves, four blocks to a line.

use super::super::Q8Block;
use super::rows::{put_heads, Line};

/// Quantized activations, padded with zero blocks to whole groups of 8 (they add nothing). Per
/// group: four lines of quants — the first halves of blocks 0..4, their second halves, then the
/// same for blocks 4..8 — and, as in [`super::Q8Rows`], block j's scale `d` in lane 2j of a
/// line of scales and `d·Σ qs` in lanes 2j and 2j + 1 of a line of sums.
pub struct Q8Quads {
    blocks: usize,
    qs: Vec<Line<[i8; 64]>>,
    scales: Vec<Line<[f32; 16]>>,
    sums: Vec<Line<[f32; 16]>>,
}

impl Q8Quads {
    /// The row of activations `blocks`, laid out.
    pub fn new(blocks: &[Q8Block]) -> Self {
        let groups = blocks.len().div_ceil(8);
        let mut out = Q8Quads {
            blocks: blocks.len(),
            qs: vec![Line([0; 64]); 4 * groups],
            scales: vec![Line([0.0; 16]); groups],
            sums: vec![Line([0.0; 16]); groups],
        };
        for (j, block) in blocks.iter().enumerate() {
            let (group, quad, slot) = (j / 8, j % 8 / 4, j % 4);
            let (first, second) = block.qs.split_at(16);
            let lines = &mut out.qs[4 * group + 2 * quad..];
            lines[0].0[16 * slot..][..16].copy_from_slice(first);
            lines[1].0[16 * slot..][..16].copy_from_slice(second);
            put_heads(&mut out.scales[group], &mut out.sums[group], j % 8, block);
        }
        out
    }

    /// Blocks in the row, without the padding.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Group `g`'s four lines of quants.
    pub(super) fn quants(&self, g: usize) -> &[Line<[i8; 64]>; 4] {
        self.qs[4 * g..][..4]
            .try_into()
            .expect("four lines a group")
    }

    /// Group `g`'s line of scales.
    pub(super) fn scales(&self, g: usize) -> &Line<[f32; 16]> {
        &self.scales[g]
    }

    /// Group `g`'s line of `d·Σ qs`.
    pub(super) fn sums(&self, g: usize) -> &Line<[f32; 16]> {
        &self.sums[g]
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::quantize_q8;
    use super::*;

    #[test]
    fn halves_of_four_blocks_share_a_line_and_padding_is_zero() {
        let x: Vec<f32> = (0..9 * 32).map(|i| (i % 61) as f32 - 30.0).collect();
        let mut blocks = vec![Q8Block::default(); 9];
        quantize_q8(&x, &mut blocks);
        let quads = Q8Quads::new(&blocks);
        assert_eq!((quads.blocks(), quads.qs.len()), (9, 8));
        // Block 6: group 0, second quad, slot 2.
        let lines = quads.quants(0);
        assert_eq!(lines[2].0[32..48], blocks[6].qs[..16]);
        assert_eq!(lines[3].0[32..48], blocks[6].qs[16..]);
        assert_eq!(quads.scales(0).0[12], blocks[6].d);
        assert_eq!(quads.sums(0).0[13], blocks[6].d * blocks[6].sum as f32);
        // Block 8 opens group 1; the rest of it is padding.
        assert_eq!(quads.quants(1)[0].0[..16], blocks[8].qs[..16]);
        assert!(quads.quants(1)[0].0[16..].iter().all(|&q| q == 0));
        assert!(quads.quants(1)[2..].iter().all(|l| l.0 == [0; 64]));
        assert!(quads.scales(1).0[1..].iter().all(|&d| d == 0.0));
    }
}
