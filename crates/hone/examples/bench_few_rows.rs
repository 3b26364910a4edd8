//! Times the few-row products of a decoding step on quantized weights: the matrices of a
//! SmolLM2-135M-shaped model (30 layers: q|k|v, o, gate|up, down) in one weight type, multiplied
//! by 1 to 16 activation rows, as a batch of sequences decodes. Prints per row count the time of
//! one step's products, the rows per second and the weight bytes streamed per second. Timing lives
//! here, never in tests.
//!
//!   cargo run --release -p hone --example bench_few_rows [TYPE [ROWS...]]
//!   (TYPE: Q4_1 by default; ROWS: 1 2 4 8 16 by default)

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use hone::kernels::{pool, stored};
use hone::quant::{quantize, GgmlType};

const LAYERS: usize = 30;
const HIDDEN: usize = 576;
const KV: usize = 192;
const INTERMEDIATE: usize = 1536;
const ITERS: usize = 7;

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1 << 23) as f32 - 1.0
        })
        .collect()
}

fn matrix(ty: GgmlType, rows: usize, cols: usize, seed: u32) -> Result<stored::StoredMatrix> {
    let bytes = quantize(ty, &values(rows * cols, seed))?;
    stored::StoredMatrix::new(ty, rows, cols, stored::WeightBytes::Owned(Arc::new(bytes)))
}

fn main() -> Result<()> {
    let name = std::env::args().nth(1).unwrap_or_else(|| "Q4_1".into());
    let ty = (0..=30)
        .filter_map(|id| GgmlType::from_id(id).ok())
        .find(|t| t.name() == name)
        .with_context(|| format!("unknown type {name}"))?;
    // Per layer: [q, k, v] and [gate, up] share an input, as the model runs them.
    let shapes = [
        vec![(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN)],
        vec![(HIDDEN, HIDDEN)],
        vec![(INTERMEDIATE, HIDDEN), (INTERMEDIATE, HIDDEN)],
        vec![(HIDDEN, INTERMEDIATE)],
    ];
    let mut layers = Vec::new();
    let mut bytes = 0;
    for layer in 0..LAYERS {
        for (p, parts) in shapes.iter().enumerate() {
            let stack = parts
                .iter()
                .enumerate()
                .map(|(i, &(r, c))| matrix(ty, r, c, (100 * layer + 10 * p + i) as u32))
                .collect::<Result<Vec<_>>>()?;
            bytes += stack.iter().map(|m| m.n_bytes()).sum::<usize>();
            layers.push(stack);
        }
    }
    println!(
        "{name}: {:.1} MB of weights per step, {} threads",
        bytes as f64 / 1e6,
        rayon::current_num_threads()
    );
    let counts: Vec<usize> = std::env::args()
        .skip(2)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let counts = if counts.is_empty() {
        vec![1, 2, 4, 8, 16]
    } else {
        counts
    };
    for m in counts {
        let inputs: Vec<Vec<f32>> = layers
            .iter()
            .map(|s| values(m * s[0].cols(), m as u32))
            .collect();
        let step = || {
            for (stack, x) in layers.iter().zip(&inputs) {
                let parts: Vec<&stored::StoredMatrix> = stack.iter().collect();
                std::hint::black_box(stored::matmul(&parts, x, m));
            }
        };
        let best = pool::run_in_pool(|| {
            step();
            (0..ITERS)
                .map(|_| {
                    let t = Instant::now();
                    step();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        });
        println!(
            "rows {m:2}: {:7.2} ms/step  {:7.0} rows/s  {:5.1} GB/s",
            best * 1e3,
            m as f64 / best,
            bytes as f64 / best / 1e9
        );
    }
    Ok(())
}
