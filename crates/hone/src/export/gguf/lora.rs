//! A PEFT LoRA adapter as a llama.cpp LoRA adapter GGUF (what `convert_lora_to_gguf.py` writes):
//! `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and per adapted weight
//! `<name>.lora_a` `[r, in]` and `<name>.lora_b` `[out, r]` under llama.cpp tensor names.
//!
//! llama.cpp applies `alpha / r` to every module, with r read from `lora_a`; a module whose PEFT
//! scale differs (rank-stabilised LoRA, `alpha_pattern`, `rank_pattern`) has the difference folded
//! into its `lora_b`. q/k updates get the same row permutation as the q/k weights (for the archs
//! whose weights llama.cpp permutes): it acts on the output rows, which are `lora_b`'s. An update
//! of a q|k|v llama.cpp keeps apart (Baichuan's `W_pack`) is split the same way, by `lora_b`'s rows,
//! each part with the whole `lora_a`.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{written_report, ExportReport};
use crate::adapters::{read_adapter, LoraWeights};
use crate::io::atomic::refuse_existing;
use crate::io::gguf::GgufValue;
use crate::io::gguf_write::GgufWriter;
use crate::model::layout::block_linears;
use crate::model::weights::{gguf_name, hf_name, permute_rows, permuted_heads};
use crate::model::{inspect, ModelConfig};
use crate::quant::GgmlType;

/// Writes the adapter in `adapter_dir`, made for the model `spec`, as a llama.cpp LoRA GGUF.
pub fn export_lora_adapter(
    spec: &str,
    adapter_dir: &Path,
    out: &Path,
    force: bool,
) -> Result<ExportReport> {
    refuse_existing(out, force)?;
    let adapter = read_adapter(adapter_dir)?;
    let (source, cfg, _) = inspect(spec)?;
    let located = |e: anyhow::Error| {
        anyhow::anyhow!(
            "{}: cannot export for {}: {e:#}",
            adapter_dir.display(),
            source.path().display()
        )
    };
    if !adapter.config.is_mergeable() {
        return Err(located(anyhow::anyhow!(
            "it is a {} adapter: llama.cpp's adapter files hold LoRA matrices only, and what it adds to attention \
             cannot be merged into the weights either; use it with hone (--adapter)",
            adapter.config.method()
        )));
    }
    let Some(config) = adapter.config.lora() else {
        return Err(located(anyhow::anyhow!(
            "it is an {} adapter, which llama.cpp cannot load as an adapter; export the model with the adapter \
             merged instead (`hone export --adapter DIR` without --adapter-only)",
            adapter.config.method()
        )));
    };
    if !adapter.biases.is_empty() {
        return Err(located(anyhow::anyhow!(
            "the adapter trains biases (bias: {:?}), which a llama.cpp LoRA adapter cannot carry; export the merged model instead",
            config.bias
        )));
    }
    if config.use_dora {
        return Err(located(anyhow::anyhow!(
            "it is a DoRA adapter (use_dora), whose per-row magnitudes a llama.cpp LoRA adapter cannot carry; \
             export the model with the adapter merged instead (`hone export --adapter DIR` without --adapter-only)"
        )));
    }
    let alpha = config.lora_alpha;
    let mut w = GgufWriter::new();
    w.set(
        "general.architecture",
        GgufValue::String(cfg.architecture.gguf_arch().into()),
    );
    w.set("general.type", GgufValue::String("adapter".into()));
    let name = adapter_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "adapter".into());
    w.set("general.name", GgufValue::String(name));
    w.set("adapter.type", GgufValue::String("lora".into()));
    w.set("adapter.lora.alpha", GgufValue::F32(alpha as f32));
    for (module, lora) in &adapter.modules {
        for (module, lora) in llama_cpp_modules(&cfg, module, lora) {
            add_module(&mut w, &cfg, &module, &lora, alpha).map_err(located)?;
        }
    }
    w.write(out)?;
    written_report(out)
}

fn add_module(
    w: &mut GgufWriter,
    cfg: &ModelConfig,
    module: &str,
    lora: &LoraWeights,
    alpha: f64,
) -> Result<()> {
    if module == "lm_head" && cfg.tie_word_embeddings {
        bail!("{module}: the model ties its output head to the token embeddings, so llama.cpp has no separate head to adapt");
    }
    let base = gguf_name(&format!("{module}.weight"), cfg.architecture)
        .with_context(|| format!("{module}: llama.cpp has no tensor for this module"))?;
    let expected = module_shape(cfg, &base)
        .with_context(|| format!("{module}: llama.cpp LoRA adapters cannot adapt {base}"))?;
    if expected != [lora.out_features, lora.in_features] {
        bail!(
            "{module}: the adapter's update is [{}, {}] but the model's weight is {expected:?}; this adapter was made for a different base model",
            lora.out_features,
            lora.in_features
        );
    }
    let heads = permuted_heads(module, cfg);
    let llama_cpp_scale = alpha / lora.r as f64;
    let fold = (lora.scale / llama_cpp_scale) as f32;
    let mut b: Vec<f32> = lora.b.iter().map(|v| v * fold).collect();
    if let Some(n_heads) = heads {
        b = permute_rows(&b, n_heads, lora.r);
    }
    w.add_tensor(
        format!("{base}.lora_a"),
        &[lora.r, lora.in_features],
        GgmlType::F32,
        &lora.a,
    )?;
    w.add_tensor(
        format!("{base}.lora_b"),
        &[lora.out_features, lora.r],
        GgmlType::F32,
        &b,
    )?;
    Ok(())
}

/// The modules llama.cpp has for one adapted module: itself, or for a q|k|v llama.cpp keeps apart
/// (Baichuan's `W_pack`) q, k and v, each with its rows of `lora_b` and the whole `lora_a`.
fn llama_cpp_modules(
    cfg: &ModelConfig,
    module: &str,
    lora: &LoraWeights,
) -> Vec<(String, LoraWeights)> {
    let names = cfg.architecture.linear_names();
    let layer = module.strip_suffix(names.qkv);
    let (Some(layer), true) = (layer, cfg.architecture.gguf_splits_qkv()) else {
        return vec![(module.to_string(), lora.clone())];
    };
    let (q, kv) = cfg.attention_widths();
    let parts = [(names.q, 0, q), (names.k, q, kv), (names.v, q + kv, kv)];
    parts
        .into_iter()
        .map(|(name, start, rows)| {
            let part = LoraWeights {
                b: lora.b[start * lora.r..(start + rows) * lora.r].to_vec(),
                out_features: rows,
                ..lora.clone()
            };
            (format!("{layer}{name}"), part)
        })
        .collect()
}

/// `[out, in]` of a linear weight, by its llama.cpp name.
fn module_shape(cfg: &ModelConfig, name: &str) -> Option<[usize; 2]> {
    if name == "output.weight" {
        return Some([cfg.vocab_size, cfg.hidden_size]);
    }
    let hf = hf_name(name, cfg.architecture)?;
    let module = hf.strip_suffix(".weight")?;
    if cfg.architecture.gguf_splits_qkv() {
        let (q, kv) = cfg.attention_widths();
        let names = cfg.architecture.linear_names();
        let split = [(names.q, q), (names.k, kv), (names.v, kv)];
        if let Some(&(_, rows)) = split.iter().find(|(n, _)| module.ends_with(n)) {
            return Some([rows, cfg.hidden_size]);
        }
    }
    let linear = block_linears(cfg)
        .into_iter()
        .find(|l| module.ends_with(&format!(".{}", l.name)))?;
    Some([linear.out_features, linear.in_features])
}
