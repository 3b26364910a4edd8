//! AVX-512 kernels (F/BW/VL with VNNI) for Q4_K, Q5_K and Q6_K, the types of Q4_K_M files.
//!
//! A super-block is four steps of 64 quants. Each step's quants are unpacked to bytes in the order
//! of 64 consecutive activations, so those load straight from memory; the unpacking moves bits on
//! the weight side instead (a 32-byte load broadcast to both halves, shifted differently in each).
//! VNNI's `dpbusd` multiplies the unsigned quants with the signed activations and sums them four
//! at a time into i32 lanes that each lie within one sub-block. Those sums stay below 2^15
//! (4 · 63 · 128 at most, Q6_K), so the lanes of two steps pack losslessly into one vector of
//! i16, and a single `dpwssd` per two steps multiplies them by their sub-block scales and
//! accumulates: 6 multiplies per super-block where AVX2 needs 16.

use std::arch::x86_64::*;

use super::avx2::{f16s, hsum, load128, load256, min_sums, Int};
use super::{blocks, scales_mins_k4, Q8KBlock};

// The safe entry points. `kernel` hands them out only when `available` found AVX-512 F/BW/VL,
// VNNI, AVX2, FMA and F16C, the features the functions they call are compiled for.

pub(super) fn q4k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    // SAFETY: only called on CPUs with the features (see above).
    unsafe { q4k_avx512(w, x) }
}

pub(super) fn q5k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    // SAFETY: only called on CPUs with the features (see above).
    unsafe { q5k_avx512(w, x) }
}

pub(super) fn q6k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    // SAFETY: only called on CPUs with the features (see above).
    unsafe { q6k_avx512(w, x) }
}

/// The first 64 bytes of `s`, any alignment.
#[inline(always)]
fn load512<T: Int>(s: &[T]) -> __m512i {
    assert!(size_of_val(s) >= 64);
    // SAFETY: as in `avx2::load128`.
    unsafe { std::ptr::read_unaligned(s.as_ptr().cast()) }
}

/// `lo` in the lower 256 bits, `hi` in the upper.
#[inline]
#[target_feature(enable = "avx512f")]
fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// 128-bit lane `t` holding `lo[t]` in its four low i16 and `hi[t]` in its four high ones.
#[inline]
#[target_feature(enable = "avx512f")]
fn per_lane(lo: [u16; 4], hi: [u16; 4]) -> __m512i {
    let x4 = |v: u16| (v as u64 * 0x0001_0001_0001_0001) as i64;
    let (l, h) = (lo.map(x4), hi.map(x4));
    _mm512_set_epi64(h[3], l[3], h[2], l[2], h[1], l[1], h[0], l[0])
}

/// The sums of four consecutive products of the 64 unsigned quants `q` and the activations
/// `y[..64]`: lane `l` covers elements `4l..4l + 4`.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
fn dot4(q: __m512i, y: &[i8]) -> __m512i {
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, load512(y))
}

/// `sum + Σ (lanes of a, b)·scale`: `a` and `b` (lanes below 2^15 in magnitude) packed to i16,
/// so that 128-bit lane `t` holds `a`'s i32 lanes `4t..4t + 4` then `b`'s, and multiplied by the
/// i16 `scales` in the same places.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn scale_pair(sum: __m512i, a: __m512i, b: __m512i, scales: __m512i) -> __m512i {
    _mm512_dpwssd_epi32(sum, _mm512_packs_epi32(a, b), scales)
}

/// Q4_K's (and Q5_K's low) quants `64c..64c + 64` from the 32 bytes `qs` holding them: low nibbles
/// in the lower half, high nibbles in the upper.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn nibbles(qs: &[u8]) -> __m512i {
    let shift = join(_mm256_setzero_si256(), _mm256_set1_epi16(4));
    let q = _mm512_srlv_epi16(_mm512_broadcast_i64x4(load256(qs)), shift);
    _mm512_and_si512(q, _mm512_set1_epi8(0xf))
}

/// `Σ_j sc_j·(Σ q·y over sub-block j)` for Q4_K / Q5_K's eight sub-blocks of 32, from the four
/// steps' `dot4` sums `a` and the scale bytes `scales`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn scale_32(a: [__m512i; 4], scales: u64) -> __m512i {
    // Step c's lanes 0..8 are sub-block 2c, 8..16 sub-block 2c + 1: after packing steps c and
    // c + 1, 128-bit lanes 0..4 face sub-blocks 2c, 2c, 2c + 1, 2c + 1 in their low half and
    // 2c + 2, 2c + 2, 2c + 3, 2c + 3 in their high half. The shuffles pick those scale bytes,
    // zero-extended (0x80 zeroes a byte).
    let pick = |c: u16| {
        let lo = [2 * c, 2 * c, 2 * c + 1, 2 * c + 1].map(|j| 0x8000 | j);
        per_lane(lo, lo.map(|j| j + 2))
    };
    let scales = _mm512_set1_epi64(scales as i64);
    let sum = scale_pair(
        _mm512_setzero_si512(),
        a[0],
        a[1],
        _mm512_shuffle_epi8(scales, pick(0)),
    );
    scale_pair(sum, a[2], a[3], _mm512_shuffle_epi8(scales, pick(2)))
}

/// Q4_K / Q5_K's block result folded into one vector for a single conversion and multiply-add:
/// lanes 0..8 `sum` (16 lanes added in pairs), to be multiplied by `d`, lanes 8..16 the
/// minimums' sums, by `dmin` (and subtracted when the lanes are summed at the end).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn add_block(acc: __m512, sum: __m512i, mins: __m256i, d_dmin: __m128) -> __m512 {
    let sum = _mm256_add_epi32(
        _mm512_castsi512_si256(sum),
        _mm512_extracti64x4_epi64::<1>(sum),
    );
    let ints = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(sum), mins);
    let which = join(_mm256_setzero_si256(), _mm256_set1_epi32(1));
    let scale = _mm512_permutexvar_ps(which, _mm512_castps128_ps512(d_dmin));
    _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(ints), acc)
}

/// Lanes 0..8 minus lanes 8..16 (see `add_block`).
#[inline]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
fn finish(acc: __m512) -> f32 {
    let high = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
    hsum(_mm256_sub_ps(_mm512_castps512_ps256(acc), high))
}

/// Sub-blocks of 32 with 6-bit scales and minimums, 4-bit quants in `qs[128]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q4k_avx512(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let mut acc = _mm512_setzero_ps();
    for (b, y) in blocks::<144>(w, x).iter().zip(x) {
        let (scales, mins) = scales_mins_k4(b[4..16].try_into().unwrap());
        let a = std::array::from_fn(|c| dot4(nibbles(&b[16 + 32 * c..]), &y.qs[64 * c..]));
        let sum = scale_32(a, scales);
        acc = add_block(acc, sum, min_sums(mins, y), f16s::<true>(b, y.d));
    }
    finish(acc)
}

/// Q4_K with a fifth bit per quant: bit `j` of `qh[l]` for element `l` of sub-block `j`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q5k_avx512(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let bit4 = _mm512_set1_epi8(0x10);
    let mut acc = _mm512_setzero_ps();
    for (b, y) in blocks::<176>(w, x).iter().zip(x) {
        let (scales, mins) = scales_mins_k4(b[4..16].try_into().unwrap());
        let qh = _mm512_broadcast_i64x4(load256(&b[16..48]));
        let a = std::array::from_fn(|c| {
            let q = nibbles(&b[48 + 32 * c..]);
            // Add 16 where the sub-block's bit (2c below, 2c + 1 above) of qh is set.
            let bit = |j: usize| _mm256_set1_epi8((1u8 << j) as i8);
            let high = _mm512_test_epi8_mask(qh, join(bit(2 * c), bit(2 * c + 1)));
            dot4(_mm512_mask_add_epi8(q, high, q, bit4), &y.qs[64 * c..])
        });
        let sum = scale_32(a, scales);
        acc = add_block(acc, sum, min_sums(mins, y), f16s::<true>(b, y.d));
    }
    finish(acc)
}

/// Sub-blocks of 16 with i8 scales; 6-bit quants offset by 32, from nibbles of `ql[128]` and bit
/// pairs of `qh[64]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn q6k_avx512(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let (low4, bits45) = (_mm512_set1_epi8(0xf), _mm512_set1_epi8(0x30));
    // In each 128-element half, element 32k + l takes bits 2k..2k + 2 of qh[l] as its bits 4..6:
    // shifted left by 4 and 2 for k = 0, 1 (one step's halves), right by 0 and 2 for k = 2, 3.
    let up = join(_mm256_set1_epi16(4), _mm256_set1_epi16(2));
    let down = join(_mm256_setzero_si256(), _mm256_set1_epi16(2));
    // Step c's 128-bit lane t is group 4c + t: after packing steps c and c + 1, lane t faces
    // groups 4c + t and 4c + 4 + t, whose i16 scales these indices pick.
    let pick = |c: u16| {
        let lo = [4 * c, 4 * c + 1, 4 * c + 2, 4 * c + 3];
        per_lane(lo, lo.map(|g| g + 4))
    };
    let picks = [pick(0), pick(2)];
    let mut acc = _mm512_setzero_ps();
    for (b, y) in blocks::<210>(w, x).iter().zip(x) {
        let scales = _mm256_cvtepi8_epi16(load128(&b[192..208]));
        // The quants are taken unsigned (0..64); the block's sum is then 32·Σ sc·bsums too big.
        let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(scales, load256(&y.bsums)));
        let mut sum = _mm512_zextsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), offset));
        let scales = _mm512_zextsi256_si512(scales);
        for (h, pick) in picks.into_iter().enumerate() {
            let ql = load512(&b[64 * h..]);
            let qh = _mm512_broadcast_i64x4(load256(&b[128 + 32 * h..]));
            // (shifted qh & 0x30) | nibble, for k = 0, 1 and k = 2, 3.
            let q01 = _mm512_ternarylogic_epi32::<0xea>(
                _mm512_sllv_epi16(qh, up),
                bits45,
                _mm512_and_si512(ql, low4),
            );
            let q23 = _mm512_ternarylogic_epi32::<0xea>(
                _mm512_srlv_epi16(qh, down),
                bits45,
                _mm512_and_si512(_mm512_srli_epi16::<4>(ql), low4),
            );
            let (a0, a1) = (
                dot4(q01, &y.qs[128 * h..]),
                dot4(q23, &y.qs[128 * h + 64..]),
            );
            sum = scale_pair(sum, a0, a1, _mm512_permutexvar_epi16(pick, scales));
        }
        let d = f16s::<false>(&b[208..], y.d);
        acc = _mm512_fmadd_ps(_mm512_broadcastss_ps(d), _mm512_cvtepi32_ps(sum), acc);
    }
    _mm512_reduce_add_ps(acc)
}
