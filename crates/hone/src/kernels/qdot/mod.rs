//! Dot products of weight rows kept in their stored type (ggml blocks, f16, bf16) with one row of
//! activations, without expanding the weights to f32: llama.cpp's scheme. Activations are
//! quantized once per product to 8 bits — per 32 values ([`Q8Block`]) for the 32-element weight
//! types, per 256 ([`Q8KBlock`]) for the K-quants — so the inner loops are integer dot products
//! (AVX-512 VNNI / AVX2 where the CPU has them, a portable loop elsewhere, chosen at run time).
//! 16-bit weights are widened in registers and multiplied with f32 activations, and so are the
//! bitsandbytes 4-bit types through their code tables.

pub mod float16;
pub mod fourbit;
pub mod kquants;
pub mod legacy;

/// 32 activations as `d · qs[i]`, with `sum = Σ qs` precomputed for the weight types that carry
/// an offset or minimum (llama.cpp's `block_q8_0` / `block_q8_1`, with an f32 scale).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Q8Block {
    pub d: f32,
    pub sum: i32,
    pub qs: [i8; 32],
}

/// 256 activations as `d · qs[i]`, with `bsums[j] = Σ qs[16j..16j + 16]` (llama.cpp's
/// `block_q8_K`), for the K-quants whose sub-blocks carry minimums.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct Q8KBlock {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

impl Default for Q8KBlock {
    fn default() -> Self {
        Q8KBlock {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16],
        }
    }
}

/// Quantizes `x` (32 values per block of `out`) symmetrically: `d = max|x| / 127`.
pub fn quantize_q8(x: &[f32], out: &mut [Q8Block]) {
    assert_eq!(x.len(), 32 * out.len(), "x is not whole 32-value blocks");
    for (x, block) in x.chunks_exact(32).zip(out.iter_mut()) {
        let d = absmax(x) / 127.0;
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in block.qs.iter_mut().zip(x) {
            *q = round(v * inv);
            sum += *q as i32;
        }
        block.d = d;
        block.sum = sum;
    }
}

/// Quantizes `x` (256 values per block of `out`) symmetrically: `d = max|x| / 127`.
pub fn quantize_q8k(x: &[f32], out: &mut [Q8KBlock]) {
    assert_eq!(x.len(), 256 * out.len(), "x is not whole 256-value blocks");
    for (x, block) in x.chunks_exact(256).zip(out.iter_mut()) {
        let d = absmax(x) / 127.0;
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in block.qs.iter_mut().zip(x) {
            *q = round(v * inv);
        }
        for (s, qs) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
            *s = qs.iter().map(|&q| q as i16).sum();
        }
        block.d = d;
    }
}

/// `v` (within ±127.5) rounded to the nearest integer, halves away from zero. `f32::round` is a
/// libm call on baseline x86-64 (no SSE4.1), which stops the loop from vectorizing.
#[inline(always)]
fn round(v: f32) -> i8 {
    (v + 0.5f32.copysign(v)) as i8
}

/// Largest magnitude, in 16 lanes so it vectorizes.
fn absmax(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    for c in x.chunks_exact(16) {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    lanes.iter().fold(0f32, |a, &b| a.max(b))
}

/// The dequantized values of quantized activations (for tests and scalar references).
pub fn dequantize_q8(blocks: &[Q8Block]) -> Vec<f32> {
    blocks
        .iter()
        .flat_map(|b| b.qs.iter().map(move |&q| b.d * q as f32))
        .collect()
}

/// The dequantized values of quantized activations (for tests and scalar references).
pub fn dequantize_q8k(blocks: &[Q8KBlock]) -> Vec<f32> {
    blocks
        .iter()
        .flat_map(|b| b.qs.iter().map(move |&q| b.d * q as f32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_activations_are_within_half_a_step() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut q8 = vec![Q8Block::default(); 16];
        quantize_q8(&x, &mut q8);
        let mut q8k = vec![Q8KBlock::default(); 2];
        quantize_q8k(&x, &mut q8k);
        for (deq, step) in [
            (
                dequantize_q8(&q8),
                q8.iter().map(|b| b.d).fold(0f32, f32::max),
            ),
            (
                dequantize_q8k(&q8k),
                q8k.iter().map(|b| b.d).fold(0f32, f32::max),
            ),
        ] {
            for (a, b) in deq.iter().zip(&x) {
                assert!((a - b).abs() <= 0.5001 * step, "{a} vs {b}");
            }
        }
        for b in &q8 {
            assert_eq!(b.sum, b.qs.iter().map(|&q| q as i32).sum::<i32>());
        }
        for b in &q8k {
            for (j, s) in b.bsums.iter().enumerate() {
                assert_eq!(
                    *s,
                    b.qs[16 * j..16 * j + 16]
                        .iter()
                        .map(|&q| q as i16)
                        .sum::<i16>()
                );
            }
        }
    }
}
