//! Dot products of weight rows in ggml's 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
//! with activations quantized to [`Q8Block`]s: the inner loop of a decoding step on a quantized
//! model, which streams every weight once per token.
//!
//! Hand-written because no crate computes these on ggml's block layouts with run-time dispatch
//! (candle's quantized kernels pick their SIMD at compile time, so a baseline x86-64 build runs
//! none). Per block, the integer dot product of the quants is exact in i32, then scaled in f32:
//! `d_w·d_x·(dot − offset·Σ qs_x)` for Q4_0 and Q5_0 (offsets 8 and 16), `d_w·d_x·dot +
//! m_w·d_x·Σ qs_x` for Q4_1 and Q5_1, `d_w·d_x·dot` for Q8_0. Three builds, chosen once per matrix
//! product from what the CPU has: AVX-512 with VNNI (`avx512`), AVX2 with FMA and F16C (`avx2`),
//! and portable Rust here for everything else.

use super::Q8Block;
use crate::quant::GgmlType;

/// One function per block type, from a generic kernel: `pick!(ty, kernel)` is
/// `Some(kernel::<Q4_0> as DotQ8)` etc., None for the other types (`pick!(ty, kernel as T)` for
/// a signature other than [`DotQ8`]).
macro_rules! pick {
    ($ty:expr, $kernel:ident) => {
        pick!($ty, $kernel as DotQ8)
    };
    ($ty:expr, $kernel:ident as $signature:ty) => {
        match $ty {
            GgmlType::Q4_0 => Some($kernel::<Q4_0> as $signature),
            GgmlType::Q4_1 => Some($kernel::<Q4_1> as $signature),
            GgmlType::Q5_0 => Some($kernel::<Q5_0> as $signature),
            GgmlType::Q5_1 => Some($kernel::<Q5_1> as $signature),
            GgmlType::Q8_0 => Some($kernel::<Q8_0> as $signature),
            _ => None,
        }
    };
}
// After the macro, which they use.
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_quads;
#[cfg(target_arch = "x86_64")]
mod avx512_rows;
mod quads;
mod rows;

pub use quads::Q8Quads;
pub use rows::{dot_q8_rows, DotQ8Rows, Q8Rows};

/// Σ_i w_i·x_i over one Q4_0 or Q4_1 weight row, four blocks a register ([`Q8Quads`]).
pub type DotQ8Quads = fn(w: &[u8], x: &Q8Quads) -> f32;

/// The four-blocks-a-register kernel this CPU runs for `ty`, if any (Q4_0 and Q4_1 where the
/// CPU has AVX-512 VNNI and VBMI); elsewhere the general kernel ([`dot_q8`]) takes those rows.
pub fn dot_q8_quads(ty: GgmlType) -> Option<DotQ8Quads> {
    #[cfg(target_arch = "x86_64")]
    return avx512_quads::dot_q8_quads(ty);
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ty;
        None
    }
}

/// Σ_i w_i·x_i over one weight row: `w` is the row's bytes, `x.len()` ggml blocks of the type.
pub type DotQ8 = fn(w: &[u8], x: &[Q8Block]) -> f32;

/// The fastest implementation this CPU runs for weight type `ty` (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0);
/// None for any other type.
pub fn dot_q8(ty: GgmlType) -> Option<DotQ8> {
    implementations(ty).first().map(|&(_, dot)| dot)
}

/// Every implementation this CPU runs for `ty`, by name, fastest first.
fn implementations(ty: GgmlType) -> Vec<(&'static str, DotQ8)> {
    let mut out = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        out.extend(avx512::dot_q8(ty).map(|dot| ("avx512", dot)));
        out.extend(avx2::dot_q8(ty).map(|dot| ("avx2", dot)));
    }
    out.extend(pick!(ty, dot_portable).map(|dot| ("portable", dot)));
    out
}

/// What the kernels need to know of a block type. Every layout is an f16 scale `d`, for the `_1`
/// types an f16 minimum `m`, for the 5-bit types a little-endian u32 of fifth bits `qh` (bit j for
/// element j), then the quants: 16 bytes of nibbles (element j low, j + 16 high) or 32 i8.
trait Block {
    const BYTES: usize;
    /// Subtracted from every quant (Q4_0: 8, Q5_0: 16); 0 for the types with a minimum or signed
    /// quants.
    const OFFSET: i32;
    const HAS_MIN: bool;
    const FIFTH_BIT: bool;
    /// Q8_0: the quants are 32 signed bytes rather than nibbles.
    const BYTE_QUANTS: bool = false;
    /// Where the quants start.
    const QS: usize = 2 + 2 * Self::HAS_MIN as usize + 4 * Self::FIFTH_BIT as usize;
}

struct Q4_0;
struct Q4_1;
struct Q5_0;
struct Q5_1;
struct Q8_0;

impl Block for Q4_0 {
    const BYTES: usize = 18;
    const OFFSET: i32 = 8;
    const HAS_MIN: bool = false;
    const FIFTH_BIT: bool = false;
}
impl Block for Q4_1 {
    const BYTES: usize = 20;
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    const FIFTH_BIT: bool = false;
}
impl Block for Q5_0 {
    const BYTES: usize = 22;
    const OFFSET: i32 = 16;
    const HAS_MIN: bool = false;
    const FIFTH_BIT: bool = true;
}
impl Block for Q5_1 {
    const BYTES: usize = 24;
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    const FIFTH_BIT: bool = true;
}
impl Block for Q8_0 {
    const BYTES: usize = 34;
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = false;
    const FIFTH_BIT: bool = false;
    const BYTE_QUANTS: bool = true;
}

/// The row's blocks, after checking that `w` holds exactly one per block of `x` (which the SIMD
/// builds rely on to read without bounds checks).
fn blocks<B: Block>(w: &[u8], x: &[Q8Block]) -> usize {
    assert_eq!(
        w.len(),
        x.len() * B::BYTES,
        "weight row is not {} blocks",
        x.len()
    );
    x.len()
}

/// The f16 stored little-endian at `b[i..i + 2]`, widened to f32.
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Plain loops, which the compiler vectorizes on any target.
fn dot_portable<B: Block>(w: &[u8], x: &[Q8Block]) -> f32 {
    blocks::<B>(w, x);
    let mut acc = 0f32;
    for (b, x) in w.chunks_exact(B::BYTES).zip(x) {
        let dot = quants::<B>(b)
            .iter()
            .zip(&x.qs)
            .map(|(&w, &x)| w as i32 * x as i32)
            .sum::<i32>();
        let d = f16_at(b, 0) * x.d;
        acc += if B::HAS_MIN {
            d * dot as f32 + f16_at(b, 2) * x.d * x.sum as f32
        } else {
            d * (dot - B::OFFSET * x.sum) as f32
        };
    }
    acc
}

/// The 32 quants of block `b` as stored (without the type's offset): 0..=31, or Q8_0's signed
/// bytes, which fit an i8 either way.
fn quants<B: Block>(b: &[u8]) -> [i8; 32] {
    let mut q = [0i8; 32];
    if B::BYTE_QUANTS {
        for (q, &v) in q.iter_mut().zip(&b[B::QS..]) {
            *q = v as i8;
        }
        return q;
    }
    let (low, high) = q.split_at_mut(16);
    for ((lo, hi), &v) in low.iter_mut().zip(high).zip(&b[B::QS..B::QS + 16]) {
        *lo = (v & 0xf) as i8;
        *hi = (v >> 4) as i8;
    }
    if B::FIFTH_BIT {
        let qh = &b[B::QS - 4..B::QS];
        for (j, q) in q.iter_mut().enumerate() {
            // A mask test rather than a shift by j, which vectorizes on more targets.
            *q |= ((qh[j / 8] & 1 << (j % 8) != 0) as i8) << 4;
        }
    }
    q
}

#[cfg(test)]
mod tests {
    use super::super::{dequantize_q8, quantize_q8};
    use super::*;
    use crate::quant::{dequantize, quantize};

    const TYPES: [GgmlType; 5] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
    ];

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

    /// Weights with a spread of block magnitudes, some blocks of extreme values (a huge outlier,
    /// all equal, all zero, a tiny scale) among the random ones.
    fn weights(rng: &mut Rng, n: usize) -> Vec<f32> {
        let mut w: Vec<f32> = (0..n).map(|_| rng.next()).collect();
        for (b, block) in w.chunks_exact_mut(32).enumerate() {
            match b % 7 {
                1 => block[b % 32] = 6.0e4,
                2 => block.fill(-3.0),
                3 => block.fill(0.0),
                4 => block.iter_mut().for_each(|v| *v *= 1e-6),
                5 => block.iter_mut().for_each(|v| *v = v.abs() + 100.0),
                _ => {}
            }
        }
        w
    }

    /// Activations with an all-zero block and blocks of both signs' extremes.
    fn activations(rng: &mut Rng, n: usize) -> Vec<Q8Block> {
        let mut x: Vec<f32> = (0..n).map(|_| 5.0 * rng.next()).collect();
        for (b, block) in x.chunks_exact_mut(32).enumerate() {
            match b % 5 {
                1 => block.fill(0.0),
                3 => block.iter_mut().for_each(|v| *v = -v.abs() - 1e3),
                _ => {}
            }
        }
        let mut q = vec![Q8Block::default(); n / 32];
        quantize_q8(&x, &mut q);
        q
    }

    /// The dot product of the dequantized values in f64, and Σ |w_j·x_j| (the scale of the
    /// rounding errors of any summation order).
    fn reference(ty: GgmlType, w: &[u8], x: &[Q8Block]) -> (f64, f64) {
        let xf = dequantize_q8(x);
        let wf = dequantize(ty, w, xf.len()).unwrap();
        let products = || wf.iter().zip(&xf).map(|(&a, &b)| a as f64 * b as f64);
        (products().sum(), products().map(f64::abs).sum())
    }

    #[test]
    fn every_implementation_matches_the_dequantized_dot_product() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for ty in TYPES {
            // Partial groups of 8 blocks before and after whole ones, and rows of fewer.
            for blocks in [1, 3, 8, 9, 15, 18, 48, 137] {
                let n = 32 * blocks;
                let mut w = quantize(ty, &weights(&mut rng, n)).unwrap();
                if ty == GgmlType::Q8_0 {
                    // -128: valid in the format, though ggml's quantizer never writes it.
                    for b in w.chunks_exact_mut(34).step_by(2) {
                        b[2 + b[2] as usize % 32] = 0x80;
                    }
                }
                let x = activations(&mut rng, n);
                let (exact, magnitude) = reference(ty, &w, &x);
                for (name, dot) in implementations(ty) {
                    let got = dot(&w, &x) as f64;
                    assert!(
                        (got - exact).abs() <= 1e-5 * magnitude + 1e-6,
                        "{ty:?} {name}, {blocks} blocks: {got} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_four_block_kernel_matches_the_dequantized_dot_product() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1] {
            let Some(dot) = dot_q8_quads(ty) else {
                continue;
            };
            // Every tail of a group of 8, within and past a first quad, and whole groups.
            for blocks in [0, 1, 3, 4, 5, 7, 8, 9, 12, 15, 18, 48, 137] {
                let n = 32 * blocks;
                let w = quantize(ty, &weights(&mut rng, n)).unwrap();
                let x = activations(&mut rng, n);
                let (exact, magnitude) = reference(ty, &w, &x);
                let got = dot(&w, &Q8Quads::new(&x)) as f64;
                assert!(
                    (got - exact).abs() <= 1e-5 * magnitude + 1e-6,
                    "{ty:?}, {blocks} blocks: {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn every_implementation_handles_an_empty_row() {
        for ty in TYPES {
            for (name, dot) in implementations(ty) {
                assert_eq!(dot(&[], &[]), 0.0, "{ty:?} {name}");
            }
        }
    }

    #[test]
    fn only_the_32_element_types_have_a_kernel() {
        for ty in TYPES {
            assert!(dot_q8(ty).is_some(), "{ty:?}");
        }
        for ty in [GgmlType::Q4K, GgmlType::Q8_1, GgmlType::F16, GgmlType::F32] {
            assert!(dot_q8(ty).is_none(), "{ty:?}");
            assert!(implementations(ty).is_empty(), "{ty:?}");
        }
    }

    #[test]
    #[should_panic(expected = "weight row is not")]
    fn a_row_of_the_wrong_length_is_refused() {
        let x = vec![Q8Block::default(); 2];
        dot_q8(GgmlType::Q4_0).unwrap()(&[0; 35], &x);
    }
}
