//! GFLOP/s of the training products on the default model's shapes: f32 (`gemm`) against the bf16
//! kernels this CPU runs, forward (`x·Wᵀ`) and input gradient (`dy·W`), 2 threads by default.
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
