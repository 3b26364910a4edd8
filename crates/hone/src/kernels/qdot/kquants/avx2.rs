//! AVX2 kernels (with FMA and F16C), llama.cpp's scheme: 32 quants at a time are unpacked into
//! bytes, `maddubs` multiplies them (unsigned) with the activations (signed) into pairwise i16
//! sums, and `madd` with the sub-block scales widens those to i32. Quants with an offset (Q3_K's
//! −4, Q6_K's −32) are kept unsigned and the offset is taken off once per block through the
//! activations' group sums, as are Q2_K/Q4_K/Q5_K's minimums.
//!
//! `maddubs` saturates at ±32767: the largest pair here is 2 · 63 · 128 (Q6_K), well inside.

use std::arch::x86_64::*;

use super::{blocks, q3k_scales, scales_mins_k4, Q8KBlock};

// The safe entry points. `kernel` hands them out only when `available` found AVX2, FMA and F16C,
// the features the functions they call are compiled for.

pub(super) fn q2k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    // SAFETY: only called on CPUs with AVX2, FMA and F16C (see above).
    unsafe { q2k_avx2(w, x) }
}

pub(super) fn q3k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    // SAFETY: only called on CPUs with AVX2, FMA and F16C (see above).
    unsafe { q3k_avx2(w, x) }
}

pub(super) fn q4k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    // SAFETY: only called on CPUs with AVX2, FMA and F16C (see above).
    unsafe { q4k_avx2(w, x) }
}

pub(super) fn q5k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    // SAFETY: only called on CPUs with AVX2, FMA and F16C (see above).
    unsafe { q5k_avx2(w, x) }
}

pub(super) fn q6k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    // SAFETY: only called on CPUs with AVX2, FMA and F16C (see above).
    unsafe { q6k_avx2(w, x) }
}

/// Element types that can be read as vector bytes: no padding, every bit pattern a value.
pub(super) trait Int: Copy {}
impl Int for u8 {}
impl Int for i8 {}
impl Int for i16 {}

/// The first 16 bytes of `s`, any alignment.
#[inline(always)]
pub(super) fn load128<T: Int>(s: &[T]) -> __m128i {
    assert!(size_of_val(s) >= 16);
    // SAFETY: `s` holds at least 16 bytes (checked; the offsets here are constants, so the check
    // folds away), all of them initialized, and an integer vector takes any bits.
    unsafe { std::ptr::read_unaligned(s.as_ptr().cast()) }
}

/// The first 32 bytes of `s`, any alignment.
#[inline(always)]
pub(super) fn load256<T: Int>(s: &[T]) -> __m256i {
    assert!(size_of_val(s) >= 32);
    // SAFETY: as in `load128`.
    unsafe { std::ptr::read_unaligned(s.as_ptr().cast()) }
}

/// The f16 at `b[0..2]` (and `b[2..4]` if `PAIR`) as `[f0, f1, 0, 0]` in f32, times `scale`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn f16s<const PAIR: bool>(b: &[u8], scale: f32) -> __m128 {
    let bits = if PAIR {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    } else {
        u16::from_le_bytes([b[0], b[1]]) as u32
    };
    _mm_mul_ps(
        _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)),
        _mm_set1_ps(scale),
    )
}

/// The bytes of i16 lane `i` (of 8), to repeat as a `shuffle_epi8` control that copies that lane
/// of each 128-bit lane to all of its lanes.
fn splat16(i: i16) -> i16 {
    (2 * i) | ((2 * i + 1) << 8)
}

/// For the sixteen i16 scales of 16-element groups: each 128-element half's eight, in both
/// 128-bit lanes (`shuffle_epi8` stays within lanes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn halves(scales: __m256i) -> [__m256i; 2] {
    [
        _mm256_permute2x128_si256::<0x00>(scales, scales),
        _mm256_permute2x128_si256::<0x11>(scales, scales),
    ]
}

/// The scales for 32 quants of groups `g` and `g + 1` of a half (see `halves`), each over the
/// 128-bit lane of `madd`'s output that its 16 quants feed.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pair_scales(half: __m256i, g: usize) -> __m256i {
    let g = g as i16;
    let pick = _mm256_set_m128i(_mm_set1_epi16(splat16(g + 1)), _mm_set1_epi16(splat16(g)));
    _mm256_shuffle_epi8(half, pick)
}

/// The sum of the lanes of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum(v: __m256) -> f32 {
    let v = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    _mm_cvtss_f32(_mm_add_ss(v, _mm_movehdup_ps(v)))
}

/// Sub-blocks of 16 with 4-bit scales and minimums in `scales[16]`, 2-bit quants in `qs[64]`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q2k_avx2(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let low2 = _mm256_set1_epi8(3);
    let low4 = _mm_set1_epi8(0xf);
    let (mut acc, mut acc_min) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (b, y) in blocks::<84>(w, x).iter().zip(x) {
        let d = f16s::<true>(&b[80..], y.d);
        let packed = load128(&b[..16]);
        let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(packed), low4));
        let min = _mm256_madd_epi16(mins, load256(&y.bsums));
        let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(d));
        acc_min = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(min), acc_min);
        let scales = _mm256_cvtepu8_epi16(_mm_and_si128(packed, low4));
        let mut sum = _mm256_setzero_si256();
        for (h, scales) in halves(scales).into_iter().enumerate() {
            let mut q = load256(&b[16 + 32 * h..]);
            for s in 0..4 {
                let p = _mm256_maddubs_epi16(
                    _mm256_and_si256(q, low2),
                    load256(&y.qs[128 * h + 32 * s..]),
                );
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, pair_scales(scales, 2 * s)));
                q = _mm256_srli_epi16::<2>(q);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), _mm256_cvtepi32_ps(sum), acc);
    }
    hsum(acc) - hsum(acc_min)
}

/// Q2_K's layout with a third bit from `hmask[32]` and signed 6-bit scales offset by 32.
#[target_feature(enable = "avx2,fma,f16c")]
fn q3k_avx2(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let (low1, low2) = (_mm256_set1_epi8(1), _mm256_set1_epi8(3));
    let mut acc = _mm256_setzero_ps();
    for (b, y) in blocks::<110>(w, x).iter().zip(x) {
        let d = f16s::<false>(&b[108..], y.d);
        let scales = q3k_scales(b[96..108].try_into().unwrap());
        let scales = _mm_sub_epi8(load128(&scales), _mm_set1_epi8(32));
        let scales = _mm256_cvtepi8_epi16(scales);
        // The quants are taken as `q + 4h` in 0..8; the block's sum is then 4·Σ sc·bsums too big.
        let offset = _mm256_slli_epi32::<2>(_mm256_madd_epi16(scales, load256(&y.bsums)));
        let mut hmask = load256(&b[..32]);
        let mut sum = _mm256_sub_epi32(_mm256_setzero_si256(), offset);
        for (h, scales) in halves(scales).into_iter().enumerate() {
            let mut q = load256(&b[32 + 32 * h..]);
            for s in 0..4 {
                let high = _mm256_slli_epi16::<2>(_mm256_and_si256(hmask, low1));
                let q3 = _mm256_or_si256(_mm256_and_si256(q, low2), high);
                let p = _mm256_maddubs_epi16(q3, load256(&y.qs[128 * h + 32 * s..]));
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, pair_scales(scales, 2 * s)));
                q = _mm256_srli_epi16::<2>(q);
                hmask = _mm256_srli_epi16::<1>(hmask);
            }
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), _mm256_cvtepi32_ps(sum), acc);
    }
    hsum(acc)
}

/// `m_j·(bsums[2j] + bsums[2j + 1])` for Q4_K / Q5_K's eight minimums `mins` (bytes), in eight
/// i32 lanes: each minimum doubled up to face its two 16-element sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn min_sums(mins: u64, y: &Q8KBlock) -> __m256i {
    let mins = _mm_cvtsi64_si128(mins as i64);
    let mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mins, mins));
    _mm256_madd_epi16(mins, load256(&y.bsums))
}

/// Sub-blocks of 32 with 6-bit scales and minimums, 4-bit quants in `qs[128]`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4k_avx2(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let low4 = _mm256_set1_epi8(0xf);
    let (mut acc, mut acc_min) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (b, y) in blocks::<144>(w, x).iter().zip(x) {
        let d = f16s::<true>(b, y.d);
        let (scales, mins) = scales_mins_k4(b[4..16].try_into().unwrap());
        let min = _mm256_cvtepi32_ps(min_sums(mins, y));
        acc_min = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(d)), min, acc_min);
        let scales =
            _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(scales as i64)));
        let mut sum = _mm256_setzero_si256();
        for c in 0..4 {
            let q = load256(&b[16 + 32 * c..]);
            let nibbles = [
                _mm256_and_si256(q, low4),
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4),
            ];
            for (i, q) in nibbles.into_iter().enumerate() {
                let j = 2 * c + i;
                let p = _mm256_maddubs_epi16(q, load256(&y.qs[32 * j..]));
                let sc = _mm256_shuffle_epi8(scales, _mm256_set1_epi16(splat16(j as i16)));
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, sc));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), _mm256_cvtepi32_ps(sum), acc);
    }
    hsum(acc) - hsum(acc_min)
}

/// Q4_K with a fifth bit per quant: bit `j` of `qh[l]` for element `l` of sub-block `j`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q5k_avx2(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let (low4, bit4) = (_mm256_set1_epi8(0xf), _mm256_set1_epi8(0x10));
    let (mut acc, mut acc_min) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for (b, y) in blocks::<176>(w, x).iter().zip(x) {
        let d = f16s::<true>(b, y.d);
        let (scales, mins) = scales_mins_k4(b[4..16].try_into().unwrap());
        let min = _mm256_cvtepi32_ps(min_sums(mins, y));
        acc_min = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehdup_ps(d)), min, acc_min);
        let scales =
            _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(scales as i64)));
        // Shifted right by 2 per 64 elements, so that the fifth bits due are bits 0 and 1.
        let mut qh = load256(&b[16..48]);
        let mut sum = _mm256_setzero_si256();
        for c in 0..4 {
            let q = load256(&b[48 + 32 * c..]);
            let nibbles = [
                _mm256_or_si256(
                    _mm256_and_si256(q, low4),
                    _mm256_and_si256(_mm256_slli_epi16::<4>(qh), bit4),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4),
                    _mm256_and_si256(_mm256_slli_epi16::<3>(qh), bit4),
                ),
            ];
            qh = _mm256_srli_epi16::<2>(qh);
            for (i, q) in nibbles.into_iter().enumerate() {
                let j = 2 * c + i;
                let p = _mm256_maddubs_epi16(q, load256(&y.qs[32 * j..]));
                let sc = _mm256_shuffle_epi8(scales, _mm256_set1_epi16(splat16(j as i16)));
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, sc));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), _mm256_cvtepi32_ps(sum), acc);
    }
    hsum(acc) - hsum(acc_min)
}

/// Sub-blocks of 16 with i8 scales; 6-bit quants offset by 32, from nibbles of `ql[128]` and bit
/// pairs of `qh[64]`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k_avx2(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let (low4, bits45) = (_mm256_set1_epi8(0xf), _mm256_set1_epi8(0x30));
    let mut acc = _mm256_setzero_ps();
    for (b, y) in blocks::<210>(w, x).iter().zip(x) {
        let d = f16s::<false>(&b[208..], y.d);
        let scales = _mm256_cvtepi8_epi16(load128(&b[192..208]));
        // The quants are taken unsigned (0..64); the block's sum is then 32·Σ sc·bsums too big.
        let offset = _mm256_madd_epi16(scales, load256(&y.bsums));
        let mut sum = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32::<5>(offset));
        for (h, scales) in halves(scales).into_iter().enumerate() {
            let (ql0, ql1) = (load256(&b[64 * h..]), load256(&b[64 * h + 32..]));
            let qh = load256(&b[128 + 32 * h..]);
            // Element 32k + l: a nibble of ql, and qh's bits 2k..2k + 2 moved to bits 4..6.
            let q = [
                (_mm256_and_si256(ql0, low4), _mm256_slli_epi16::<4>(qh)),
                (_mm256_and_si256(ql1, low4), _mm256_slli_epi16::<2>(qh)),
                (_mm256_and_si256(_mm256_srli_epi16::<4>(ql0), low4), qh),
                (
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), low4),
                    _mm256_srli_epi16::<2>(qh),
                ),
            ];
            for (k, (lo, hi)) in q.into_iter().enumerate() {
                let q6 = _mm256_or_si256(lo, _mm256_and_si256(hi, bits45));
                let p = _mm256_maddubs_epi16(q6, load256(&y.qs[128 * h + 32 * k..]));
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, pair_scales(scales, 2 * k)));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(d), _mm256_cvtepi32_ps(sum), acc);
    }
    hsum(acc)
}
