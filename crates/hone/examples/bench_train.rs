//! Benchmark worker for scripts/bench/train.py: times training steps (forward, backward, clipping,
//! AdamW) of Hone's engine on one model and prints one JSON line. Timing lives here, never in tests.
//!
//!   bench_train lora_qv|lora_all|full MODEL IDS.json STEPS [f32|stored|bf16]
//!
//! lora_qv: r=8, alpha=32, dropout 0.1 on q_proj,v_proj; lora_all: r=16, alpha=32, dropout 0.1 on
//! every linear; full: every tensor trains. Labels are the ids (every position has a target).
//! `f32` (the default) expands every weight to f32; `stored` keeps frozen matrices in the file's
//! type, as `hone train` does (QLoRA on a quantized GGUF); `bf16` is mixed precision
//! (`bf16: true`): products on bf16 copies of the weights, everything updated in f32.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use hone::adapters::{AdapterConfig, TargetModules};
use hone::data::Batch;
use hone::io::source;
use hone::model::{load_stored_weights, weights};
use hone::train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use hone::train::{LoraSettings, TrainModel, TrainableSpec};

#[global_allocator]
static ALLOCATOR: hone::alloc::MiMalloc = hone::alloc::MiMalloc;

fn lora(r: usize, targets: TargetModules) -> Result<LoraSettings> {
    let mut config = AdapterConfig::new(r, 32.0, targets);
    config.lora_dropout = 0.1;
    LoraSettings::new(config, 0)
}

fn main() -> Result<()> {
    hone::alloc::configure();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (kind, model, ids, steps, storage) = match args.as_slice() {
        [k, m, i, s] => (k, m, i, s, "f32"),
        [k, m, i, s, storage] => (k, m, i, s, storage.as_str()),
        _ => {
            bail!("usage: bench_train lora_qv|lora_all|full MODEL IDS.json STEPS [f32|stored|bf16]")
        }
    };
    let settings = match kind.as_str() {
        "lora_qv" => Some(lora(
            8,
            TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
        )?),
        "lora_all" => Some(lora(16, TargetModules::Regex("all-linear".into()))?),
        "full" => None,
        other => bail!("unknown configuration {other}"),
    };
    let full = settings.is_none();
    let base = move |_: &str| full;
    let spec = TrainableSpec {
        base: &base,
        lora: settings.as_ref(),
        ia3: None,
    };
    let mut model = match storage {
        "f32" | "bf16" => {
            let (cfg, w) = weights::load(&source::resolve(model)?, &Device::Cpu)?;
            TrainModel::new(cfg, w, &spec, None)?
        }
        "stored" => {
            let base = load_stored_weights(model, &Device::Cpu)?;
            TrainModel::from_stored(base.config, base.weights, &spec, None)?
        }
        other => bail!("unknown weight storage {other} (f32, stored or bf16)"),
    };
    let bf16 = storage == "bf16";
    if bf16 {
        model.use_bf16(false, false);
    }
    let rows: Vec<Vec<u32>> = serde_json::from_str(&std::fs::read_to_string(ids)?)?;
    let (b, t) = (rows.len(), rows[0].len());
    let input_ids: Vec<u32> = rows.concat();
    let batch = Batch {
        batch: b,
        seq: t,
        labels: input_ids.iter().map(|&i| i64::from(i)).collect(),
        position_ids: (0..b).flat_map(|_| 0..t as u32).collect(),
        input_ids,
        segment_ids: None,
    };
    let mut opt = AdamW::new();
    let shapes = model.trainable_shapes();
    let shapes: Vec<(&str, usize)> = shapes.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let config = AdamWConfig {
        lr: 1e-4,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.0,
    };
    opt.add_group(config, &shapes)?;
    let steps: usize = steps.parse().context("STEPS")?;
    let scale = 1.0 / (b * (t - 1)) as f32;
    let (mut losses, mut times) = (Vec::new(), Vec::new());
    // One untimed step first: it pays for first-touch allocations.
    for step in 0..=steps {
        let start = Instant::now();
        model.zero_grad();
        let (sum, n) = model.forward_backward(&batch, scale, step as u64)?;
        clip_grad_norm(&mut model.grads_mut(), 1.0);
        opt.step(&mut model.params_mut(), 1.0)?;
        if bf16 {
            model.refresh_bf16();
        }
        if step > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
        losses.push(sum / n as f64);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let (trainable, total) = model.parameter_counts();
    println!(
        "{}",
        serde_json::json!({"losses": losses, "seconds_per_step": median,
            "tokens_per_s": (b * t) as f64 / median, "trainable": trainable, "total": total})
    );
    Ok(())
}
