//! Dot products of weight rows stored as 16-bit floats (F16, BF16) with f32 activations: the
//! weights are widened in registers, never written out as f32, so a decoding step reads half the
//! bytes an f32 copy would.
//!
//! Hand-written because no crate offers these dot products with run-time dispatch, and a build for
//! baseline x86-64 never uses the F16C or AVX-512 conversions on its own. Three builds, chosen once per matrix product from what the CPU has:
//! AVX-512, AVX2 with FMA and F16C, and portable Rust for everything else. Each keeps several
//! independent accumulators, so the multiply-adds are not serialized on their latency.

use crate::quant::GgmlType;

/// `pick!(ty, kernel)` is `Some(kernel::<F16> as DotF32)` or the BF16 one; None for other types.
macro_rules! pick {
    ($ty:expr, $kernel:ident) => {
        match $ty {
            GgmlType::F16 => Some($kernel::<F16> as DotF32),
            GgmlType::BF16 => Some($kernel::<BF16> as DotF32),
            _ => None,
        }
    };
}

/// Σ_i w_i·x_i over one weight row of 16-bit floats (`w` is `2·x.len()` little-endian bytes).
pub type DotF32 = fn(w: &[u8], x: &[f32]) -> f32;

/// The fastest implementation this CPU runs for `ty` (F16 or BF16); None for any other type.
pub fn dot_f32(ty: GgmlType) -> Option<DotF32> {
    implementations(ty).first().map(|&(_, dot)| dot)
}

/// Every implementation this CPU runs for `ty`, by name, fastest first.
fn implementations(ty: GgmlType) -> Vec<(&'static str, DotF32)> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        out.extend(avx512::dot_f32(ty).map(|dot| ("avx512", dot)));
        out.extend(avx2::dot_f32(ty).map(|dot| ("avx2", dot)));
    }
    out.extend(pick!(ty, dot_portable).map(|dot| ("portable", dot)));
    out
}

/// A 16-bit float format, widened exactly to f32.
trait Half {
    fn to_f32(bits: u16) -> f32;
}

struct F16;
struct BF16;

impl Half for F16 {
    /// Branch-free, so loops of it vectorize (`half`'s conversion is a call per value), and
    /// without subnormal f32 arithmetic, which some CPUs take a slow path for.
    #[inline(always)]
    fn to_f32(bits: u16) -> f32 {
        let magnitude = (bits & 0x7fff) as u32;
        let unsigned = if magnitude < 0x0400 {
            // Subnormal (or zero): the mantissa times 2^-24.
            ((magnitude as f32) * f32::from_bits(0x3380_0000)).to_bits()
        } else if magnitude < 0x7c00 {
            // Normal: exponent rebiased from 15 to 127.
            (magnitude + (112 << 10)) << 13
        } else {
            // Infinity or NaN.
            (magnitude << 13) | 0x7f80_0000
        };
        f32::from_bits(unsigned | ((bits & 0x8000) as u32) << 16)
    }
}

impl Half for BF16 {
    #[inline(always)]
    fn to_f32(bits: u16) -> f32 {
        f32::from_bits((bits as u32) << 16)
    }
}

/// Checks that `w` holds one 16-bit weight per activation (which the SIMD builds rely on to read
/// without bounds checks).
fn check(w: &[u8], x: &[f32]) {
    assert_eq!(
        w.len(),
        2 * x.len(),
        "weight row is not {} 16-bit values",
        x.len()
    );
}

/// Plain loops over 16 lanes, which the compiler vectorizes.
fn dot_portable<H: Half>(w: &[u8], x: &[f32]) -> f32 {
    check(w, x);
    let (w_chunks, w_tail) = w.as_chunks::<2>().0.as_chunks::<16>();
    let (x_chunks, x_tail) = x.as_chunks::<16>();
    let mut lanes = [0f32; 16];
    for (w, x) in w_chunks.iter().zip(x_chunks) {
        for (lane, (&w, &x)) in lanes.iter_mut().zip(w.iter().zip(x)) {
            *lane += H::to_f32(u16::from_le_bytes(w)) * x;
        }
    }
    lanes.iter().sum::<f32>() + tail::<H>(w_tail, x_tail)
}

/// Σ w_i·x_i one value at a time, for the few past the last whole chunk.
fn tail<H: Half>(w: &[[u8; 2]], x: &[f32]) -> f32 {
    w.iter()
        .zip(x)
        .map(|(&w, &x)| H::to_f32(u16::from_le_bytes(w)) * x)
        .sum()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{check, DotF32, Half, BF16, F16};
    use crate::quant::GgmlType;

    pub(super) fn dot_f32(ty: GgmlType) -> Option<DotF32> {
        let supported = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl");
        if supported {
            pick!(ty, dot)
        } else {
            None
        }
    }

    fn dot<H: Widen>(w: &[u8], x: &[f32]) -> f32 {
        // SAFETY: `dot_f32` hands this out only when the CPU has every feature `kernel` enables.
        unsafe { kernel::<H>(w, x) }
    }

    /// 16 values widened to f32 in one register.
    trait Widen: Half {
        /// # Safety
        /// The CPU has AVX-512 F, BW and VL.
        unsafe fn widen(bits: __m256i) -> __m512;
    }

    impl Widen for F16 {
        #[inline(always)]
        unsafe fn widen(bits: __m256i) -> __m512 {
            _mm512_cvtph_ps(bits)
        }
    }

    impl Widen for BF16 {
        #[inline(always)]
        unsafe fn widen(bits: __m256i) -> __m512 {
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(bits)))
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    fn kernel<H: Widen>(w: &[u8], x: &[f32]) -> f32 {
        check(w, x);
        let (w, x, n) = (w.as_ptr(), x.as_ptr(), x.len());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: values i..i + 16 exist in both rows whenever i + 16 <= n; the last partial
        // chunk is read with masked loads.
        unsafe {
            let term = |i: usize, acc: __m512| {
                let wv = H::widen(_mm256_loadu_si256(w.add(2 * i) as *const _));
                _mm512_fmadd_ps(wv, _mm512_loadu_ps(x.add(i)), acc)
            };
            while i + 64 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    *acc = term(i + 16 * j, *acc);
                }
                i += 64;
            }
            while i + 16 <= n {
                acc[0] = term(i, acc[0]);
                i += 16;
            }
            if i < n {
                let mask = (1u16 << (n - i)) - 1;
                let wv = H::widen(_mm256_maskz_loadu_epi16(mask, w.add(2 * i) as *const _));
                acc[1] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(mask, x.add(i)), acc[1]);
            }
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(sum)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{check, tail, DotF32, Half, BF16, F16};
    use crate::quant::GgmlType;

    pub(super) fn dot_f32(ty: GgmlType) -> Option<DotF32> {
        let supported = is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c");
        if supported {
            pick!(ty, dot)
        } else {
            None
        }
    }

    fn dot<H: Widen>(w: &[u8], x: &[f32]) -> f32 {
        // SAFETY: `dot_f32` hands this out only when the CPU has every feature `kernel` enables.
        unsafe { kernel::<H>(w, x) }
    }

    /// 8 values widened to f32 in one register.
    trait Widen: Half {
        /// # Safety
        /// The CPU has AVX2 and F16C.
        unsafe fn widen(bits: __m128i) -> __m256;
    }

    impl Widen for F16 {
        #[inline(always)]
        unsafe fn widen(bits: __m128i) -> __m256 {
            _mm256_cvtph_ps(bits)
        }
    }

    impl Widen for BF16 {
        #[inline(always)]
        unsafe fn widen(bits: __m128i) -> __m256 {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn kernel<H: Widen>(w: &[u8], x: &[f32]) -> f32 {
        check(w, x);
        let (wp, xp, n) = (w.as_ptr(), x.as_ptr(), x.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: values i..i + 8 exist in both rows whenever i + 8 <= n.
        unsafe {
            let term = |i: usize, acc: __m256| {
                let wv = H::widen(_mm_loadu_si128(wp.add(2 * i) as *const _));
                _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(i)), acc)
            };
            while i + 32 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    *acc = term(i + 8 * j, *acc);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = term(i, acc[0]);
                i += 8;
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let sum = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps::<1>(sum));
        let sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
        let sum = _mm_cvtss_f32(_mm_add_ss(sum, _mm_movehdup_ps(sum)));
        sum + tail::<H>(&w.as_chunks::<2>().0[i..], &x[i..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize, quantize};

    /// xorshift64*: deterministic values in [-1, 1).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            bits as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    #[test]
    fn every_implementation_matches_the_widened_dot_product() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for ty in [GgmlType::F16, GgmlType::BF16] {
            for n in [1, 15, 16, 17, 63, 64, 65, 576, 1000] {
                // Magnitudes from subnormal to near the largest f16.
                let w: Vec<f32> = (0..n)
                    .map(|i| rng.next() * [1.0, 6e4, 1e-6, 3e-8][i % 4])
                    .collect();
                let x: Vec<f32> = (0..n).map(|_| 3.0 * rng.next()).collect();
                let bytes = quantize(ty, &w).unwrap();
                let wide = dequantize(ty, &bytes, n).unwrap();
                let exact: f64 = wide
                    .iter()
                    .zip(&x)
                    .map(|(&a, &b)| a as f64 * b as f64)
                    .sum();
                let magnitude: f64 = wide
                    .iter()
                    .zip(&x)
                    .map(|(&a, &b)| (a * b).abs() as f64)
                    .sum();
                for (name, dot) in implementations(ty) {
                    let got = dot(&bytes, &x) as f64;
                    assert!(
                        (got - exact).abs() <= 1e-5 * magnitude + 1e-6,
                        "{ty:?} {name}, {n} values: {got} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn f16_widening_is_exact_for_every_value() {
        for bits in 0..=u16::MAX {
            let (got, want) = (F16::to_f32(bits), half::f16::from_bits(bits).to_f32());
            assert!(
                got.to_bits() == want.to_bits() || got.is_nan() && want.is_nan(),
                "{bits:#x}"
            );
        }
    }

    #[test]
    fn every_implementation_handles_an_empty_row() {
        for ty in [GgmlType::F16, GgmlType::BF16] {
            for (name, dot) in implementations(ty) {
                assert_eq!(dot(&[], &[]), 0.0, "{ty:?} {name}");
            }
        }
    }

    #[test]
    fn only_the_16_bit_types_have_a_kernel() {
        assert!(dot_f32(GgmlType::F16).is_some() && dot_f32(GgmlType::BF16).is_some());
        for ty in [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q4K] {
            assert!(dot_f32(ty).is_none(), "{ty:?}");
            assert!(implementations(ty).is_empty(), "{ty:?}");
        }
    }

    #[test]
    #[should_panic(expected = "weight row is not")]
    fn a_row_of_the_wrong_length_is_refused() {
        dot_f32(GgmlType::F16).unwrap()(&[0; 6], &[1.0; 4]);
    }
}
