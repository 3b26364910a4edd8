//! The `config.json` of the remote-code families (`trust_remote_code` checkpoints whose modeling
//! file ships beside the weights): ChatGLM2/3, Baichuan 2 and Qwen (v1). Each names its settings
//! its own way (`num_layers`, `padded_vocab_size`, `kv_channels`, …); they are read here under
//! those names, so an error names the key the file has, into the one [`ModelConfig`].

use anyhow::{bail, Result};
use serde_json::Value;

use super::{checked_layers, Architecture, Fields, ModelConfig, NormPlacement, QkNorm, Scales};
use crate::kernels::glu::Activation;

/// The config of a remote-code family's checkpoint.
pub(super) fn remote_config(json: &Value, architecture: Architecture) -> Result<ModelConfig> {
    let fields = Fields(json);
    let cfg = match architecture {
        Architecture::ChatGlm => chatglm(&fields)?,
        Architecture::Baichuan => baichuan(&fields)?,
        Architecture::QwenV1 => qwen_v1(&fields)?,
        other => unreachable!("{other:?} is not a remote-code family"),
    };
    cfg.validate()?;
    Ok(cfg)
}

/// A required field.
fn required(fields: &Fields, key: &str) -> Result<usize> {
    match fields.usize(key)? {
        Some(v) => Ok(v),
        None => bail!("field `{key}` is missing"),
    }
}

/// A switch the modeling file has but Hone runs only one way.
fn only(fields: &Fields, key: &str, supported: bool) -> Result<()> {
    match fields.bool(key)? {
        Some(v) if v != supported => bail!("field `{key}`: only {supported} is supported"),
        _ => Ok(()),
    }
}

/// `torch_dtype`, else float32.
fn dtype(fields: &Fields) -> Result<String> {
    Ok(fields.str("torch_dtype")?.unwrap_or("float32").to_string())
}

/// ChatGLM2/3 (`modeling_chatglm.py`): GLM-4's block — q|k|v biases, multi-query groups, the
/// first half of each head rotated in interleaved pairs — with RMSNorms before each branch.
/// `rope_ratio` (ChatGLM3-32k, GLM-4-9b-chat) multiplies the rotary base 10000.
fn chatglm(fields: &Fields) -> Result<ModelConfig> {
    only(fields, "rmsnorm", true)?;
    only(fields, "post_layer_norm", true)?;
    only(fields, "apply_residual_connection_post_layernorm", false)?;
    if fields.usize("pre_seq_len")?.is_some() {
        bail!("field `pre_seq_len`: ChatGLM's built-in P-tuning v2 prefix is not supported");
    }
    let hidden_size = required(fields, "hidden_size")?;
    let heads = required(fields, "num_attention_heads")?;
    let groups = match fields.bool("multi_query_attention")? {
        Some(true) => required(fields, "multi_query_group_num")?,
        _ => heads,
    };
    let head_dim = fields
        .usize("kv_channels")?
        .unwrap_or(hidden_size / heads.max(1));
    let bias_linear = fields.bool("add_bias_linear")?.unwrap_or(false);
    Ok(ModelConfig {
        vocab_size: required(fields, "padded_vocab_size")?,
        hidden_size,
        intermediate_size: required(fields, "ffn_hidden_size")?,
        num_hidden_layers: checked_layers(required(fields, "num_layers")?, "num_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: groups,
        head_dim,
        rotary_dim: head_dim / 2,
        rms_norm_eps: fields.f64("layernorm_epsilon")?.unwrap_or(1e-5),
        rope_theta: 10_000.0 * fields.f64("rope_ratio")?.unwrap_or(1.0),
        max_position_embeddings: required(fields, "seq_length")?,
        attention_bias: bias_linear || fields.bool("add_qkv_bias")?.unwrap_or(false),
        o_proj_bias: bias_linear,
        mlp_bias: bias_linear,
        eos_token_ids: fields.token_ids("eos_token_id")?,
        source_dtype: dtype(fields)?,
        ..base(Architecture::ChatGlm)
    })
}

/// Baichuan 2 (`modeling_baichuan.py`): Llama with q|k|v as one `W_pack` and a head whose rows
/// are normalized (`NormHead`). The 7B rotates (base 10000, fixed) within
/// `max_position_embeddings`; the 13B has no rotary and biases its attention scores by ALiBi
/// instead, and its config only `model_max_length`. Baichuan 1 (vocabulary 64000) shares the
/// class but not the normalized head.
fn baichuan(fields: &Fields) -> Result<ModelConfig> {
    if let Some(w) = fields.f64("z_loss_weight")?.filter(|&w| w != 0.0) {
        bail!("field `z_loss_weight`: {w}: Baichuan's z-loss is not supported (only 0)");
    }
    if !matches!(fields.str("hidden_act")?, None | Some("silu")) {
        bail!("field `hidden_act`: only silu is supported");
    }
    let hidden_size = required(fields, "hidden_size")?;
    let heads = required(fields, "num_attention_heads")?;
    let vocab_size = required(fields, "vocab_size")?;
    let rotary_context = fields.usize("max_position_embeddings")?;
    let context = match rotary_context {
        Some(c) => c,
        None => required(fields, "model_max_length")?,
    };
    let head_dim = hidden_size / heads.max(1);
    let layers = checked_layers(required(fields, "num_hidden_layers")?, "num_hidden_layers")?;
    let alibi = rotary_context.is_none();
    Ok(ModelConfig {
        vocab_size,
        hidden_size,
        intermediate_size: required(fields, "intermediate_size")?,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim,
        rotary_dim: head_dim,
        // ALiBi layers rotate nothing.
        no_rope_layers: if alibi {
            (0..layers).collect()
        } else {
            Vec::new()
        },
        rms_norm_eps: fields.f64("rms_norm_eps")?.unwrap_or(1e-6),
        max_position_embeddings: context,
        tie_word_embeddings: fields.bool("tie_word_embeddings")?.unwrap_or(false),
        alibi,
        norm_head: vocab_size != BAICHUAN1_VOCAB,
        bos_token_id: fields.token_ids("bos_token_id")?.first().copied(),
        eos_token_ids: fields.token_ids("eos_token_id")?,
        source_dtype: dtype(fields)?,
        ..base(Architecture::Baichuan)
    })
}

/// Baichuan 1's vocabulary size: its checkpoints have a plain head.
const BAICHUAN1_VOCAB: usize = 64_000;

/// Qwen v1 (`modeling_qwen.py`): Llama under GPT-2-style names — q|k|v as `c_attn` (always with
/// a bias), `c_proj(w1(x) · silu(w2(x)))` with `intermediate_size` the two branches together —
/// whose inference past `seq_length` tokens scales queries by log_seq_length(position) and
/// stretches the rotary base (dynamic NTK).
fn qwen_v1(fields: &Fields) -> Result<ModelConfig> {
    let hidden_size = required(fields, "hidden_size")?;
    let heads = required(fields, "num_attention_heads")?;
    let head_dim = fields
        .usize("kv_channels")?
        .unwrap_or(hidden_size / heads.max(1));
    let pct = fields.f64("rotary_pct")?.unwrap_or(1.0);
    if !(pct > 0.0 && pct <= 1.0) {
        bail!("field `rotary_pct`: {pct} must be in (0, 1]");
    }
    let intermediate = required(fields, "intermediate_size")?;
    if !intermediate.is_multiple_of(2) {
        bail!("field `intermediate_size`: {intermediate} must be even (w1 and w2 take half each)");
    }
    let seq_length = required(fields, "seq_length")?;
    let long_context = |key: &str| -> Result<Option<usize>> {
        Ok(match fields.bool(key)?.unwrap_or(true) {
            true => Some(seq_length),
            false => None,
        })
    };
    let no_bias = fields.bool("no_bias")?.unwrap_or(true);
    let dtype = match (fields.bool("bf16")?, fields.bool("fp16")?) {
        (Some(true), _) => "bfloat16".to_string(),
        (_, Some(true)) => "float16".to_string(),
        _ => dtype(fields)?,
    };
    Ok(ModelConfig {
        vocab_size: required(fields, "vocab_size")?,
        hidden_size,
        intermediate_size: intermediate / 2,
        num_hidden_layers: checked_layers(
            required(fields, "num_hidden_layers")?,
            "num_hidden_layers",
        )?,
        num_attention_heads: heads,
        num_key_value_heads: heads,
        head_dim,
        rotary_dim: (head_dim as f64 * pct) as usize,
        rms_norm_eps: fields.f64("layer_norm_epsilon")?.unwrap_or(1e-6),
        rope_theta: fields.f64("rotary_emb_base")?.unwrap_or(10_000.0),
        max_position_embeddings: fields
            .usize("max_position_embeddings")?
            .unwrap_or(seq_length),
        tie_word_embeddings: fields.bool("tie_word_embeddings")?.unwrap_or(false),
        attention_bias: true,
        o_proj_bias: !no_bias,
        mlp_bias: !no_bias,
        logn_attention: long_context("use_logn_attn")?,
        dynamic_ntk: long_context("use_dynamic_ntk")?,
        source_dtype: dtype,
        ..base(Architecture::QwenV1)
    })
}

/// The settings every remote-code family shares with plain Llama; the readers above fill in
/// the rest.
fn base(architecture: Architecture) -> ModelConfig {
    ModelConfig {
        architecture,
        vocab_size: 0,
        hidden_size: 0,
        intermediate_size: 0,
        num_hidden_layers: 0,
        num_attention_heads: 0,
        num_key_value_heads: 0,
        head_dim: 0,
        rotary_dim: 0,
        rms_norm_eps: 1e-6,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 0,
        tie_word_embeddings: false,
        attention_bias: false,
        o_proj_bias: false,
        qk_norm: None::<QkNorm>,
        norm_placement: NormPlacement::Pre,
        norm_offset: 0.0,
        hidden_act: Activation::Silu,
        attn_softcap: None,
        final_softcap: None,
        local_rope_theta: None,
        no_rope_layers: Vec::new(),
        sliding_window: None,
        scales: Scales::default(),
        attention_dropout: 0.0,
        mlp_bias: false,
        bos_token_id: None,
        eos_token_ids: Vec::new(),
        source_dtype: "float32".to_string(),
        wrapper: None,
        norm_head: false,
        alibi: false,
        logn_attention: None,
        dynamic_ntk: None,
    }
}
