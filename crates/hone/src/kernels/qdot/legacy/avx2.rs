//! The AVX2 build (with FMA and F16C), one block per 256-bit register, the scheme of llama.cpp's
//! AVX2 `ggml_vec_dot_*_q8_*`: the block's 32 quants as bytes, multiplied with the activations by
//! `vpmaddubsw` and summed to 8 i32 lanes by `vpmaddwd`, converted and multiply-added with the
//! block's scale; the offset or minimum term is summed in a scalar. Without VNNI's exact dot
//! product the i16 pair sums must not saturate: at most 2·31·127 for the 4- and 5-bit quants, kept
//! unsigned; Q8_0's signed weights take the sign trick (|w| times x with w's sign, at most
//! 2·128·127), which relies on activations never being -128 (as `quantize_q8` guarantees).

use std::arch::x86_64::*;

use super::{blocks, Block, DotQ8, Q8Block, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use crate::quant::GgmlType;

pub(super) fn dot_q8(ty: GgmlType) -> Option<DotQ8> {
    let supported = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    if supported {
        pick!(ty, dot)
    } else {
        None
    }
}

fn dot<B: Block>(w: &[u8], x: &[Q8Block]) -> f32 {
    // SAFETY: `dot_q8` hands this out only when the CPU has every feature `kernel` enables.
    unsafe { kernel::<B>(w, x) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn kernel<B: Block>(w: &[u8], x: &[Q8Block]) -> f32 {
    let n = blocks::<B>(w, x);
    // Two accumulators (vector terms, and the second terms' scalar sum), so consecutive blocks'
    // multiply-adds do not wait on each other.
    let mut acc = [(_mm256_setzero_ps(), 0f32); 2];
    let pairs = w.chunks_exact(2 * B::BYTES).zip(x.chunks_exact(2));
    for (w, x) in pairs {
        acc[0] = add_block::<B>(&w[..B::BYTES], &x[0], acc[0]);
        acc[1] = add_block::<B>(&w[B::BYTES..], &x[1], acc[1]);
    }
    if n % 2 == 1 {
        acc[0] = add_block::<B>(&w[(n - 1) * B::BYTES..], &x[n - 1], acc[0]);
    }
    let factor = if B::HAS_MIN { 1.0 } else { -B::OFFSET as f32 };
    hsum(_mm256_add_ps(acc[0].0, acc[1].0)) + factor * (acc[0].1 + acc[1].1)
}

/// `acc` plus block `b` times `x`: its integer dot product scaled by `d_w·d_x` in the vector, its
/// second term's factors in the scalar (`m_w·d_x·Σ qs`, or `d_w·d_x·Σ qs` for the offset).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
fn add_block<B: Block>(b: &[u8], x: &Q8Block, (sum, second): (__m256, f32)) -> (__m256, f32) {
    let scale = f16_to_f32(u16::from_le_bytes([b[0], b[1]])) * x.d;
    let second = if B::HAS_MIN {
        second + f16_to_f32(u16::from_le_bytes([b[2], b[3]])) * x.d * x.sum as f32
    } else if B::BYTE_QUANTS {
        second
    } else {
        second + scale * x.sum as f32
    };
    assert!(b.len() >= B::BYTES);
    // SAFETY: `b` holds a whole block.
    let dot = _mm256_cvtepi32_ps(unsafe { block_dot::<B>(b.as_ptr(), x) });
    (_mm256_fmadd_ps(dot, _mm256_set1_ps(scale), sum), second)
}

/// The 8 lanes of block `b`'s integer dot product with `x`.
///
/// # Safety
/// `b` points to one block of type `B`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn block_dot<B: Block>(b: *const u8, x: &Q8Block) -> __m256i {
    let xq = _mm256_loadu_si256(x.qs.as_ptr() as *const _);
    let pairs = if B::BYTE_QUANTS {
        let q = _mm256_loadu_si256(b.add(B::QS) as *const _);
        _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xq, q))
    } else {
        let raw = _mm_loadu_si128(b.add(B::QS) as *const _);
        let both = _mm256_set_m128i(_mm_srli_epi16::<4>(raw), raw);
        let mut q = _mm256_and_si256(both, _mm256_set1_epi8(0xf));
        if B::FIFTH_BIT {
            let qh = (b.add(B::QS - 4) as *const u32).read_unaligned();
            q = _mm256_or_si256(q, _mm256_and_si256(bit_bytes(qh), _mm256_set1_epi8(16)));
        }
        _mm256_maddubs_epi16(q, xq)
    };
    _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
}

/// 0xff in byte j where bit j of `bits` is set, else 0 (llama.cpp's `bytes_from_bits_32`).
#[target_feature(enable = "avx2")]
#[inline]
fn bit_bytes(bits: u32) -> __m256i {
    // Byte j takes byte j / 8 of `bits`, then all but bit j % 8 are set: all-ones iff it is.
    let spread = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), spread);
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe);
    _mm256_cmpeq_epi8(_mm256_or_si256(bytes, others), _mm256_set1_epi8(-1))
}

#[target_feature(enable = "avx2,f16c")]
#[inline]
fn f16_to_f32(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[target_feature(enable = "avx2")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}
