//! `config.json` for the remote-code families (ChatGLM2/3, Baichuan 2, Qwen v1) under their own
//! keys, with the `auto_map` their published checkpoints carry, so transformers loads the
//! merged model with `trust_remote_code` through the modeling files copied beside it.

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

use super::config::one_or_many;
use super::SaveDtype;
use crate::model::{Architecture, ModelConfig};

/// The remote-code config of `cfg`, weights stored as `dtype`.
pub(super) fn config_json(cfg: &ModelConfig, dtype: SaveDtype) -> Result<Value> {
    check_layout(cfg)?;
    let arch = cfg.architecture;
    let mut m = Map::new();
    let mut set = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    set("architectures", json!([arch.hf_class()]));
    set("model_type", json!(arch.model_type()));
    set("torch_dtype", json!(dtype.hf_name()));
    set("tie_word_embeddings", json!(cfg.tie_word_embeddings));
    set("use_cache", json!(true));
    set("hidden_size", json!(cfg.hidden_size));
    set("num_attention_heads", json!(cfg.num_attention_heads));
    match arch {
        Architecture::ChatGlm => {
            set("auto_map", chatglm_auto_map());
            set("add_bias_linear", json!(cfg.o_proj_bias));
            set("add_qkv_bias", json!(cfg.attention_bias));
            set("apply_query_key_layer_scaling", json!(true));
            set("apply_residual_connection_post_layernorm", json!(false));
            set("attention_dropout", json!(0.0));
            set("attention_softmax_in_fp32", json!(true));
            set("bias_dropout_fusion", json!(true));
            set("ffn_hidden_size", json!(cfg.intermediate_size));
            set("fp32_residual_connection", json!(false));
            set("hidden_dropout", json!(0.0));
            set("kv_channels", json!(cfg.head_dim));
            set("layernorm_epsilon", json!(cfg.rms_norm_eps));
            let grouped = cfg.num_key_value_heads != cfg.num_attention_heads;
            set("multi_query_attention", json!(grouped));
            set("multi_query_group_num", json!(cfg.num_key_value_heads));
            set("num_layers", json!(cfg.num_hidden_layers));
            set("original_rope", json!(true));
            set("padded_vocab_size", json!(cfg.vocab_size));
            set("post_layer_norm", json!(true));
            set("rmsnorm", json!(true));
            set("seq_length", json!(cfg.max_position_embeddings));
            if cfg.rope_theta != 10_000.0 {
                set("rope_ratio", json!(cfg.rope_theta / 10_000.0));
            }
            set("eos_token_id", one_or_many(&cfg.eos_token_ids));
            set("pad_token_id", json!(0));
        }
        Architecture::Baichuan => {
            set(
                "auto_map",
                json!({
                    "AutoConfig": "configuration_baichuan.BaichuanConfig",
                    "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
                }),
            );
            set("hidden_act", json!("silu"));
            set("initializer_range", json!(0.02));
            set("intermediate_size", json!(cfg.intermediate_size));
            set("num_hidden_layers", json!(cfg.num_hidden_layers));
            set("rms_norm_eps", json!(cfg.rms_norm_eps));
            set("vocab_size", json!(cfg.vocab_size));
            set("z_loss_weight", json!(0));
            // The 13B's config knows only `model_max_length`; the 7B's rotary reads
            // `max_position_embeddings`.
            set("model_max_length", json!(cfg.max_position_embeddings));
            if !cfg.alibi {
                set(
                    "max_position_embeddings",
                    json!(cfg.max_position_embeddings),
                );
            }
            set("bos_token_id", json!(cfg.bos_token_id));
            set("eos_token_id", one_or_many(&cfg.eos_token_ids));
            set("pad_token_id", json!(0));
        }
        Architecture::QwenV1 => {
            set(
                "auto_map",
                json!({
                    "AutoConfig": "configuration_qwen.QWenConfig",
                    "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
                }),
            );
            set("attn_dropout_prob", json!(0.0));
            set("emb_dropout_prob", json!(0.0));
            set("bf16", json!(dtype == SaveDtype::BF16));
            set("fp16", json!(dtype == SaveDtype::F16));
            set("fp32", json!(dtype == SaveDtype::F32));
            set("initializer_range", json!(0.02));
            set("intermediate_size", json!(2 * cfg.intermediate_size));
            set("kv_channels", json!(cfg.head_dim));
            set("layer_norm_epsilon", json!(cfg.rms_norm_eps));
            set(
                "max_position_embeddings",
                json!(cfg.max_position_embeddings),
            );
            set("no_bias", json!(!cfg.o_proj_bias));
            set("num_hidden_layers", json!(cfg.num_hidden_layers));
            set("rotary_emb_base", json!(cfg.rope_theta));
            set(
                "rotary_pct",
                json!(cfg.rotary_dim as f64 / cfg.head_dim as f64),
            );
            set("scale_attn_weights", json!(true));
            let seq_length = cfg.logn_attention.or(cfg.dynamic_ntk);
            set(
                "seq_length",
                json!(seq_length.unwrap_or(cfg.max_position_embeddings)),
            );
            set("use_dynamic_ntk", json!(cfg.dynamic_ntk.is_some()));
            set("use_logn_attn", json!(cfg.logn_attention.is_some()));
            set("use_flash_attn", json!(false));
            set("vocab_size", json!(cfg.vocab_size));
        }
        other => unreachable!("{other:?} is not a remote-code family"),
    }
    Ok(Value::Object(m))
}

/// ChatGLM's `auto_map`, as chatglm3-6b ships it.
fn chatglm_auto_map() -> Value {
    let model = "modeling_chatglm.ChatGLMForConditionalGeneration";
    json!({
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": model,
        "AutoModelForCausalLM": model,
        "AutoModelForSeq2SeqLM": model,
        "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
    })
}

/// What the family's modeling file can hold: its own biases and norms, nothing of another
/// family's (q/k norms, windows, multipliers), and Qwen's two long-context switches sharing one
/// `seq_length`.
fn check_layout(cfg: &ModelConfig) -> Result<()> {
    let arch = cfg.architecture;
    let foreign = cfg.qk_norm.is_some()
        || cfg.sliding_window.is_some()
        || !cfg.scales.is_default()
        || cfg.attn_softcap.is_some()
        || cfg.final_softcap.is_some()
        || cfg.rope_scaling.is_some()
        || cfg.norm_offset != 0.0;
    let biases = (cfg.attention_bias, cfg.o_proj_bias, cfg.mlp_bias);
    let fits = match arch {
        Architecture::ChatGlm => cfg.o_proj_bias == cfg.mlp_bias,
        Architecture::Baichuan => biases == (false, false, false),
        Architecture::QwenV1 => cfg.attention_bias && cfg.o_proj_bias == cfg.mlp_bias,
        _ => false,
    };
    let seq_lengths_agree = match (cfg.logn_attention, cfg.dynamic_ntk) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    };
    if foreign || !fits || !seq_lengths_agree {
        bail!(
            "{}: the model's switches (biases {biases:?}, q/k norms, windows, multipliers or rope \
             scaling) are not this modeling file's",
            arch.hf_class()
        );
    }
    Ok(())
}
