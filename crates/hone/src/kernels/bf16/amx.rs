//! The AMX micro-kernel: a 32×32 f32 output tile as four 16×16 AMX tiles, each step multiplying two
//! 16-row tiles of A (32 bf16 values deep) by two 16-pair tiles of B with `tdpbf16ps`.
//!
//! Written in inline assembly because Rust's AMX intrinsics are not stable. The tile registers are
//! invisible to the compiler, so the kernel keeps them inside one `asm!` block, apart from the tile
//! configuration a task loads once ([`TileConfig`]). Linux hands out AMX state only to a process
//! that asks for it (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), which [`supported`] does once.

/// Output rows of a tile: two AMX tiles of 16.
pub(super) const TILE_ROWS: usize = 32;
/// Panels of 16 columns in a tile: two AMX tiles.
pub(super) const TILE_PANELS: usize = 2;

#[cfg(target_arch = "x86_64")]
pub(super) use x86::*;

#[cfg(not(target_arch = "x86_64"))]
mod other {
    pub(in super::super) fn supported() -> bool {
        false
    }

    pub(in super::super) struct TileConfig;

    impl TileConfig {
        pub(in super::super) fn load() -> Self {
            unreachable!("AMX exists only on x86-64")
        }
    }

    pub(in super::super) unsafe fn tile(_: crate::kernels::bf16::Step) {
        unreachable!("AMX exists only on x86-64")
    }
}
#[cfg(not(target_arch = "x86_64"))]
pub(super) use other::*;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::__cpuid_count;
    use std::sync::OnceLock;

    use crate::kernels::bf16::{Step, PANEL};

    /// Whether the CPU has AMX tiles with bf16 and the OS lets this process use them.
    pub(in super::super) fn supported() -> bool {
        static GRANTED: OnceLock<bool> = OnceLock::new();
        *GRANTED.get_or_init(|| cpu_has_amx_bf16() && request_permission())
    }

    fn cpu_has_amx_bf16() -> bool {
        // `unsafe` for the Rust versions before CPUID became safe (the MSRV, 1.89, is one); CPUID
        // exists on every x86-64 CPU.
        #[allow(unused_unsafe)]
        let leaf7 = unsafe { __cpuid_count(7, 0) };
        let (amx_bf16, amx_tile) = (leaf7.edx >> 22 & 1 == 1, leaf7.edx >> 24 & 1 == 1);
        amx_bf16 && amx_tile
    }

    /// Asks Linux for the AMX tile-data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
    /// XFEATURE_XTILEDATA)`); false on other systems or when refused.
    fn request_permission() -> bool {
        #[cfg(target_os = "linux")]
        {
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: a system call with integer arguments only; it changes no memory of ours.
            unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                ) == 0
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// Palette 1 with all eight tiles 16 rows of 64 bytes, while alive on this thread (dropping it
    /// releases the tiles).
    pub(in super::super) struct TileConfig;

    #[repr(C, align(64))]
    struct Palette([u8; 64]);

    impl TileConfig {
        pub(in super::super) fn load() -> Self {
            assert!(supported(), "AMX tiles are not available");
            let mut palette = [0u8; 64];
            palette[0] = 1;
            for tile in 0..8 {
                palette[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&64u16.to_le_bytes());
                palette[48 + tile] = 16;
            }
            let palette = Palette(palette);
            // SAFETY: the CPU has AMX and the OS granted its state (asserted above); the palette
            // is a valid 64-byte configuration.
            unsafe { asm!("ldtilecfg [{}]", in(reg) palette.0.as_ptr(), options(nostack)) };
            TileConfig
        }
    }

    impl Drop for TileConfig {
        fn drop(&mut self) {
            // SAFETY: tiles were configured by `load` on this thread.
            unsafe { asm!("tilerelease", options(nostack, nomem)) };
        }
    }

    /// One [`Step`] on a 32×32 tile (two by two AMX tiles), 32 values deep per pass.
    ///
    /// # Safety
    /// A [`TileConfig`] is alive on this thread; `step.depth` is a multiple of 16; the step's A
    /// holds 32 rows and its B two panels, `depth` pairs deep; `step.c` is a 32×32 tile.
    pub(in super::super) unsafe fn tile(step: Step) {
        debug_assert!(step.depth > 0 && step.depth.is_multiple_of(16));
        let (a, b, c) = (step.a, step.b, step.c);
        // SAFETY: the loads stay inside A's 32 rows and the two panels, `depth` pairs deep, and
        // the stores inside the tile, as the caller guarantees.
        unsafe {
            let c01 = c.add(PANEL);
            let c10 = c.add(16 * step.c_stride);
            let c11 = c.add(16 * step.c_stride + PANEL);
            if step.accumulate {
                asm!(
                    "tileloadd tmm0, [{c00} + {sc}*1]",
                    "tileloadd tmm1, [{c01} + {sc}*1]",
                    "tileloadd tmm2, [{c10} + {sc}*1]",
                    "tileloadd tmm3, [{c11} + {sc}*1]",
                    c00 = in(reg) c, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
                    sc = in(reg) step.c_stride * 4,
                    options(nostack, readonly),
                );
            } else {
                asm!(
                    "tilezero tmm0",
                    "tilezero tmm1",
                    "tilezero tmm2",
                    "tilezero tmm3",
                    options(nostack, nomem)
                );
            }
            asm!(
                "2:",
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "add {a0}, 64",
                "add {a1}, 64",
                "add {b0}, 1024",
                "add {b1}, 1024",
                "dec {steps}",
                "jnz 2b",
                "tilestored [{c00} + {sc}*1], tmm0",
                "tilestored [{c01} + {sc}*1], tmm1",
                "tilestored [{c10} + {sc}*1], tmm2",
                "tilestored [{c11} + {sc}*1], tmm3",
                a0 = inout(reg) a => _,
                a1 = inout(reg) a.add(16 * step.a_stride) => _,
                b0 = inout(reg) b => _,
                b1 = inout(reg) b.add(step.b_stride) => _,
                steps = inout(reg) step.depth / 16 => _,
                sa = in(reg) step.a_stride * 4,
                sb = in(reg) PANEL * 4,
                sc = in(reg) step.c_stride * 4,
                c00 = in(reg) c,
                c01 = in(reg) c01,
                c10 = in(reg) c10,
                c11 = in(reg) c11,
                options(nostack),
            );
        }
    }
}
