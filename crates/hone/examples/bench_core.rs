//! Benchmark worker for scripts/bench/core.py: times Hone's forward loss and greedy generation on
//! one model and prints one JSON line. Timing lives here, never in tests.
//!
//!   bench_core forward  MODEL IDS.json ITERS   (IDS.json: [[id, ...], ...], one row per batch row)
//!   bench_core generate MODEL PROMPT NEW_TOKENS

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use hone::generate::{generate, GenerateConfig};

#[global_allocator]
static ALLOCATOR: hone::alloc::MiMalloc = hone::alloc::MiMalloc;

fn main() -> Result<()> {
    hone::alloc::configure();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device = Device::Cpu;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["forward", model, ids, iters] => {
            let loaded = hone::model::load(model, hone::model::Precision::Exact, &device)?;
            let rows: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(ids)?)?;
            let (b, t) = (rows.len(), rows[0].len());
            let ids = Tensor::new(rows, &device)?;
            let iters: usize = iters.parse().context("ITERS")?;
            let mut loss = 0.0;
            let mut best = f64::MAX;
            for _ in 0..iters {
                let start = Instant::now();
                loss = mean_next_token_loss(&loaded.model, &ids)?;
                best = best.min(start.elapsed().as_secs_f64());
            }
            let tps = (b * t) as f64 / best;
            println!(
                "{}",
                serde_json::json!({"loss": loss, "seconds": best, "tokens_per_s": tps})
            );
        }
        ["generate", model, prompt, new_tokens] => {
            let loaded = hone::model::load(model, hone::model::Precision::Exact, &device)?;
            let tok = &loaded.tokenizer;
            let ids = tok.encode(prompt, true)?;
            let cfg = GenerateConfig {
                max_new_tokens: new_tokens.parse()?,
                ..Default::default()
            };
            // Generation must not stop early for a fair timing: strip stop ids by using a long limit
            // and counting the tokens actually produced.
            let start = Instant::now();
            let gen = generate(&loaded.model, tok, &ids, &cfg, |_| {})?;
            let secs = start.elapsed().as_secs_f64();
            println!(
                "{}",
                serde_json::json!({"new_tokens": gen.ids.len(), "seconds": secs,
                    "tokens_per_s": gen.ids.len() as f64 / secs, "ids": gen.ids})
            );
        }
        _ => bail!(
            "usage: bench_core forward MODEL IDS.json ITERS | generate MODEL PROMPT NEW_TOKENS"
        ),
    }
    Ok(())
}

/// Mean cross-entropy of predicting token t+1 from tokens ..=t, over every row.
fn mean_next_token_loss(model: &hone::model::Llama, ids: &Tensor) -> Result<f64> {
    let (sum, n) = model.next_token_nll(ids)?;
    Ok(sum / n as f64)
}
