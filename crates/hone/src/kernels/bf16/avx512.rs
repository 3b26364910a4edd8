//! The AVX-512 BF16 micro-kernel: an 8×48 f32 output tile in 24 registers, each step broadcasting
//! one pair of A's values per row and multiplying it into three panels of B with `vdpbf16ps`.

/// Output rows of a tile.
pub(super) const TILE_ROWS: usize = 8;
/// Panels of 16 columns in a tile.
pub(super) const TILE_PANELS: usize = 3;

#[cfg(target_arch = "x86_64")]
pub(super) use x86::*;

#[cfg(not(target_arch = "x86_64"))]
mod other {
    pub(in super::super) fn supported() -> bool {
        false
    }

    pub(in super::super) fn slow_on_this_cpu() -> bool {
        true
    }

    pub(in super::super) unsafe fn tile(_: crate::kernels::bf16::Step) {
        unreachable!("AVX-512 exists only on x86-64")
    }
}
#[cfg(not(target_arch = "x86_64"))]
pub(super) use other::*;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{TILE_PANELS, TILE_ROWS};
    use crate::kernels::bf16::{Step, PANEL};

    pub(in super::super) fn supported() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }

    /// Intel's cores with AVX-512 BF16 (Cooper Lake, Sapphire Rapids and later) issue
    /// `vdpbf16ps` at half their f32 FMA rate (measured on a Sapphire Rapids: 70 against 144
    /// GFLOP/s a core), so bf16 products there would be slower than f32 without AMX.
    pub(in super::super) fn slow_on_this_cpu() -> bool {
        // `unsafe` for the Rust versions before CPUID became safe (the MSRV, 1.89, is one); CPUID
        // exists on every x86-64 CPU.
        #[allow(unused_unsafe)]
        let leaf0 = unsafe { __cpuid(0) };
        let vendor = [leaf0.ebx, leaf0.edx, leaf0.ecx].map(u32::to_le_bytes);
        vendor.concat() == b"GenuineIntel"
    }

    /// One [`Step`] on an 8×48 tile.
    ///
    /// # Safety
    /// The step's A holds 8 rows and its B three panels, `depth` pairs deep; `step.c` is an 8×48
    /// tile.
    pub(in super::super) unsafe fn tile(step: Step) {
        assert!(supported(), "the CPU lacks AVX-512 BF16");
        // SAFETY: the CPU has the features (asserted above); the caller vouches for the step.
        unsafe { kernel(step) }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn kernel(step: Step) {
        let mut acc = [[_mm512_setzero_ps(); TILE_PANELS]; TILE_ROWS];
        if step.accumulate {
            for (i, row) in acc.iter_mut().enumerate() {
                for (q, acc) in row.iter_mut().enumerate() {
                    // SAFETY: inside the tile.
                    *acc = unsafe { _mm512_loadu_ps(step.c.add(i * step.c_stride + q * PANEL)) };
                }
            }
        }
        for p in 0..step.depth {
            // SAFETY: pair `p` of each panel and of each of the 8 rows lies inside the step's
            // operands.
            unsafe {
                let bv: [__m512bh; TILE_PANELS] = std::array::from_fn(|q| {
                    bits(_mm512_loadu_si512(
                        step.b.add(q * step.b_stride + p * PANEL).cast(),
                    ))
                });
                for (i, row) in acc.iter_mut().enumerate() {
                    let av = bits(_mm512_set1_epi32(*step.a.add(i * step.a_stride + p) as i32));
                    for (acc, &bv) in row.iter_mut().zip(&bv) {
                        *acc = _mm512_dpbf16_ps(*acc, av, bv);
                    }
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (q, acc) in row.iter().enumerate() {
                // SAFETY: inside the tile.
                unsafe { _mm512_storeu_ps(step.c.add(i * step.c_stride + q * PANEL), *acc) };
            }
        }
    }

    /// 32 bf16 values from their bits.
    #[inline(always)]
    fn bits(v: __m512i) -> __m512bh {
        // SAFETY: both are 64 bytes of plain data.
        unsafe { std::mem::transmute(v) }
    }
}
