//! Native GGUF export: a model, with a LoRA adapter merged in if given, written as llama.cpp's
//! converter writes its family (`llama`, `qwen2`, `qwen3`: that arch's metadata keys and tensor
//! names, q/k rows permuted where llama.cpp's rotary layout needs it, full tokenizer metadata and
//! chat template), quantized as llama.cpp's tools would; plus
//! an Ollama Modelfile, and LoRA adapters as llama.cpp adapter GGUFs. No llama.cpp scripts are run.

mod lora;
mod modelfile;
mod tensor_types;
mod vocab;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

pub use lora::export_lora_adapter;
pub use modelfile::{modelfile_path, ollama_modelfile, write_modelfile, MODELFILE};
pub use tensor_types::{tensor_type, use_more_bits, GgufQuant, TensorPlace};

use crate::io::atomic::refuse_existing;
use crate::io::gguf::{GgufFile, GgufValue};
use crate::io::gguf_write::GgufWriter;
use crate::io::source::ModelSource;
use crate::model::config::{
    gemma_global_every, gemma_query_scalar, smollm3_nope_pattern, Architecture, ModelConfig,
    RopeScaling, SMOLLM3_NOPE_INTERVAL,
};
use crate::model::weights::{
    self, gguf_name, is_norm, layer_modules, permute_rows, permuted_heads,
};
use crate::model::{load_weights, rope, LoadedWeights};
use crate::quant::GgmlType;

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub path: PathBuf,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Each tensor's llama.cpp name, row-major shape and type, in file order.
    pub tensors: Vec<(String, Vec<usize>, GgmlType)>,
}

/// Exports the model `spec` (HF directory, GGUF file or Hub id), with the PEFT adapter in `adapter`
/// merged into it, to the GGUF file `out` as `quant`.
pub fn export_model(
    spec: &str,
    adapter: Option<&Path>,
    out: &Path,
    quant: GgufQuant,
    force: bool,
) -> Result<ExportReport> {
    refuse_existing(out, force)?;
    let parts = load_weights(spec, adapter, &Device::Cpu)?;
    export_loaded(&parts, out, quant, force)
}

/// [`export_model`] of weights already loaded (with any adapter merged).
pub fn export_loaded(
    parts: &LoadedWeights,
    out: &Path,
    quant: GgufQuant,
    force: bool,
) -> Result<ExportReport> {
    refuse_existing(out, force)?;
    let gguf = gguf_writer(parts, quant)
        .with_context(|| format!("{}: cannot export", parts.source.path().display()))?;
    gguf.write(out)?;
    written_report(out)
}

/// Exports as [`export_model`] does from already loaded parts, returning the writer (for callers
/// that write it themselves).
pub fn gguf_writer(parts: &LoadedWeights, quant: GgufQuant) -> Result<GgufWriter> {
    let cfg = &parts.config;
    let mut w = GgufWriter::new();
    model_metadata(&mut w, cfg, &parts.source, quant)?;
    let tokenizer_meta = match &parts.source {
        ModelSource::Gguf(path) => vocab::copied_from(&GgufFile::open(path)?),
        ModelSource::HfDir(_) => vocab::written_from(&parts.tokenizer, cfg.vocab_size)?,
    };
    for (key, value) in tokenizer_meta {
        w.set(key, value);
    }
    add_tensors(&mut w, parts, quant)?;
    Ok(w)
}

/// The report for a file just written, read back from it.
fn written_report(path: &Path) -> Result<ExportReport> {
    let file = GgufFile::open(path)?;
    Ok(ExportReport {
        path: path.to_path_buf(),
        bytes: std::fs::metadata(path)?.len(),
        tensors: file
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape(), t.ggml_type))
            .collect(),
    })
}

fn model_metadata(
    w: &mut GgufWriter,
    cfg: &ModelConfig,
    source: &ModelSource,
    quant: GgufQuant,
) -> Result<()> {
    let u32_of = |v: usize| GgufValue::U32(v as u32);
    let arch = cfg.architecture.gguf_arch();
    if gemma_global_every(cfg.architecture).is_some() {
        refuse_what_gemma_gguf_cannot_hold(cfg)?;
    }
    if arch == "qwen3" && cfg.o_proj_bias {
        bail!(
            "the model has an o_proj bias (attention_bias: true), which llama.cpp's qwen3 \
             architecture cannot load"
        );
    }
    let q_width = cfg.attention_widths().0;
    if matches!(arch, "olmo2" | "chatglm") && q_width != cfg.hidden_size {
        bail!(
            "the model's query width ({} heads × {} head_dim) differs from its hidden size {}, \
             which llama.cpp's {arch} architecture cannot load",
            cfg.num_attention_heads,
            cfg.head_dim,
            cfg.hidden_size
        );
    }
    // llama.cpp's baichuan knows its 7B (rotary) and 13B (ALiBi) by their layer counts alone.
    let baichuan_layers = if cfg.alibi { 40 } else { 32 };
    if cfg.architecture == Architecture::Baichuan && cfg.num_hidden_layers != baichuan_layers {
        let position = if cfg.alibi {
            "ALiBi"
        } else {
            "rotary embeddings"
        };
        bail!(
            "the model has {} layers and {position}; llama.cpp's baichuan architecture runs rotary \
             embeddings for 32 layers (Baichuan 7B) and ALiBi for 40 layers (13B), nothing else",
            cfg.num_hidden_layers,
        );
    }
    if cfg.no_rope_layers != smollm3_nope_pattern(cfg.num_hidden_layers)
        && cfg.architecture == Architecture::SmolLM3
    {
        bail!(
            "the model's layers without RoPE are {:?}; llama.cpp's smollm3 architecture runs \
             every {SMOLLM3_NOPE_INTERVAL}th layer without it and nothing else",
            cfg.no_rope_layers
        );
    }
    w.set("general.architecture", GgufValue::String(arch.into()));
    w.set("general.type", GgufValue::String("model".into()));
    w.set("general.name", GgufValue::String(model_name(source)?));
    w.set("general.file_type", GgufValue::U32(quant.file_type()));
    w.set("general.quantization_version", GgufValue::U32(2));
    let mut set = |key: &str, value| {
        w.set(format!("{arch}.{key}"), value);
    };
    set("vocab_size", u32_of(cfg.vocab_size));
    set("context_length", u32_of(cfg.max_position_embeddings));
    set("embedding_length", u32_of(cfg.hidden_size));
    set("block_count", u32_of(cfg.num_hidden_layers));
    // llama.cpp's qwen takes Qwen's `intermediate_size`, both MLP branches together.
    let ffn_branches = if cfg.architecture == Architecture::QwenV1 {
        2
    } else {
        1
    };
    set(
        "feed_forward_length",
        u32_of(ffn_branches * cfg.intermediate_size),
    );
    set("attention.head_count", u32_of(cfg.num_attention_heads));
    set("attention.head_count_kv", u32_of(cfg.num_key_value_heads));
    set("attention.key_length", u32_of(cfg.head_dim));
    set("attention.value_length", u32_of(cfg.head_dim));
    set("rope.dimension_count", u32_of(cfg.rotary_dim));
    set("rope.freq_base", GgufValue::F32(cfg.rope_theta as f32));
    let eps_key = match cfg.architecture.layer_norm() {
        true => "attention.layer_norm_epsilon",
        false => "attention.layer_norm_rms_epsilon",
    };
    set(eps_key, GgufValue::F32(cfg.rms_norm_eps as f32));
    if let Some(RopeScaling::Linear { factor }) = cfg.rope_scaling {
        set("rope.scaling.type", GgufValue::String("linear".into()));
        set("rope.scaling.factor", GgufValue::F32(factor as f32));
    }
    if let Some(RopeScaling::LongRope {
        original_max_position_embeddings,
        attention_factor,
        ..
    }) = &cfg.rope_scaling
    {
        set(
            "rope.scaling.original_context_length",
            u32_of(*original_max_position_embeddings),
        );
        set(
            "rope.scaling.attn_factor",
            GgufValue::F32(*attention_factor as f32),
        );
    }
    match &cfg.sliding_window {
        Some(window) => set("attention.sliding_window", u32_of(window.size)),
        // Phi-3's converter writes 0 for "no window" (it tells Phi-4-mini from Phi-3 so).
        None if cfg.architecture == Architecture::Phi3 => {
            set("attention.sliding_window", u32_of(0))
        }
        None => {}
    }
    if let Some(local) = cfg.local_rope_theta {
        set("rope.freq_base_swa", GgufValue::F32(local as f32));
    }
    if let Some(cap) = cfg.attn_softcap {
        set("attn_logit_softcapping", GgufValue::F32(cap));
    }
    if let Some(cap) = cfg.final_softcap {
        set("final_logit_softcapping", GgufValue::F32(cap));
    }
    if cfg.architecture == Architecture::Granite {
        let scales = &cfg.scales;
        set("attention.scale", GgufValue::F32(cfg.attention_scale()));
        set("embedding_scale", GgufValue::F32(scales.embedding as f32));
        set("residual_scale", GgufValue::F32(scales.residual as f32));
        set("logit_scale", GgufValue::F32(scales.logits as f32));
    }
    Ok(())
}

/// llama.cpp's gemma2 and gemma3 have no keys for their window pattern, attention scale or (older
/// builds) local rotary base: a model whose values differ from what they assume would compute
/// otherwise there.
fn refuse_what_gemma_gguf_cannot_hold(cfg: &ModelConfig) -> Result<()> {
    let arch = cfg.architecture;
    let (layers, hidden, heads) = (
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
    );
    let every = gemma_global_every(arch).unwrap_or(1);
    let pattern: Vec<usize> = (0..layers).filter(|l| (l + 1) % every != 0).collect();
    let windowed = cfg.sliding_window.as_ref().map(|w| &w.layers);
    if windowed != Some(&pattern) {
        bail!(
            "llama.cpp's {} makes every {every}th layer global and the others sliding-window; \
             this model windows layers {windowed:?}",
            arch.gguf_arch()
        );
    }
    let scalar = gemma_query_scalar(arch, layers, hidden, heads, cfg.head_dim);
    if cfg.attention_scale() != 1.0 / (scalar as f32).sqrt() {
        bail!(
            "llama.cpp's {} assumes query_pre_attn_scalar {scalar} for this shape; this model's \
             attention scale is {}",
            arch.gguf_arch(),
            cfg.attention_scale()
        );
    }
    if arch == Architecture::Gemma3 && cfg.local_rope_theta != Some(10_000.0) {
        bail!(
            "llama.cpp's gemma3 rotates the sliding-window layers with base 10000; this model \
             uses {:?}",
            cfg.local_rope_theta
        );
    }
    Ok(())
}

/// `general.name`: the source GGUF's, else the model directory's or file's name.
fn model_name(source: &ModelSource) -> Result<String> {
    if let ModelSource::Gguf(path) = source {
        if let Some(name) = GgufFile::open(path)?
            .get("general.name")
            .and_then(|v| v.as_str())
        {
            return Ok(name.to_string());
        }
    }
    let path = source.path();
    Ok(path
        .file_stem()
        .unwrap_or(path.as_os_str())
        .to_string_lossy()
        .into_owned())
}

/// Every tensor in llama.cpp's order: embedding, rope factors, blocks, final norm, head.
fn add_tensors(w: &mut GgufWriter, parts: &LoadedWeights, quant: GgufQuant) -> Result<()> {
    let cfg = &parts.config;
    let weights = &llama_cpp_tensors(cfg, &parts.weights)?;
    let has_output = !cfg.tie_word_embeddings;
    let mut names = vec!["model.embed_tokens.weight".to_string()];
    for l in 0..cfg.num_hidden_layers {
        for (_, module) in layer_modules(cfg) {
            for kind in ["weight", "bias"] {
                let name = format!("model.layers.{l}.{module}.{kind}");
                if kind == "weight" || weights.contains_key(&name) {
                    names.push(name);
                }
            }
        }
    }
    names.push("model.norm.weight".into());
    if cfg.architecture.layer_norm() {
        names.push("model.norm.bias".into());
    }
    if has_output {
        names.push("lm_head.weight".into());
    }
    refuse_unwritten(weights.keys(), &names, cfg.tie_word_embeddings)?;
    for (name, factors) in rope_factors(cfg) {
        w.add_tensor(name, &[factors.len()], GgmlType::F32, &factors)?;
    }
    for hf in &names {
        let tensor = weights
            .get(hf)
            .with_context(|| format!("tensor `{hf}` is missing"))?;
        let name = gguf_name(hf, cfg.architecture)
            .with_context(|| format!("tensor `{hf}` has no llama.cpp name"))?;
        let shape = tensor.dims().to_vec();
        let data = llama_cpp_layout(hf, tensor, cfg)?;
        let place = TensorPlace {
            name: &name,
            shape: &shape,
            n_layers: cfg.num_hidden_layers,
            has_output,
        };
        w.add_tensor(name.as_str(), &shape, tensor_type(quant, &place), &data)?;
    }
    Ok(())
}

/// The weights under the modules llama.cpp's arch has: Baichuan's `W_pack` split into q, k and v,
/// and its head normalized (llama.cpp's baichuan multiplies by the rows as stored).
fn llama_cpp_tensors(
    cfg: &ModelConfig,
    weights: &HashMap<String, Tensor>,
) -> Result<HashMap<String, Tensor>> {
    let mut weights = weights.clone();
    if cfg.architecture.gguf_splits_qkv() {
        weights::unpack_qkv(cfg, &mut weights)?;
    }
    if cfg.norm_head {
        if let Some(head) = weights.get_mut("lm_head.weight") {
            *head = weights::normalized_tensor(head)?;
        }
    }
    Ok(weights)
}

/// A weight's values as llama.cpp stores them: q/k projections (and their biases) permuted for
/// the archs whose converter permutes them, Gemma's norm weights with the 1 of `1 + w` added.
fn llama_cpp_layout(hf: &str, tensor: &Tensor, cfg: &ModelConfig) -> Result<Vec<f32>> {
    let mut data = tensor.flatten_all()?.to_vec1::<f32>()?;
    let row_len: usize = tensor.dims()[1..].iter().product();
    if is_norm(hf) && cfg.norm_offset != 0.0 {
        data.iter_mut().for_each(|w| *w += cfg.norm_offset);
    }
    Ok(match permuted_heads(hf, cfg) {
        Some(heads) => permute_rows(&data, heads, row_len),
        None => data,
    })
}

/// Errors on a weight the export would silently drop (a tied head duplicate and rotary buffers aside).
fn refuse_unwritten<'a>(
    present: impl Iterator<Item = &'a String>,
    written: &[String],
    tied: bool,
) -> Result<()> {
    for name in present {
        let skippable = (tied && name == "lm_head.weight") || name.ends_with("rotary_emb.inv_freq");
        if !skippable && !written.contains(name) {
            bail!("tensor `{name}` has no place in a llama.cpp GGUF");
        }
    }
    Ok(())
}

/// The per-frequency divisor tensors llama.cpp reads: `rope_freqs.weight` for Llama 3's scaling (as
/// `convert_hf_to_gguf.py` computes it) and factors already read from a GGUF; Phi-3's LongRoPE
/// factor sets as `rope_factors_long` and `rope_factors_short`.
fn rope_factors(cfg: &ModelConfig) -> Vec<(&'static str, Vec<f32>)> {
    match &cfg.rope_scaling {
        Some(RopeScaling::FreqFactors(f)) => vec![("rope_freqs.weight", f.clone())],
        Some(RopeScaling::Llama3 { .. }) => {
            let unscaled = ModelConfig {
                rope_scaling: None,
                ..cfg.clone()
            };
            let base = rope::inverse_frequencies(&unscaled);
            let scaled = rope::inverse_frequencies(cfg);
            let divisors = base.iter().zip(&scaled).map(|(b, s)| b / s).collect();
            vec![("rope_freqs.weight", divisors)]
        }
        Some(RopeScaling::LongRope {
            short_factor,
            long_factor,
            ..
        }) => vec![
            ("rope_factors_long.weight", long_factor.clone()),
            ("rope_factors_short.weight", short_factor.clone()),
        ],
        None | Some(RopeScaling::Linear { .. }) => Vec::new(),
    }
}
