//! GFLOP/s of the training products on the default model's shapes: f32 (`gemm`) against the bf16
//! kernels this CPU runs, forward (`x·Wᵀ`) and input gradient (`dy·W`), 2 threads by default;
//! first the CPU model and one core's peaks of the instructions they run on (f32 FMA, bf16 dot).
//!
//! Usage: cargo run --release --example bench_bf16 [REPEATS]

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use hone::kernels::bf16::{self, Kernel};
use hone::kernels::matrix::Matrix;
use hone::kernels::stored::{StoredMatrix, WeightBytes};
use hone::quant::GgmlType;

fn main() -> Result<()> {
    let repeats: usize = std::env::args().nth(1).map_or(Ok(5), |s| s.parse())?;
    print_peaks();
    let shapes = [
        ("q|k|v", 1024, 960, 576),
        ("gate|up", 1024, 3072, 576),
        ("down", 1024, 576, 1536),
        ("lm head chunk", 256, 49152, 576),
    ];
    println!(
        "{:<14}{:>8}{:>12}{:>12}{:>12}",
        "shape", "kernel", "fwd GF/s", "bwd GF/s", "max |diff|"
    );
    for (name, m, n, k) in shapes {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 4000.0)
            .collect();
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 104729 % 997) as f32 - 498.0) / 500.0)
            .collect();
        let dy: Vec<f32> = (0..m * n)
            .map(|i| ((i * 31 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let bits: Vec<u8> = w
            .iter()
            .flat_map(|&v| bf16::to_bf16(v).to_le_bytes())
            .collect();
        let stored = StoredMatrix::new(GgmlType::BF16, n, k, WeightBytes::Owned(Arc::new(bits)))?;
        let dense = Matrix::F32 { values: w, cols: k };
        let flops = 2.0 * (m * n * k) as f64;
        let time = |f: &mut dyn FnMut()| {
            f();
            (0..repeats)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let (mut y0, mut dx0) = (vec![0f32; m * n], vec![0f32; m * k]);
        let fwd = time(&mut || dense.forward(&x, &mut y0));
        let bwd = time(&mut || dense.backward_input(&dy, &mut dx0, false));
        println!(
            "{name:<14}{:>8}{:>12.0}{:>12.0}",
            "f32",
            flops / fwd / 1e9,
            flops / bwd / 1e9
        );
        for kernel in [Kernel::Amx, Kernel::Avx512]
            .into_iter()
            .filter(|k| k.supported())
        {
            let (mut y, mut dx) = (vec![0f32; m * n], vec![0f32; m * k]);
            let fwd = time(&mut || bf16::forward(kernel, &[&stored], None, &x, m, &mut y));
            let bwd = time(&mut || {
                bf16::backward_input(kernel, &[&stored], None, &dy, m, &mut dx, false)
            });
            let diff = y
                .iter()
                .zip(&y0)
                .chain(dx.iter().zip(&dx0))
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!(
                "{:<14}{:>8}{:>12.0}{:>12.0}{:>12.2e}",
                "",
                format!("{kernel:?}"),
                flops / fwd / 1e9,
                flops / bwd / 1e9,
                diff
            );
        }
    }
    Ok(())
}

/// The CPU model and one core's peak GFLOP/s of AVX-512 f32 FMA and, where present, `vdpbf16ps`:
/// register-only loops over 24 independent accumulators (more than the instructions' latency
/// times their issue rate), so nothing but the execution units limits them.
fn print_peaks() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown", |l| l.trim_start_matches([' ', '\t', ':']));
    println!("cpu: {model}");
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked above).
        let fma = unsafe { peaks::f32_fma() };
        print!("one core's peaks: f32 FMA {fma:.0} GFLOP/s");
        if is_x86_feature_detected!("avx512bf16") {
            // SAFETY: the CPU has AVX-512 BF16 (checked above).
            print!(", bf16 dot {:.0} GFLOP/s", unsafe { peaks::bf16_dot() });
        }
        println!();
    }
}

#[cfg(target_arch = "x86_64")]
mod peaks {
    use std::arch::x86_64::*;
    use std::time::Instant;

    /// Passes over the 24 accumulators: ~0.1 s at these rates.
    const PASSES: usize = 10_000_000;

    /// GFLOP/s of `run(PASSES)`, which does `flops_per_pass` each pass.
    fn gflops(flops_per_pass: usize, run: impl FnOnce(usize)) -> f64 {
        let t = Instant::now();
        run(PASSES);
        (PASSES * flops_per_pass) as f64 / t.elapsed().as_secs_f64() / 1e9
    }

    /// 24 FMAs a pass, each 16 lanes × (multiply + add).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn f32_fma() -> f64 {
        let (a, b) = (_mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-4));
        gflops(24 * 32, |passes| {
            let mut acc = [_mm512_setzero_ps(); 24];
            for _ in 0..passes {
                acc = acc.map(|acc| _mm512_fmadd_ps(acc, a, b));
            }
            std::hint::black_box(acc);
        })
    }

    /// 24 `vdpbf16ps` a pass, each 16 lanes × two products and their two additions.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn bf16_dot() -> f64 {
        let ones = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1.0), _mm512_set1_ps(1.0));
        gflops(24 * 64, |passes| {
            let mut acc = [_mm512_setzero_ps(); 24];
            for _ in 0..passes {
                acc = acc.map(|acc| _mm512_dpbf16_ps(acc, ones, ones));
            }
            std::hint::black_box(acc);
        })
    }
}
