//! Times the RMSNorm, RoPE and SwiGLU training kernels at SmolLM2-135M sizes (4096 tokens, hidden
//! 576, 9 heads of 64, intermediate 1536) and prints one line per kernel. Timing lives here,
//! never in tests.
//!
//!   cargo run --release -p hone --example bench_kernels_norm

use std::time::Instant;

use hone::kernels::glu::{self, Activation};
use hone::kernels::{rmsnorm, rope};

const TOKENS: usize = 4096;
const HIDDEN: usize = 576;
const HEADS: usize = 9;
const HEAD_DIM: usize = 64;
const INTERMEDIATE: usize = 1536;
const ITERS: usize = 20;

/// Deterministic values in [-2, 2) without pulling an RNG into the timing.
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / (1 << 22) as f32 - 2.0
        })
        .collect()
}

/// Best-of-ITERS wall time of `f`, with the bytes it streams, as one report line.
fn time(name: &str, bytes: usize, mut f: impl FnMut()) {
    f();
    let best = (0..ITERS)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    let gbs = bytes as f64 / best / 1e9;
    println!("{name:18} {:8.3} ms  {gbs:6.1} GB/s", best * 1e3);
}

fn main() {
    println!("rayon threads: {}", rayon::current_num_threads());
    let f = std::mem::size_of::<f32>();

    let (x, w, dy) = (
        values(TOKENS * HIDDEN, 1),
        values(HIDDEN, 2),
        values(TOKENS * HIDDEN, 3),
    );
    let (mut y, mut rstd, mut dx) = (vec![0.0; x.len()], vec![0.0; TOKENS], vec![0.0; x.len()]);
    let mut dw = vec![0.0; HIDDEN];
    time("rmsnorm forward", 2 * x.len() * f, || {
        rmsnorm::forward(&x, &w, 1e-5, &mut y, &mut rstd)
    });
    time("rmsnorm backward", 3 * x.len() * f, || {
        rmsnorm::backward(&dy, &x, &w, &rstd, &mut dx, Some(&mut dw))
    });
    time("rmsnorm bwd no dw", 3 * x.len() * f, || {
        rmsnorm::backward(&dy, &x, &w, &rstd, &mut dx, None)
    });

    let positions: Vec<u32> = (0..TOKENS as u32).map(|t| t % 1024).collect();
    let half = HEAD_DIM / 2;
    let angles: Vec<f32> = (0..1024 * half)
        .map(|i| (i / half) as f32 * 10_000f32.powf(-((i % half) as f32) / half as f32))
        .collect();
    let (cos, sin): (Vec<f32>, Vec<f32>) = angles.iter().map(|a| (a.cos(), a.sin())).unzip();
    let mut q = values(TOKENS * HEADS * HEAD_DIM, 4);
    let shape = rope::RopeShape {
        heads: HEADS,
        head_dim: HEAD_DIM,
        rotary_dim: HEAD_DIM,
        interleaved: false,
    };
    time("rope forward", 2 * q.len() * f, || {
        rope::forward(&mut q, &positions, shape, &cos, &sin)
    });
    time("rope backward", 2 * q.len() * f, || {
        rope::backward(&mut q, &positions, shape, &cos, &sin)
    });

    let n = TOKENS * INTERMEDIATE;
    let (gate_up, dout) = (values(2 * n, 5), values(n, 7));
    let (mut out, mut dgate_up) = (vec![0.0; n], vec![0.0; 2 * n]);
    time("swiglu forward", 3 * n * f, || {
        glu::forward(Activation::Silu, &gate_up, INTERMEDIATE, &mut out)
    });
    time("swiglu backward", 5 * n * f, || {
        glu::backward(
            Activation::Silu,
            &dout,
            &gate_up,
            INTERMEDIATE,
            &mut dgate_up,
        )
    });
}
