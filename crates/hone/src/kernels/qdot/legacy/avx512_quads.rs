//! The AVX-512 VBMI build for Q4_0 and Q4_1 weight rows against one row of activations laid out
//! as [`Q8Quads`]: four blocks per register, where the general kernel (`avx512`) fits two.
//!
//! One byte permute gathers four blocks' 16 bytes of nibbles; masks and a shift split them into
//! low and high nibbles, and two `vpdpbusd`s against the activations' first and second halves sum
//! each block's 32 products into the same 4 lanes. So a block costs a quarter of a conversion and
//! of a multiply-add with its scale, against half of each in the general kernel — on the default
//! Q4_1 model's 576-wide rows, its whole dot product ran in ~half the time, and a decoding step
//! of a 4-bit model spends most of its time here. The scales of each group of 8 blocks are
//! collected as in the general kernel, from the bytes the quants were loaded with.
//!
//! The row's last, partial group is read with masked loads: nothing past the row is touched, and
//! the missing blocks read as zeros, which add nothing (the activations are padded with zeros too).

use std::arch::x86_64::*;

use super::avx512::{self, lanes, quad_heads, with_second_terms};
use super::quads::Q8Quads;
use super::{Block, DotQ8Quads, Q4_0, Q4_1};
use crate::quant::GgmlType;

pub(super) fn dot_q8_quads(ty: GgmlType) -> Option<DotQ8Quads> {
    if !(avx512::supported() && is_x86_feature_detected!("avx512vbmi")) {
        return None;
    }
    match ty {
        GgmlType::Q4_0 => Some(dot::<Q4_0>),
        GgmlType::Q4_1 => Some(dot::<Q4_1>),
        _ => None,
    }
}

fn dot<B: Block>(w: &[u8], x: &Q8Quads) -> f32 {
    assert_eq!(
        w.len(),
        x.blocks() * B::BYTES,
        "weight row is not {} blocks",
        x.blocks()
    );
    // SAFETY: `dot_q8_quads` hands this out only when the CPU has every feature `kernel`
    // enables, and the row holds the activations' number of blocks.
    unsafe { kernel::<B>(w.as_ptr(), x) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,fma,f16c")]
unsafe fn kernel<B: Block>(w: *const u8, x: &Q8Quads) -> f32 {
    let n = x.blocks();
    let quad_bytes = 4 * B::BYTES;
    // One accumulator per quad of a group: two chains of multiply-adds.
    let mut acc = [_mm512_setzero_ps(); 2];
    // Σ over blocks of the offset or minimum term's factors, as `avx512::scales` lays them out.
    let mut corr = _mm512_setzero_ps();
    for g in 0..n / 8 {
        let p = w.add(2 * g * quad_bytes);
        let quads = [quad::<B>(p, None), quad::<B>(p.add(quad_bytes), None)];
        group::<B>(quads, x, g, &mut acc, &mut corr);
    }
    let tail = n % 8 * B::BYTES;
    if tail > 0 {
        // Pointers past the row are only ever masked out entirely, never read.
        let p = w.wrapping_add(n / 8 * 2 * quad_bytes);
        let second = tail.saturating_sub(quad_bytes);
        let quads = [
            quad::<B>(p, Some(tail.min(quad_bytes))),
            quad::<B>(p.wrapping_add(quad_bytes), Some(second)),
        ];
        group::<B>(quads, x, n / 8, &mut acc, &mut corr);
    }
    with_second_terms::<B>(_mm512_add_ps(acc[0], acc[1]), corr)
}

/// The bytes of the 4 blocks at `p`: the first 64, and the rest (16 for Q4_1, 8 for Q4_0) in
/// the low bytes of the second register. With `valid`, only that many bytes are read and the
/// others are zero.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,fma,f16c")]
#[inline]
unsafe fn quad<B: Block>(p: *const u8, valid: Option<usize>) -> [__m512i; 2] {
    let rest = 4 * B::BYTES - 64;
    let mask = |bytes: usize| match bytes {
        64.. => u64::MAX,
        _ => (1u64 << bytes) - 1,
    };
    let (first, second) = match valid {
        None => (u64::MAX, mask(rest)),
        Some(v) => (mask(v), mask(v.saturating_sub(64).min(rest))),
    };
    [
        _mm512_maskz_loadu_epi8(first, p.cast()),
        _mm512_maskz_loadu_epi8(second, p.wrapping_add(64).cast()),
    ]
}

/// Adds group `g`'s block products, scaled, to `acc` (quad q to `acc[q]`) and its second terms'
/// factors to `corr`. `quads` are the group's weight bytes as [`quad`] loads them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,fma,f16c")]
#[inline]
unsafe fn group<B: Block>(
    quads: [[__m512i; 2]; 2],
    x: &Q8Quads,
    g: usize,
    acc: &mut [__m512; 2],
    corr: &mut __m512,
) {
    // Lane 2j: block j's d_w, lane 2j + 1 its m_w (0 without a minimum); times the activations'.
    let heads = _mm512_cvtph_ps(quad_heads::<B>(quads[0][0], quads[1][0]));
    let s = _mm512_mul_ps(heads, _mm512_load_ps(x.scales(g).0.as_ptr()));
    *corr = _mm512_fmadd_ps(heads, _mm512_load_ps(x.sums(g).0.as_ptr()), *corr);
    // Byte i: byte i % 16 of block i / 16's quants.
    let index: [u8; 64] = std::array::from_fn(|i| (i / 16 * B::BYTES + B::QS + i % 16) as u8);
    let index = _mm512_loadu_si512(index.as_ptr().cast());
    let nibble = _mm512_set1_epi8(0xf);
    let lines = x.quants(g);
    for (q, [first, rest]) in quads.into_iter().enumerate() {
        let quants = _mm512_permutex2var_epi8(first, index, rest);
        let low = _mm512_and_si512(quants, nibble);
        let high = _mm512_and_si512(_mm512_srli_epi16::<4>(quants), nibble);
        let halves = |h: usize| _mm512_load_si512(lines[2 * q + h].0.as_ptr().cast());
        let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), low, halves(0));
        let dot = _mm512_dpbusd_epi32(dot, high, halves(1));
        // Lanes 4b..4b + 4 hold block 4q + b's products: its scale in each.
        let scale = _mm512_permutexvar_ps(lanes(|l| 2 * (4 * q + l / 4)), s);
        acc[q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[q]);
    }
}
