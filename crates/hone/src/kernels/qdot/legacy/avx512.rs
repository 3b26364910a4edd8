//! The AVX-512 build (F, BW, VL and VNNI, with FMA and F16C): two blocks per 512-bit register.
//!
//! A pair of blocks is one `vpdpbusd` — unsigned weight quants times signed activations, summed in
//! fours into 16 i32 lanes, 8 per block — then one conversion to f32 and one multiply-add with each
//! block's scale in its 8 lanes. The scales of 8 blocks are collected with permutes from a few wide
//! loads (`d_w` and `m_w` from the weight row, `d_x` and `Σ qs` from the activations; gather
//! instructions measured slower), converted and multiplied in one register, a group ahead of the
//! dot products that use them. The arithmetic is all 512 bits wide: on Intel cores, 512-bit
//! instructions in flight take port 1's vector unit away from 256-bit ones, so mixing the two
//! widths costs more than either.
//!
//! 4-bit quants are not shifted down: the high nibbles are dotted in place, as 16× their value,
//! and their lanes scaled by 1/16 once at the end (products stay exact in i32). Q8_0's signed
//! weights get +128 to make them unsigned, taken back with 128·Σ qs per block.

use std::arch::x86_64::*;

use super::{blocks, Block, DotQ8, Q8Block, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use crate::quant::GgmlType;

pub(super) fn dot_q8(ty: GgmlType) -> Option<DotQ8> {
    if supported() {
        pick!(ty, dot)
    } else {
        None
    }
}

/// Whether the CPU has every feature this build's kernels enable.
pub(super) fn supported() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

fn dot<B: Block>(w: &[u8], x: &[Q8Block]) -> f32 {
    // SAFETY: `dot_q8` hands this out only when the CPU has every feature `kernel` enables.
    unsafe { kernel::<B>(w, x) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
fn kernel<B: Block>(w: &[u8], x: &[Q8Block]) -> f32 {
    let n = blocks::<B>(w, x);
    if n >= 8 {
        // SAFETY: `blocks` checked that both rows hold n blocks.
        return unsafe { whole_groups::<B>(w.as_ptr(), x.as_ptr(), n) };
    }
    // Fewer than 8 blocks: copied into a group padded with zero blocks, which add nothing.
    let mut pad_w = [0; 8 * 34];
    pad_w[..w.len()].copy_from_slice(w);
    let mut pad_x = [Q8Block::default(); 8];
    pad_x[..n].copy_from_slice(x);
    // SAFETY: the copies hold 8 blocks.
    unsafe { whole_groups::<B>(pad_w.as_ptr(), pad_x.as_ptr(), 8) }
}

/// The dot product of `n >= 8` blocks at `w` and `x`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
unsafe fn whole_groups<B: Block>(w: *const u8, x: *const Q8Block, n: usize) -> f32 {
    let (full, tail) = (n / 8, n % 8);
    let group = |first: usize| (w.add(first * B::BYTES), x.add(first));
    let mut acc = [_mm512_setzero_ps(); 4];
    // Σ over blocks of the offset or minimum term's factors, in the lanes `scales` documents.
    let mut corr = _mm512_setzero_ps();
    // Pair k of a group is blocks 2k and 2k + 1, their scales in lanes 0..8 and 8..16.
    let pair = |(w, x): (*const u8, *const Q8Block), k: usize, s: __m512, acc| {
        let s = _mm512_permutexvar_ps(lanes(|l| 4 * k + 2 * (l / 8)), s);
        let dot = pair_dot::<B>(w.add(2 * k * B::BYTES), x.add(2 * k));
        _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc)
    };
    // The last `tail` blocks are taken as the group of the row's last 8, with the scales of those
    // before them zeroed. Its scales first, apart from the loop's.
    let last = if tail > 0 {
        scales::<B>(group(n - 8), u16::MAX << (2 * (8 - tail)), &mut corr)
    } else {
        _mm512_setzero_ps()
    };
    // A group's scales are computed while the previous group's blocks are multiplied.
    let mut s = scales::<B>(group(0), u16::MAX, &mut corr);
    for g in 0..full {
        let next = if g + 1 < full {
            scales::<B>(group(8 * (g + 1)), u16::MAX, &mut corr)
        } else {
            last
        };
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = pair(group(8 * g), k, s, *acc);
        }
        s = next;
    }
    // The pairs holding the last `tail` blocks (and, for an odd tail, one zero-scaled block).
    for (k, acc) in acc.iter_mut().enumerate() {
        if tail > 0 && 2 * k + 2 + tail > 8 {
            *acc = pair(group(n - 8), k, s, *acc);
        }
    }
    let sum = _mm512_add_ps(acc[0], acc[1]);
    finish::<B>(_mm512_add_ps(sum, _mm512_add_ps(acc[2], acc[3])), corr)
}

/// The dot product from the scaled block products `sum` and the second terms' factors `corr` (in
/// the lanes [`scales`] puts them).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
#[inline]
pub(super) unsafe fn finish<B: Block>(sum: __m512, corr: __m512) -> f32 {
    let sum = if B::BYTE_QUANTS || B::FIFTH_BIT {
        sum
    } else {
        let unscale: [f32; 16] = std::array::from_fn(|l| if l % 8 < 4 { 1.0 } else { 1.0 / 16.0 });
        _mm512_mul_ps(sum, _mm512_loadu_ps(unscale.as_ptr()))
    };
    with_second_terms::<B>(sum, corr)
}

/// The sum of the lanes of `sum`, the block products at their true scale, and of the second
/// terms whose factors `corr` holds (in the lanes [`scales`] puts them).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
#[inline]
pub(super) unsafe fn with_second_terms<B: Block>(sum: __m512, corr: __m512) -> f32 {
    let (terms, factor) = if B::HAS_MIN {
        (0xaaaa, 1.0)
    } else if B::BYTE_QUANTS {
        (0x5555, -128.0)
    } else {
        (0x5555, -B::OFFSET as f32)
    };
    let corr = _mm512_maskz_mov_ps(terms, corr);
    _mm512_reduce_add_ps(_mm512_fmadd_ps(corr, _mm512_set1_ps(factor), sum))
}

/// The scales of the 8 blocks at `(w, x)`: lane 2j holds block j's `d_w·d_x`, lane 2j + 1 its
/// `m_w·d_x` (0 for types without a minimum); lanes outside `keep` are zeroed. Adds to `corr` the
/// factors of each kept block's second term: `m_w·d_x·Σ qs` in the odd lanes for a minimum, else
/// `d_w·d_x·Σ qs` in the even lanes (for the offset, applied once at the end).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
#[inline]
unsafe fn scales<B: Block>(
    (w, x): (*const u8, *const Q8Block),
    keep: u16,
    corr: &mut __m512,
) -> __m512 {
    let wf = _mm512_cvtph_ps(weight_heads::<B>(w));
    let xd = activation_heads(x);
    if B::HAS_MIN {
        let xf = _mm512_mask_cvtepi32_ps(xd, 0xaaaa, _mm512_castps_si512(xd));
        let s = _mm512_maskz_mul_ps(keep, wf, _mm512_moveldup_ps(xf));
        *corr = _mm512_fmadd_ps(s, xf, *corr);
        s
    } else {
        let s = _mm512_maskz_mul_ps(keep, wf, _mm512_moveldup_ps(xd));
        let sums = _mm512_movehdup_ps(_mm512_cvtepi32_ps(_mm512_castps_si512(xd)));
        *corr = _mm512_fmadd_ps(s, sums, *corr);
        s
    }
}

/// The first dword of each of 8 weight blocks (`d`, and `m` for the types with one, else 0, in
/// the high half).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
#[inline]
pub(super) unsafe fn weight_heads<B: Block>(p: *const u8) -> __m256i {
    let at = |j: usize| B::BYTES * j;
    let load = |j: usize| _mm512_loadu_si512(p.add(at(j)) as *const _);
    if B::BYTES <= 20 {
        return quad_heads::<B>(load(0), load(4));
    }
    // Permutes take lane l (< 8) from dword `index(l)` of their two sources.
    let heads = if B::BYTES < 32 {
        // Four 32-byte loads of 2 blocks each, paired into two registers.
        let half = |j| _mm256_loadu_si256(p.add(at(j)) as *const _);
        let pair = |j| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(half(j)), half(j + 2));
        let index = lanes(|l| l % 8 / 4 * 16 + l / 2 % 2 * 8 + at(l % 2) / 4);
        _mm512_permutex2var_epi32(pair(0), index, pair(4))
    } else {
        // Q8_0: four 64-byte loads of 2 blocks each.
        let index = lanes(|l| l / 2 % 2 * 16 + at(l % 2) / 4);
        let lo = _mm512_permutex2var_epi32(load(0), index, load(2));
        let hi = _mm512_permutex2var_epi32(load(4), index, load(6));
        _mm512_mask_blend_epi32(0xf0, lo, hi)
    };
    heads_in_place::<B>(_mm512_castsi512_si256(heads))
}

/// [`weight_heads`] of 8 blocks of at most 20 bytes, from the 64 bytes at block 0 (`first`) and
/// at block 4 (`second`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
#[inline]
pub(super) unsafe fn quad_heads<B: Block>(first: __m512i, second: __m512i) -> __m256i {
    // Lane l (< 8) from dword `index(l)` of the two sources.
    let index = lanes(|l| l % 8 / 4 * 16 + B::BYTES * (l % 4) / 4);
    let heads = _mm512_permutex2var_epi32(first, index, second);
    heads_in_place::<B>(_mm512_castsi512_si256(heads))
}

/// The dwords at each of 8 blocks' first byte rounded down to 4 (`heads`), as
/// [`weight_heads`] returns them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
#[inline]
unsafe fn heads_in_place<B: Block>(heads: __m256i) -> __m256i {
    let at = |j: usize| B::BYTES * j;
    // Heads at odd 16-bit offsets arrive in the high half.
    let heads = if B::BYTES % 4 == 0 {
        heads
    } else {
        let shift: [i32; 8] = std::array::from_fn(|j| (8 * (at(j) % 4)) as i32);
        _mm256_srlv_epi32(heads, _mm256_loadu_si256(shift.as_ptr() as *const _))
    };
    if B::HAS_MIN {
        heads
    } else {
        // The high halves are quants: zeroed, or their products with d_x could be subnormal,
        // which Intel cores compute slowly (a 4x slower kernel, measured).
        _mm256_and_si256(heads, _mm256_set1_epi32(0xffff))
    }
}

/// `[d, Σ qs]` of 8 activation blocks, the sums still integers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
#[inline]
unsafe fn activation_heads(x: *const Q8Block) -> __m512 {
    // Blocks are 10 dwords: a 64-byte load at block j holds the heads of j and j + 1.
    let load = |j: usize| _mm512_loadu_ps(x.add(j) as *const f32);
    // Lanes 0..8 from the loads at blocks 0 and 2, lanes 8..16 from those at 4 and 6.
    let index = lanes(|l| [0, 1, 10, 11, 16, 17, 26, 27][l % 8]);
    let lo = _mm512_permutex2var_ps(load(0), index, load(2));
    let hi = _mm512_permutex2var_ps(load(4), index, load(6));
    _mm512_mask_blend_ps(0xff00, lo, hi)
}

/// The integer dot products of weight blocks `w`, `w + 1` with activation blocks `x`, `x + 1`, in
/// lanes 0..8 and 8..16 (lanes 4..8 and 12..16 ×16 for the 4-bit types).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
#[inline]
unsafe fn pair_dot<B: Block>(w: *const u8, x: *const Q8Block) -> __m512i {
    let lo = _mm512_castsi256_si512(_mm256_loadu_si256((*x).qs.as_ptr() as *const _));
    let xq = _mm512_inserti64x4::<1>(lo, _mm256_loadu_si256((*x.add(1)).qs.as_ptr() as *const _));
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), pair_quants::<B>(w), xq)
}

/// The quants of weight blocks `w` and `w + 1` as unsigned bytes in the order of their
/// activations' (elements 0..32 of each block in its 32 bytes): Q8_0's +128; the high nibbles of
/// the 4-bit types left in place, as 16× their value.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
#[inline]
pub(super) unsafe fn pair_quants<B: Block>(w: *const u8) -> __m512i {
    let next = w.add(B::BYTES);
    if B::BYTE_QUANTS {
        let lo = _mm512_castsi256_si512(_mm256_loadu_si256(w.add(B::QS) as *const _));
        let both = _mm512_inserti64x4::<1>(lo, _mm256_loadu_si256(next.add(B::QS) as *const _));
        return _mm512_xor_si512(both, _mm512_set1_epi8(-128));
    }
    // Each block's 16 bytes of nibbles twice: one copy for the low nibbles, one for the high.
    let raw = _mm512_broadcast_i32x4(_mm_loadu_si128(w.add(B::QS) as *const _));
    let raw =
        _mm512_mask_broadcast_i32x4(raw, 0xff00, _mm_loadu_si128(next.add(B::QS) as *const _));
    if B::FIFTH_BIT {
        let shift = _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4);
        let nibbles = _mm512_and_si512(_mm512_srlv_epi64(raw, shift), _mm512_set1_epi8(0xf));
        let qh = |b: *const u8| (b.add(B::QS - 4) as *const u32).read_unaligned() as u64;
        _mm512_mask_add_epi8(
            nibbles,
            qh(w) | qh(next) << 32,
            nibbles,
            _mm512_set1_epi8(16),
        )
    } else {
        let (lo, hi) = (0x0f0f_0f0f_0f0f_0f0f, 0xf0f0_f0f0_f0f0_f0f0_u64 as i64);
        _mm512_and_si512(raw, _mm512_setr_epi64(lo, lo, hi, hi, lo, lo, hi, hi))
    }
}

/// A vector of `lane(l)` for each lane l (constants, folded by the compiler).
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn lanes(lane: impl Fn(usize) -> usize) -> __m512i {
    let v: [i32; 16] = std::array::from_fn(|l| lane(l) as i32);
    // SAFETY: `v` is 64 readable bytes.
    unsafe { _mm512_loadu_si512(v.as_ptr() as *const _) }
}
