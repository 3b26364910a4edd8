//! Dot products of K-quant weight rows (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) with activations quantized
//! to [`Q8KBlock`]s: the inner loop of quantized inference, through which every weight byte passes
//! once per token.
//!
//! Written by hand because the compiler cannot find the scheme that makes them fast: the packed
//! quants are unpacked in registers (nibbles, bit planes) and multiplied as u8 × i8 with integer
//! multiply-adds (AVX2 `maddubs`/`madd`, AVX-512 VNNI `dpbusd`/`dpwssd`), the integer sums are
//! scaled once per sub-block, and the sub-block minimums and offsets are applied through the
//! activations' 16-element sums (`bsums`), one multiply per 16 values. This is llama.cpp's
//! `ggml_vec_dot_q*_K_q8_K`. Results differ from the exact sum only by f32 rounding.
//!
//! Each type has a portable version (`portable`, which also spells out the arithmetic most
//! plainly) and an AVX2 one; Q4_K and Q6_K (what Q4_K_M files hold) and Q5_K also an AVX-512
//! VNNI one. [`dot_q8k`] picks the fastest this CPU runs. On one core of a (shared) Xeon,
//! Q4_K / Q6_K weights stream through at about 2.7 / 3.8 GB/s portable, 17 / 21 with AVX2 and
//! 22 / 26 with AVX-512.

mod portable;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use std::sync::OnceLock;

use super::Q8KBlock;
use crate::quant::GgmlType;

/// Σ_i w_i·x_i over one weight row: `w` is the row's bytes, `x.len()` 256-element super-blocks of
/// the type. Panics if `w` is not exactly `x.len()` blocks.
pub type DotQ8K = fn(w: &[u8], x: &[Q8KBlock]) -> f32;

/// The fastest implementation this CPU runs for weight type `ty` (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K);
/// None for any other type.
pub fn dot_q8k(ty: GgmlType) -> Option<DotQ8K> {
    implementations(ty).last().map(|(_, kernel)| kernel)
}

/// Every implementation of `ty` this CPU runs, named after its instruction set, slowest first (the
/// last is [`dot_q8k`]'s): for comparing them in tests and benchmarks.
pub(super) fn implementations(ty: GgmlType) -> impl Iterator<Item = (&'static str, DotQ8K)> {
    available()
        .iter()
        .filter_map(move |&isa| Some((isa.name(), kernel(ty, isa)?)))
}

/// The instruction sets there are kernels for, slowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Portable,
    /// AVX2 with FMA and F16C (Haswell and later, Zen).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 F/BW/VL with VNNI, and the above (Cascade Lake and later, Zen 4 and later).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Isa {
    fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => "avx512vnni",
        }
    }
}

/// The instruction sets this CPU has, detected once.
fn available() -> &'static [Isa] {
    static AVAILABLE: OnceLock<Vec<Isa>> = OnceLock::new();
    AVAILABLE.get_or_init(|| {
        #[allow(unused_mut)] // nothing to add where only the portable kernels exist
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("fma") && has!("f16c") {
                isas.push(Isa::Avx2);
                if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
                    isas.push(Isa::Avx512Vnni);
                }
            }
        }
        isas
    })
}

/// The kernel for `ty` written for `isa`, if there is one. Only called with instruction sets from
/// [`available`]: the SIMD kernels are safe to call only on CPUs that have them.
fn kernel(ty: GgmlType, isa: Isa) -> Option<DotQ8K> {
    use GgmlType::*;
    let kernel: DotQ8K = match (isa, ty) {
        (Isa::Portable, Q2K) => portable::q2k,
        (Isa::Portable, Q3K) => portable::q3k,
        (Isa::Portable, Q4K) => portable::q4k,
        (Isa::Portable, Q5K) => portable::q5k,
        (Isa::Portable, Q6K) => portable::q6k,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, Q2K) => avx2::q2k,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, Q3K) => avx2::q3k,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, Q4K) => avx2::q4k,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, Q5K) => avx2::q5k,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, Q6K) => avx2::q6k,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni, Q4K) => avx512::q4k,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni, Q5K) => avx512::q5k,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni, Q6K) => avx512::q6k,
        _ => return None,
    };
    Some(kernel)
}

/// `w` as the `x.len()` blocks of `B` bytes it must be.
fn blocks<'w, const B: usize>(w: &'w [u8], x: &[Q8KBlock]) -> &'w [[u8; B]] {
    let (blocks, rest) = w.as_chunks::<B>();
    assert!(
        rest.is_empty() && blocks.len() == x.len(),
        "{} weight bytes are not {} blocks of {B}",
        w.len(),
        x.len()
    );
    blocks
}

/// The f16 stored little-endian at `b[i..i + 2]`, as f32.
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The eight 6-bit scales and eight 6-bit minimums packed in the 12 bytes `p` of a Q4_K / Q5_K
/// super-block, as the bytes of two little-endian words `(scales, mins)`: ggml's
/// `get_scale_min_k4` for all sub-blocks at once. Scales and minimums 0..4 are the low 6 bits of
/// bytes 0..4 and 4..8; 4..8 take their low 4 bits from the nibbles of bytes 8..12 and their top 2
/// from the top bits of bytes 0..4 and 4..8.
fn scales_mins_k4(p: &[u8; 12]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]) as u64;
    let (p0, p1, p2) = (word(0), word(4), word(8));
    const LOW6: u64 = 0x3f3f_3f3f;
    const LOW4: u64 = 0x0f0f_0f0f;
    // Bits 6..8 of each byte moved to 4..6.
    let top2 = |v: u64| (v >> 2) & 0x3030_3030;
    let scales = (p0 & LOW6) | ((p2 & LOW4) | top2(p0)) << 32;
    let mins = (p1 & LOW6) | ((p2 >> 4 & LOW4) | top2(p1)) << 32;
    (scales, mins)
}

/// The sixteen 6-bit Q3_K scales packed in the 12 bytes `p`, as values 0..64 that still carry
/// ggml's offset of 32: low 4 bits in the nibbles of bytes 0..8 (low nibbles first), top 2 bits
/// in bytes 8..12 (scale `i` at bits `2(i / 4)` of byte `8 + i % 4`).
fn q3k_scales(p: &[u8; 12]) -> [u8; 16] {
    let word = |i: usize| u32::from_le_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    let (p0, p1, p2) = (word(0), word(4), word(8));
    const LOW4: u32 = 0x0f0f_0f0f;
    let top2 = |shift: u32| ((p2 >> shift) & 0x0303_0303) << 4;
    let words = [
        (p0 & LOW4) | top2(0),
        (p1 & LOW4) | top2(2),
        (p0 >> 4 & LOW4) | top2(4),
        (p1 >> 4 & LOW4) | top2(6),
    ];
    std::array::from_fn(|i| words[i / 4].to_le_bytes()[i % 4])
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize_q8k, quantize_q8k};
    use super::*;
    use crate::quant::{dequantize, quantize};

    /// xorshift64*: deterministic test data without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Uniform in [-1, 1).
        fn uniform(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

    const TYPES: [GgmlType; 5] = [
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    /// Byte offsets of each type's f16 super-block scales (d, and dmin where there is one).
    fn f16_fields(ty: GgmlType) -> &'static [usize] {
        match ty {
            GgmlType::Q2K => &[80, 82],
            GgmlType::Q3K => &[108],
            GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
            GgmlType::Q6K => &[208],
            _ => unreachable!(),
        }
    }

    /// `n` super-blocks of random bytes (every quant, scale and minimum value occurs), with the
    /// f16 scales set to small finite values.
    fn random_weights(ty: GgmlType, n: usize, rng: &mut Rng) -> Vec<u8> {
        let mut w: Vec<u8> = (0..n * ty.type_size()).map(|_| rng.next() as u8).collect();
        for block in w.chunks_exact_mut(ty.type_size()) {
            for &at in f16_fields(ty) {
                let v = half::f16::from_f32(rng.uniform() * 0.01);
                block[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        w
    }

    /// Activations for `n` super-blocks: random with outliers, block 1 all zero.
    fn activations(n: usize, rng: &mut Rng) -> Vec<Q8KBlock> {
        let mut x: Vec<f32> = (0..256 * n)
            .map(|i| rng.uniform() * if i % 97 == 0 { 20.0 } else { 1.0 })
            .collect();
        if n > 1 {
            x[256..512].fill(0.0);
        }
        let mut q = vec![Q8KBlock::default(); n];
        quantize_q8k(&x, &mut q);
        q
    }

    /// Every implementation of `ty` against the dequantized weights and activations in f64.
    fn check(ty: GgmlType, w: &[u8], x: &[Q8KBlock]) {
        let wf = dequantize(ty, w, 256 * x.len()).unwrap();
        let xf = dequantize_q8k(x);
        let products = wf.iter().zip(&xf).map(|(&a, &b)| a as f64 * b as f64);
        let expected: f64 = products.clone().sum();
        let magnitude: f64 = products.map(f64::abs).sum();
        for (name, dot) in implementations(ty) {
            let got = dot(w, x) as f64;
            assert!(
                (got - expected).abs() <= 1e-5 * magnitude + 1e-6,
                "{} {name}, {} blocks: {got} vs {expected}",
                ty.name(),
                x.len()
            );
        }
    }

    #[test]
    fn every_implementation_matches_the_dequantized_product() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for ty in TYPES {
            for n in [1, 2, 3, 11] {
                let x = activations(n, &mut rng);
                check(ty, &random_weights(ty, n, &mut rng), &x);
                if matches!(ty, GgmlType::Q4K | GgmlType::Q6K) {
                    let f: Vec<f32> = (0..256 * n).map(|_| rng.uniform()).collect();
                    check(ty, &quantize(ty, &f).unwrap(), &x);
                }
            }
        }
    }

    #[test]
    fn a_row_of_the_wrong_length_panics() {
        let x = vec![Q8KBlock::default(); 2];
        for ty in TYPES {
            let w = vec![0u8; 2 * ty.type_size() - 1];
            for (name, dot) in implementations(ty) {
                let result = std::panic::catch_unwind(|| dot(&w, &x));
                assert!(result.is_err(), "{} {name}", ty.name());
            }
        }
    }

    #[test]
    fn the_fastest_kernels_are_chosen() {
        for ty in TYPES {
            let names: Vec<_> = implementations(ty).map(|(name, _)| name).collect();
            assert_eq!(names[0], "portable");
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                let avx2 = has!("avx2") && has!("fma") && has!("f16c");
                let avx512 = avx2
                    && has!("avx512f")
                    && has!("avx512bw")
                    && has!("avx512vl")
                    && has!("avx512vnni");
                let best = match ty {
                    GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K if avx512 => "avx512vnni",
                    _ if avx2 => "avx2",
                    _ => "portable",
                };
                assert_eq!(names.last(), Some(&best), "{}", ty.name());
            }
            assert!(dot_q8k(ty).is_some());
        }
        assert!(dot_q8k(GgmlType::Q4_0).is_none());
        assert!(dot_q8k(GgmlType::Q8K).is_none());
        assert!(dot_q8k(GgmlType::F32).is_none());
    }
}
