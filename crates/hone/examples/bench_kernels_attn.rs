//! Times the attention kernel's forward and backward on one SmolLM2-like shape and prints
//! GFLOP/s. Timing lives here, never in tests.
//!
//!   bench_kernels_attn [THREADS] [SEQ]   (defaults: 1 thread, seq 256; b 4, 9 heads, 3 kv, hd 64)
//!
//! FLOPs count only the causal half: per (batch, head) and visible (query, key) pair, 2·hd per
//! product, 2 products forward (q·kᵀ, p·v) and 5 backward (q·kᵀ again, dout·vᵀ, pᵀ·dout,
//! ds·k, dsᵀ·q); softmax and masking are not counted.

use std::time::Instant;

use anyhow::{Context, Result};
use hone::kernels::attention::{backward, forward, AttnGrads, AttnInputs, AttnShape};

#[global_allocator]
static ALLOCATOR: hone::alloc::MiMalloc = hone::alloc::MiMalloc;

fn main() -> Result<()> {
    hone::alloc::configure();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads: usize = args
        .first()
        .map_or(Ok(1), |a| a.parse())
        .context("THREADS")?;
    let seq: usize = args.get(1).map_or(Ok(256), |a| a.parse()).context("SEQ")?;
    let s = AttnShape {
        batch: 4,
        seq,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        scale: 0.125,
        window: None,
        softcap: None,
        alibi: false,
    };
    let q_len = s.batch * s.seq * s.heads * s.head_dim;
    let kv_len = q_len / (s.heads / s.kv_heads);
    // Deterministic O(1) inputs; the values do not affect the timing.
    let fill = |n: usize, k: usize| {
        (0..n)
            .map(|i| ((i * k % 1013) as f32 / 1013.0 - 0.5) * 2.0)
            .collect::<Vec<_>>()
    };
    let (q, k, v, dout) = (
        fill(q_len, 7),
        fill(kv_len, 11),
        fill(kv_len, 13),
        fill(q_len, 17),
    );
    let x = AttnInputs {
        q: &q,
        k: &k,
        v: &v,
        segment_ids: None,
    };
    let (mut out, mut lse) = (vec![0.0; q_len], vec![0.0; s.batch * s.heads * s.seq]);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q_len], vec![0.0; kv_len], vec![0.0; kv_len]);

    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()?;
    let (mut best_f, mut best_b) = (f64::MAX, f64::MAX);
    pool.install(|| {
        for _ in 0..10 {
            let start = Instant::now();
            forward(s, x, &mut out, &mut lse);
            best_f = best_f.min(start.elapsed().as_secs_f64());
            let start = Instant::now();
            let grads = AttnGrads {
                dq: &mut dq,
                dk: &mut dk,
                dv: &mut dv,
            };
            backward(s, x, &out, &lse, &dout, grads);
            best_b = best_b.min(start.elapsed().as_secs_f64());
        }
    });
    let pairs = (s.batch * s.heads * s.seq * (s.seq + 1) / 2) as f64;
    let per_product = pairs * 2.0 * s.head_dim as f64 / 1e9;
    let gflops = |products: f64, secs: f64| products * per_product / secs;
    println!("{s:?}, {threads} thread(s), best of 10");
    println!(
        "forward  {:8.3} ms  {:6.1} GFLOP/s",
        best_f * 1e3,
        gflops(2.0, best_f)
    );
    println!(
        "backward {:8.3} ms  {:6.1} GFLOP/s",
        best_b * 1e3,
        gflops(5.0, best_b)
    );
    let total = best_f + best_b;
    println!(
        "total    {:8.3} ms  {:6.1} GFLOP/s",
        total * 1e3,
        gflops(7.0, total)
    );
    Ok(())
}
