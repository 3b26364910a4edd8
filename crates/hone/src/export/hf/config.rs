//! `config.json` and `generation_config.json` as transformers 5 writes them for each family Hone
//! runs (sorted keys, two-space indent), from a [`ModelConfig`].
//!
//! Rotary settings go in transformers 5's `rope_parameters` and, for readers on transformers 4
//! (which ignore `rope_parameters` and would silently fall back to `rope_theta` 10000), also in
//! the older top-level `rope_theta` / `rope_scaling`; transformers 5 reads both forms alike.

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

use super::SaveDtype;
use crate::kernels::glu::Activation;
use crate::model::config::SMOLLM3_NOPE_INTERVAL;
use crate::model::{Architecture, ModelConfig, RopeScaling};
use crate::tokenizer::Tokenizer;

/// The `config.json` object for `cfg`, with weights stored as `dtype`.
pub(super) fn config_json(cfg: &ModelConfig, dtype: SaveDtype) -> Result<Value> {
    let arch = cfg.architecture;
    if arch.remote_code() {
        return super::remote::config_json(cfg, dtype);
    }
    check_layout(cfg)?;
    let (rope_parameters, rope_scaling) = rope(cfg)?;
    let mut m = Map::new();
    let mut set = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    set("architectures", json!([arch.hf_class()]));
    set("model_type", json!(arch.model_type()));
    set("attention_dropout", json!(cfg.attention_dropout));
    set("bos_token_id", json!(cfg.bos_token_id));
    set("eos_token_id", one_or_many(&cfg.eos_token_ids));
    set("pad_token_id", Value::Null);
    set("dtype", json!(dtype.hf_name()));
    let act = match cfg.hidden_act {
        Activation::Silu => "silu",
        Activation::GeluTanh => "gelu_pytorch_tanh",
    };
    // Gemma's classes read `hidden_activation` instead.
    if matches!(arch, Architecture::Gemma2 | Architecture::Gemma3) {
        set("hidden_activation", json!(act));
    } else {
        set("hidden_act", json!(act));
    }
    set("hidden_size", json!(cfg.hidden_size));
    set("initializer_range", json!(0.02));
    set("intermediate_size", json!(cfg.intermediate_size));
    set(
        "max_position_embeddings",
        json!(cfg.max_position_embeddings),
    );
    set("num_attention_heads", json!(cfg.num_attention_heads));
    set("num_hidden_layers", json!(cfg.num_hidden_layers));
    set("num_key_value_heads", json!(cfg.num_key_value_heads));
    set("rms_norm_eps", json!(cfg.rms_norm_eps));
    set("rope_parameters", rope_parameters.clone());
    set("rope_theta", json!(cfg.rope_theta));
    set("rope_scaling", rope_scaling);
    set("tie_word_embeddings", json!(cfg.tie_word_embeddings));
    set("use_cache", json!(true));
    set("vocab_size", json!(cfg.vocab_size));
    let default_head_dim = cfg.hidden_size / cfg.num_attention_heads;
    let window_size = json!(cfg.sliding_window.as_ref().map(|w| w.size));
    let layer_types: Vec<Value> = (0..cfg.num_hidden_layers)
        .map(|l| match cfg.window(l) {
            Some(_) => json!("sliding_attention"),
            None => json!("full_attention"),
        })
        .collect();
    match arch {
        Architecture::Llama => {
            set("attention_bias", json!(cfg.attention_bias));
            set("mlp_bias", json!(cfg.mlp_bias));
            set("pretraining_tp", json!(1));
            set("head_dim", json!(cfg.head_dim));
        }
        Architecture::Mistral => {
            set("sliding_window", window_size);
            set("head_dim", json!(cfg.head_dim));
        }
        Architecture::Qwen2 | Architecture::Qwen3 => {
            let first_window = cfg.sliding_window.as_ref().map(|w| w.layers[0]);
            set("layer_types", Value::Array(layer_types));
            set("sliding_window", window_size);
            set("use_sliding_window", json!(cfg.sliding_window.is_some()));
            let max_window_layers = first_window.unwrap_or(cfg.num_hidden_layers);
            set("max_window_layers", json!(max_window_layers));
            if arch == Architecture::Qwen3 {
                set("attention_bias", json!(cfg.attention_bias));
                set("head_dim", json!(cfg.head_dim));
            } else if cfg.head_dim != default_head_dim {
                // Qwen2Config has no head_dim field; its attention reads one when the config sets it.
                set("head_dim", json!(cfg.head_dim));
            }
        }
        Architecture::SmolLM3 => {
            set("layer_types", Value::Array(layer_types));
            let uses_rope = (0..cfg.num_hidden_layers).map(|l| u8::from(cfg.uses_rope(l)));
            set("no_rope_layers", json!(uses_rope.collect::<Vec<u8>>()));
            set("no_rope_layer_interval", json!(SMOLLM3_NOPE_INTERVAL));
            set("sliding_window", window_size);
            set("use_sliding_window", json!(cfg.sliding_window.is_some()));
            set("attention_bias", json!(cfg.attention_bias));
            set("mlp_bias", json!(cfg.mlp_bias));
            set("head_dim", json!(cfg.head_dim));
        }
        Architecture::Granite => {
            let scales = &cfg.scales;
            set("attention_bias", json!(cfg.attention_bias));
            set("mlp_bias", json!(cfg.mlp_bias));
            set("embedding_multiplier", json!(scales.embedding));
            set("attention_multiplier", json!(cfg.attention_scale()));
            set("residual_multiplier", json!(scales.residual));
            set("logits_scaling", json!(scales.logits));
            set("head_dim", json!(cfg.head_dim));
        }
        Architecture::Olmo2 => {
            set("attention_bias", json!(cfg.attention_bias));
            set("head_dim", json!(cfg.head_dim));
        }
        Architecture::Phi3 => {
            set("sliding_window", window_size);
            set("partial_rotary_factor", json!(partial_rotary_factor(cfg)));
            let original = match &cfg.rope_scaling {
                Some(RopeScaling::LongRope {
                    original_max_position_embeddings,
                    ..
                }) => *original_max_position_embeddings,
                _ => cfg.max_position_embeddings,
            };
            set("original_max_position_embeddings", json!(original));
            set("embd_pdrop", json!(0.0));
            set("resid_pdrop", json!(0.0));
        }
        Architecture::Glm | Architecture::Glm4 => {
            set("attention_bias", json!(cfg.attention_bias));
            set("head_dim", json!(cfg.head_dim));
        }
        Architecture::Starcoder2 => {
            set("use_bias", json!(cfg.attention_bias));
            set("norm_epsilon", json!(cfg.rms_norm_eps));
            set("sliding_window", window_size);
            set("embedding_dropout", json!(0.0));
            set("residual_dropout", json!(0.0));
        }
        Architecture::ChatGlm | Architecture::Baichuan | Architecture::QwenV1 => {
            unreachable!("remote-code families are written by remote::config_json")
        }
        Architecture::Gemma2 | Architecture::Gemma3 => {
            set("attention_bias", json!(cfg.attention_bias));
            set("head_dim", json!(cfg.head_dim));
            set("layer_types", Value::Array(layer_types));
            set("sliding_window", window_size);
            // Configs give it as an integer; the attention scale is its inverse square root.
            let scalar = 1.0 / f64::from(cfg.attention_scale()).powi(2);
            set("query_pre_attn_scalar", json!(scalar.round() as u64));
            set("attn_logit_softcapping", json!(cfg.attn_softcap));
            set("final_logit_softcapping", json!(cfg.final_softcap));
        }
    }
    // Gemma 3's rotary settings per layer type, and its switch for embedding models.
    if arch == Architecture::Gemma3 {
        set("use_bidirectional_attention", json!(false));
        let local = cfg.local_rope_theta.unwrap_or(10_000.0);
        set("rope_local_base_freq", json!(local));
        let local = json!({"rope_type": "default", "rope_theta": local});
        let per_type = json!({"full_attention": rope_parameters, "sliding_attention": local});
        set("rope_parameters", per_type);
    }
    if arch == Architecture::Starcoder2 {
        // Its config names the LayerNorms' eps `norm_epsilon`.
        m.remove("rms_norm_eps");
    }
    Ok(Value::Object(m))
}

/// `generation_config.json`: bos, and as eos every id that ends a turn (the config's eos ids and
/// the tokenizer's stop ids, e.g. ChatML's `<|im_end|>`), so `generate` stops where Hone does.
pub(super) fn generation_config_json(cfg: &ModelConfig, tokenizer: &Tokenizer) -> Value {
    let mut eos: Vec<u32> = cfg.eos_token_ids.clone();
    for id in tokenizer.stop_ids() {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    let mut m = Map::new();
    m.insert("bos_token_id".into(), json!(cfg.bos_token_id));
    m.insert("eos_token_id".into(), one_or_many(&eos));
    if let Some(pad) = tokenizer.pad_id() {
        m.insert("pad_token_id".into(), json!(pad));
    }
    Value::Object(m)
}

/// transformers writes one token id as a number and several as a list.
pub(super) fn one_or_many(ids: &[u32]) -> Value {
    match ids {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    }
}

/// Layouts the architecture's transformers class can hold: `attention_bias` covers q/k/v/o
/// together (Llama, Qwen3, SmolLM3, Granite, OLMo 2), Qwen2 has exactly q/k/v biases, Mistral none;
/// q/k norms and norm placement are the family's own, only SmolLM3 has NoPE layers, only Granite
/// multipliers.
fn check_layout(cfg: &ModelConfig) -> Result<()> {
    let arch = cfg.architecture;
    if cfg.rotary_dim != cfg.head_dim && arch.partial_rotary_default().is_none() {
        bail!(
            "{}: the model rotates {} of {} dimensions per head, which this class cannot hold",
            arch.hf_class(),
            cfg.rotary_dim,
            cfg.head_dim
        );
    }
    if cfg.qk_norm != arch.qk_norm()
        || cfg.norm_placement != arch.norm_placement()
        || cfg.norm_offset != arch.norm_offset()
        || cfg.local_rope_theta.is_some() != (arch == Architecture::Gemma3)
    {
        bail!(
            "{}: q/k norms {:?} and norms placed {:?} are not this class's",
            arch.hf_class(),
            cfg.qk_norm,
            cfg.norm_placement
        );
    }
    if let Some(window) = &cfg.sliding_window {
        let every_layer = window.layers.len() == cfg.num_hidden_layers;
        let holds = match arch {
            Architecture::Mistral | Architecture::Phi3 | Architecture::Starcoder2 => every_layer,
            Architecture::Qwen2
            | Architecture::Qwen3
            | Architecture::SmolLM3
            | Architecture::Gemma2
            | Architecture::Gemma3 => true,
            _ => false,
        };
        if !holds {
            bail!(
                "{}: the model has sliding-window attention on layers {:?}, which this class \
                 cannot hold",
                arch.hf_class(),
                window.layers
            );
        }
    }
    let switches = [
        (
            !cfg.no_rope_layers.is_empty(),
            Architecture::SmolLM3,
            "layers without RoPE",
        ),
        (
            !cfg.scales.is_default() && !gemma_scales(cfg),
            Architecture::Granite,
            "scalar multipliers",
        ),
    ];
    for (on, owner, what) in switches {
        if on && arch != owner {
            bail!(
                "{}: the model has {what}, which this class cannot hold",
                arch.hf_class()
            );
        }
    }

    let layout = (cfg.attention_bias, cfg.o_proj_bias, cfg.mlp_bias);
    let fits = match arch {
        Architecture::Llama | Architecture::SmolLM3 | Architecture::Granite => {
            cfg.attention_bias == cfg.o_proj_bias
        }
        Architecture::Mistral | Architecture::Phi3 => layout == (false, false, false),
        Architecture::Glm | Architecture::Glm4 => !cfg.o_proj_bias && !cfg.mlp_bias,
        Architecture::Starcoder2 => {
            cfg.attention_bias == cfg.o_proj_bias && cfg.attention_bias == cfg.mlp_bias
        }
        Architecture::Qwen2 => layout == (true, false, false),
        Architecture::ChatGlm | Architecture::Baichuan | Architecture::QwenV1 => false,
        Architecture::Qwen3 | Architecture::Olmo2 | Architecture::Gemma2 | Architecture::Gemma3 => {
            cfg.attention_bias == cfg.o_proj_bias && !cfg.mlp_bias
        }
    };
    if !fits {
        bail!(
            "{}: q/k/v bias {}, o_proj bias {}, MLP bias {}: transformers' {} cannot hold this combination",
            cfg.architecture.hf_class(),
            cfg.attention_bias,
            cfg.o_proj_bias,
            cfg.mlp_bias,
            cfg.architecture.hf_class()
        );
    }
    Ok(())
}

/// Whether the multipliers are Gemma's own: embeddings × √hidden and an attention scale from
/// `query_pre_attn_scalar`, nothing else.
fn gemma_scales(cfg: &ModelConfig) -> bool {
    let s = &cfg.scales;
    matches!(
        cfg.architecture,
        Architecture::Gemma2 | Architecture::Gemma3
    ) && s.embedding == (cfg.hidden_size as f64).sqrt()
        && (s.residual, s.logits) == (1.0, 1.0)
}

/// (`rope_parameters`, legacy `rope_scaling`) for the config's rotary settings.
fn rope(cfg: &ModelConfig) -> Result<(Value, Value)> {
    let scaling = match &cfg.rope_scaling {
        None => None,
        Some(RopeScaling::Linear { factor }) => Some(json!({"rope_type": "linear", "factor": factor})),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => Some(json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": *original_max_position_embeddings as u64,
        })),
        Some(RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
            attention_factor,
        }) => Some(json!({
            "rope_type": "longrope",
            "short_factor": short_factor,
            "long_factor": long_factor,
            "original_max_position_embeddings": original_max_position_embeddings,
            "attention_factor": attention_factor,
        })),
        Some(RopeScaling::FreqFactors(_)) => bail!(
            "rope scaling: the model has per-frequency factors (GGUF rope_freqs.weight), which config.json \
             cannot express; export it from the original Hugging Face checkpoint instead"
        ),
    };
    let mut parameters = match &scaling {
        Some(s) => s.clone(),
        None => json!({"rope_type": "default"}),
    };
    parameters["rope_theta"] = json!(cfg.rope_theta);
    if cfg.architecture.partial_rotary_default().is_some() {
        parameters["partial_rotary_factor"] = json!(partial_rotary_factor(cfg));
    }
    Ok((parameters, scaling.unwrap_or(Value::Null)))
}

/// The fraction of each head that rotates.
fn partial_rotary_factor(cfg: &ModelConfig) -> f64 {
    cfg.rotary_dim as f64 / cfg.head_dim as f64
}
