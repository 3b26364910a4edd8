//! `hone info MODEL`: what a model is, without loading its weights; or, given a PEFT adapter
//! directory, what the adapter is.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Result;
use hone::adapters::{read_adapter, Adapter, PeftConfig};
use hone::kernels::glu::Activation;
use hone::model::{ModelConfig, NormPlacement, QkNorm, RopeScaling};
use serde_json::json;

#[derive(clap::Args)]
pub struct Args {
    /// HF model directory, .gguf file, or Hub id (org/name).
    pub model: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let dir = Path::new(&args.model);
    if dir.join("adapter_config.json").is_file() && !dir.join("config.json").is_file() {
        return describe_adapter(&read_adapter(dir)?, dir, args.json);
    }
    let (source, cfg, tok) = hone::model::inspect(&args.model)?;
    let special: Vec<_> = tok
        .special_tokens()
        .into_iter()
        .map(|(t, id)| json!({"token": t, "id": id}))
        .collect();
    let info = json!({
        "path": source.path().display().to_string(),
        "format": match source { hone::io::source::ModelSource::Gguf(_) => "gguf", _ => "hf" },
        "architecture": cfg.architecture.hf_class(),
        "wrapper": cfg.wrapper.map(|w| w.hf_class()),
        "num_hidden_layers": cfg.num_hidden_layers,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "switches": {
            "attention_bias": cfg.attention_bias,
            "o_proj_bias": cfg.o_proj_bias,
            "mlp_bias": cfg.mlp_bias,
            "qk_norm": cfg.qk_norm,
            "norm_placement": cfg.norm_placement,
            "norm_offset": cfg.norm_offset,
            "hidden_act": cfg.hidden_act,
            "local_rope_theta": cfg.local_rope_theta,
            "attn_softcap": cfg.attn_softcap,
            "final_softcap": cfg.final_softcap,
            "sliding_window": cfg.sliding_window,
            "no_rope_layers": cfg.no_rope_layers,
            "scales": cfg.scales,
            "fused_qkv": cfg.architecture.fused_qkv(),
            "fused_gate_up": cfg.architecture.fused_gate_up(),
            "rotary_interleaved": cfg.architecture.rotary_interleaved(),
            "layer_norm": cfg.architecture.layer_norm(),
            "gated_mlp": cfg.architecture.gated_mlp(),
            "rotary_dim": cfg.rotary_dim,
            "rope_scaling": cfg.rope_scaling,
            "norm_head": cfg.norm_head,
            "alibi": cfg.alibi,
            "logn_attention": cfg.logn_attention,
            "dynamic_ntk": cfg.dynamic_ntk,
        },
        "parameters": cfg.parameter_count(),
        "dtype": cfg.source_dtype,
        "tokenizer": tok.kind(),
        "bos_token": tok.bos_token(),
        "eos_token": tok.eos_token(),
        "special_tokens": special,
        "chat_template": tok.chat_template().is_some(),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let params = cfg.parameter_count() as f64;
    println!(
        "model          {}",
        info["path"].as_str().unwrap_or_default()
    );
    let within = match cfg.wrapper {
        Some(w) => format!(", the language model of a {}", w.hf_class()),
        None => String::new(),
    };
    println!(
        "architecture   {} ({}{within})",
        cfg.architecture.hf_class(),
        info["format"].as_str().unwrap_or_default()
    );
    println!("block          {}", block_switches(&cfg));
    println!("layers         {}", cfg.num_hidden_layers);
    println!(
        "hidden size    {} (MLP {})",
        cfg.hidden_size, cfg.intermediate_size
    );
    println!(
        "heads          {} query, {} key/value, head dim {}",
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    );
    println!("vocabulary     {}", cfg.vocab_size);
    println!(
        "context        {} (rope theta {})",
        cfg.max_position_embeddings, cfg.rope_theta
    );
    println!(
        "parameters     {} ({:.1}M)",
        cfg.parameter_count(),
        params / 1e6
    );
    println!("dtype          {}", cfg.source_dtype);
    println!("tied embedding {}", cfg.tie_word_embeddings);
    println!("tokenizer      {}", tok.kind());
    let token = |t: Option<&str>| t.unwrap_or("(none)").to_string();
    println!(
        "bos / eos      {} / {}",
        token(tok.bos_token()),
        token(tok.eos_token())
    );
    let names: Vec<String> = tok
        .special_tokens()
        .into_iter()
        .map(|(t, id)| format!("{t}={id}"))
        .collect();
    // Qwen's 208 (205 of them `<|extra_N|>`) would fill the screen: the first few and a count.
    const SHOWN: usize = 12;
    let more = names.len().saturating_sub(SHOWN);
    let shown = names[..names.len().min(SHOWN)].join(" ");
    match more {
        0 => println!("special tokens {shown}"),
        n => println!("special tokens {shown} … and {n} more (--json lists them all)"),
    }
    println!(
        "chat template  {}",
        if tok.chat_template().is_some() {
            "yes"
        } else {
            "no"
        }
    );
    Ok(())
}

/// The switches of the family's decoder block that differ from plain Llama, in words.
fn block_switches(cfg: &ModelConfig) -> String {
    let switches = [
        (cfg.attention_bias, "q/k/v bias"),
        (cfg.o_proj_bias, "o_proj bias"),
        (cfg.mlp_bias, "MLP bias"),
        (cfg.qk_norm == Some(QkNorm::PerHead), "per-head q/k RMSNorm"),
        (
            cfg.qk_norm == Some(QkNorm::FullWidth),
            "q/k RMSNorm over the whole projection",
        ),
        (
            cfg.norm_placement == NormPlacement::Post,
            "norms after each branch",
        ),
        (
            matches!(
                cfg.norm_placement,
                NormPlacement::Sandwich | NormPlacement::SandwichGlm4
            ),
            "norms before and after each branch",
        ),
        (cfg.norm_offset != 0.0, "norms scale by 1 + w"),
        (cfg.hidden_act == Activation::GeluTanh, "GeGLU (tanh GELU)"),
    ];
    let mut on: Vec<String> = switches
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| name.to_string())
        .collect();
    if !cfg.no_rope_layers.is_empty() {
        on.push(format!("no RoPE in layers {:?}", cfg.no_rope_layers));
    }
    for (cap, what) in [
        (cfg.attn_softcap, "attention scores"),
        (cfg.final_softcap, "logits"),
    ] {
        if let Some(cap) = cap {
            on.push(format!("{what} soft-capped at {cap}"));
        }
    }
    let names = cfg.architecture.linear_names();
    let short = |path: &str| path.rsplit('.').next().unwrap_or(path).to_string();
    if cfg.architecture.fused_qkv() {
        on.push(format!("fused q|k|v {}", short(names.qkv)));
    }
    if cfg.architecture.fused_gate_up() {
        on.push(format!("fused gate|up {}", short(names.gate_up)));
    }
    if cfg.norm_head {
        on.push("LM head rows normalized (NormHead)".into());
    }
    if cfg.alibi {
        on.push("ALiBi attention biases".into());
    }
    for (past, what) in [
        (cfg.logn_attention, "logn query scaling"),
        (cfg.dynamic_ntk, "dynamic NTK rotary base"),
    ] {
        if let Some(n) = past {
            on.push(format!("{what} past {n} tokens (inference)"));
        }
    }
    if cfg.architecture.layer_norm() {
        on.push("LayerNorms with bias".into());
    }
    if !cfg.architecture.gated_mlp() {
        on.push("ungated MLP".into());
    }
    if cfg.architecture.rotary_interleaved() {
        on.push("interleaved rotary pairs".into());
    }
    if cfg.rotary_dim != cfg.head_dim {
        on.push(format!(
            "rotary on {} of {} head dimensions",
            cfg.rotary_dim, cfg.head_dim
        ));
    }
    if let Some(RopeScaling::LongRope {
        original_max_position_embeddings,
        ..
    }) = &cfg.rope_scaling
    {
        on.push(format!(
            "LongRoPE (long factors past {original_max_position_embeddings} positions)"
        ));
    }
    if let Some(theta) = cfg.local_rope_theta {
        on.push(format!("sliding layers rotate with base {theta}"));
    }
    if let Some(window) = &cfg.sliding_window {
        on.push(format!(
            "sliding window of {} in layers {:?}",
            window.size, window.layers
        ));
    }
    if !cfg.scales.is_default() {
        let s = &cfg.scales;
        on.push(format!(
            "embeddings ×{}, attention scale {}, residual ×{}, logits ÷{}",
            s.embedding,
            cfg.attention_scale(),
            s.residual,
            s.logits
        ));
    }
    if on.is_empty() {
        "Llama block (RMSNorm, SwiGLU, rotary)".into()
    } else {
        format!("Llama block (RMSNorm, SwiGLU, rotary) + {}", on.join(", "))
    }
}

/// An adapter directory: its method and settings, the modules it adapts and its parameters.
fn describe_adapter(adapter: &Adapter, dir: &Path, as_json: bool) -> Result<()> {
    let vera_paths =
        (adapter.vera.iter().flat_map(|v| v.lambdas.keys())).chain(adapter.loha.keys());
    let vera_paths = vera_paths
        .chain(adapter.lokr.keys())
        .chain(adapter.oft.keys());
    let vera_paths = vera_paths.chain(adapter.adalora.keys());
    let module_paths = (adapter.modules.keys().chain(adapter.scales.keys())).chain(vera_paths);
    // `model.layers.3.mlp.down_proj` → `mlp.down_proj`: each layer adapts the same ones.
    let kinds: BTreeSet<&str> = module_paths
        .clone()
        .map(|m| m.splitn(4, '.').nth(3).unwrap_or(m))
        .collect();
    let lora: usize = adapter
        .modules
        .values()
        .map(|w| w.a.len() + w.b.len() + w.magnitude.as_ref().map_or(0, Vec::len))
        .sum();
    let vectors: usize = adapter.scales.values().map(|v| v.values.len()).sum();
    let biases: usize = adapter.biases.values().map(Vec::len).sum();
    let vera = adapter.vera.as_ref().map_or(0, |v| {
        let vectors: usize = v.lambdas.values().map(|(d, b)| d.len() + b.len()).sum();
        v.a.len() + v.b.len() + vectors
    });
    let loha: usize = (adapter.loha.values())
        .map(|w| w.w1a.len() + w.w1b.len() + w.w2a.len() + w.w2b.len())
        .sum();
    let lokr: usize = adapter.lokr.values().map(|w| w.parameters()).sum();
    let oft: usize = adapter.oft.values().map(|w| w.parameters()).sum();
    let adalora: usize = adapter.adalora.values().map(|w| w.parameters()).sum();
    let prompt = vera
        + loha
        + lokr
        + oft
        + adalora
        + adapter.prompt.as_ref().map_or(0, Vec::len)
        + adapter
            .adaption
            .values()
            .map(|p| p.prompt.len() + 1)
            .sum::<usize>();
    let parameters = lora + vectors + biases + prompt;
    let settings = match &adapter.config {
        PeftConfig::Lora(c) => json!({
            "r": c.r, "lora_alpha": c.lora_alpha, "use_rslora": c.use_rslora, "use_dora": c.use_dora,
            "bias": c.bias, "target_modules": c.target_modules, "init_lora_weights": c.init_lora_weights,
        }),
        PeftConfig::Ia3(c) => json!({
            "target_modules": c.target_modules, "feedforward_modules": c.feedforward_modules,
        }),
        PeftConfig::Prompt(c) => json!({
            "num_virtual_tokens": c.num_virtual_tokens, "token_dim": c.token_dim,
        }),
        PeftConfig::Adaption(c) => json!({
            "adapter_len": c.adapter_len, "adapter_layers": c.adapter_layers,
        }),
        PeftConfig::Vera(c) => json!({"r": c.r, "target_modules": c.target_modules}),
        PeftConfig::Loha(c) => {
            json!({"r": c.r, "alpha": c.alpha, "target_modules": c.target_modules})
        }
        PeftConfig::Lokr(c) => {
            json!({"r": c.r, "alpha": c.alpha, "target_modules": c.target_modules})
        }
        PeftConfig::Adalora(c) => json!({
            "init_r": c.init_r, "target_r": c.target_r, "lora_alpha": c.lora_alpha,
            "target_modules": c.target_modules, "rank_pattern": c.rank_pattern,
        }),
        PeftConfig::Oft(c) => json!({
            "r": c.r, "oft_block_size": c.oft_block_size, "use_cayley_neumann": c.use_cayley_neumann,
            "block_share": c.block_share, "coft": c.coft, "target_modules": c.target_modules,
        }),
    };
    let info = json!({
        "path": dir.display().to_string(),
        "method": adapter.config.method(),
        "base_model_name_or_path": adapter.config.base_model_name_or_path(),
        "modules": module_paths.count(),
        "module_kinds": kinds,
        "parameters": parameters,
        "settings": settings,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    println!("adapter        {}", dir.display());
    let method = match &adapter.config {
        PeftConfig::Lora(c) => format!(
            "{}, rank {}, alpha {}{}",
            adapter.config.method(),
            c.r,
            c.lora_alpha,
            if c.use_rslora {
                ", rank-stabilised"
            } else {
                ""
            }
        ),
        PeftConfig::Ia3(_) => "IA3 (learned scaling vectors)".to_string(),
        PeftConfig::Vera(c) => format!("VeRA, shared projections of rank {}", c.r),
        PeftConfig::Loha(c) => format!("LoHa, rank {}, alpha {}", c.r, c.alpha),
        PeftConfig::Lokr(c) => format!("LoKr, rank {}, alpha {}", c.r, c.alpha),
        PeftConfig::Adalora(c) => format!(
            "AdaLoRA, ranks from {} to an average of {}, alpha {}",
            c.init_r, c.target_r, c.lora_alpha
        ),
        PeftConfig::Oft(c) => match c.r {
            0 => format!("OFT, rotations in blocks of {}", c.oft_block_size),
            r => format!("OFT, rotations of {r} blocks"),
        },
        PeftConfig::Adaption(c) => format!(
            "LLaMA-Adapter, a gated prompt of {} in each of the top {} layers",
            c.adapter_len(),
            c.adapter_layers()
        ),
        PeftConfig::Prompt(c) => format!(
            "{}, {} virtual tokens",
            adapter.config.method(),
            c.num_virtual_tokens()
        ),
    };
    println!("method         {method}");
    let base = adapter.config.base_model_name_or_path();
    println!("base model     {}", base.unwrap_or("(not recorded)"));
    let kinds: Vec<&str> = kinds.into_iter().collect();
    if adapter.config.is_mergeable() {
        println!("modules        {} ({})", info["modules"], kinds.join(", "));
    }
    if let PeftConfig::Ia3(_) = &adapter.config {
        let inputs: BTreeSet<&str> = adapter
            .scales
            .iter()
            .filter(|(_, v)| v.feedforward)
            .map(|(m, _)| m.rsplit('.').next().unwrap_or(m))
            .collect();
        let inputs: Vec<&str> = inputs.into_iter().collect();
        println!("input scaled   {}", inputs.join(", "));
    }
    println!("parameters     {parameters}");
    if biases > 0 {
        println!(
            "biases         {} tensors ({biases} values)",
            adapter.biases.len()
        );
    }
    Ok(())
}
