//! Model hyper-parameters, read from an HF `config.json` or from GGUF metadata into one struct.
//!
//! Field names follow transformers' `LlamaConfig`; every other family is Llama with small
//! differences (Qwen2 has q/k/v biases, Qwen3 a per-head q/k RMSNorm, SmolLM3 layers without
//! rotary embedding, Granite four scalar multipliers, OLMo 2 norms after each branch, Gemma norms
//! on both sides, Phi-3 partial rotary and LongRoPE, GLM-4 interleaved partial rotary, StarCoder2
//! LayerNorms and an ungated MLP; the remote-code ChatGLM2/3, Baichuan 2 (normalized head, ALiBi)
//! and Qwen v1 (logn scaling, dynamic NTK), whose configs `remote.rs` reads under their own keys),
//! captured by switches such as `attention_bias`, `qk_norm`, `norm_placement`, `rotary_dim`,
//! `no_rope_layers`, `alibi` and [`Scales`] rather than separate types; the switches that follow
//! from the family alone are methods of [`Architecture`] (`families.rs`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::io::gguf::GgufFile;
use crate::kernels::glu::Activation;

mod families;
mod remote;

pub use families::{
    gemma_global_every, gemma_query_scalar, hone_name, smollm3_nope_pattern, text_model_name,
    Architecture, BlockNorm, CheckpointNames, LinearNames, NormPlacement, QkNorm, Scales,
    SlidingWindow, Wrapper, ALL_LINEAR_NAMES, SMOLLM3_NOPE_INTERVAL,
};
use families::{
    gemma_softcap, hf_activation, hf_architecture, hf_no_rope_layers, hf_sliding_window,
    refuse_gemma_switches,
};

/// Most bytes the rotary tables may take (see `validate`).
const MAX_ROPE_TABLE_BYTES: u128 = 2 << 30;

/// Most decoder layers a config may claim: the largest real models have ~130; claims of 2⁶⁰ (GGUF)
/// and 10¹⁶ (config.json, Gemma 3's layer pattern) were allocations of that size (found by fuzzing).
const MAX_LAYERS: usize = 4096;

/// A layer count as read, before anything is laid out per layer (sliding-window, NoPE and ALiBi
/// patterns, the layer list): at most [`MAX_LAYERS`]. Every reader of a count calls it (config.json,
/// the remote-code families' configs, GGUF).
fn checked_layers(layers: usize, field: &str) -> Result<usize> {
    if layers > MAX_LAYERS {
        bail!("field `{field}`: {layers} layers; real models have at most a few hundred");
    }
    Ok(layers)
}

/// How rotary frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum RopeScaling {
    /// Llama 3.1's piecewise scaling (transformers' `rope_type: llama3`).
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
    /// Positions divided by `factor` (`rope_type: linear`).
    Linear { factor: f64 },
    /// Per-frequency divisors stored in the model (GGUF's `rope_freqs.weight`).
    FreqFactors(Vec<f32>),
    /// Phi-3's LongRoPE (`rope_type: longrope`, formerly `su`): per-frequency divisors, the short
    /// set while a forward pass stays within `original_max_position_embeddings` positions and the
    /// long set once it reaches past them (transformers decides per call), and cos/sin multiplied
    /// by `attention_factor` either way.
    LongRope {
        short_factor: Vec<f32>,
        long_factor: Vec<f32>,
        original_max_position_embeddings: usize,
        attention_factor: f64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// The leading dimensions of each head that rotate, `head_dim · partial_rotary_factor`
    /// (Phi-4-mini: 96 of 128); the rest pass through unrotated. `head_dim` in most families.
    pub rotary_dim: usize,
    /// The norms' eps (StarCoder2's LayerNorms too: its `norm_epsilon`).
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2 always; Llama when `attention_bias` is set).
    pub attention_bias: bool,
    /// The o_proj and MLP projections carry a bias (Llama's `mlp_bias` / `attention_bias`).
    pub o_proj_bias: bool,
    /// q and k are RMS-normalized (same eps) before the rotary embedding (`q_norm`/`k_norm`).
    pub qk_norm: Option<QkNorm>,
    /// Where the block's norms sit.
    pub norm_placement: NormPlacement,
    /// Added to every RMSNorm weight before it scales (1 for Gemma's `1 + w`, else 0).
    pub norm_offset: f32,
    /// The MLP's gate activation (`hidden_act`, Gemma's `hidden_activation`).
    pub hidden_act: Activation,
    /// Gemma 2's soft-caps: attention scores to `cap · tanh(s / cap)` (`attn_logit_softcapping`)
    /// and the final logits likewise (`final_logit_softcapping`).
    pub attn_softcap: Option<f32>,
    pub final_softcap: Option<f32>,
    /// The rotary base of the sliding-window layers, which rotate without scaling (Gemma 3's
    /// `rope_local_base_freq`, its `sliding_attention` rope parameters); None: every layer
    /// rotates with `rope_theta` and `rope_scaling`.
    pub local_rope_theta: Option<f64>,
    /// Layers that apply no rotary embedding (SmolLM3's NoPE layers), in increasing order.
    pub no_rope_layers: Vec<usize>,
    /// Sliding-window attention, on the layers that have it.
    pub sliding_window: Option<SlidingWindow>,
    /// Granite's multipliers and Gemma's embedding and attention scales (identities elsewhere).
    pub scales: Scales,
    /// Dropout on attention probabilities in training (`attention_dropout`; Granite 3 ships 0.1).
    /// Hone trains without it and says so.
    pub attention_dropout: f64,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// dtype the weights were stored in (`torch_dtype`/`dtype`, or the GGUF's dominant tensor type).
    pub source_dtype: String,
    /// The multimodal class the checkpoint is, when Hone runs only its language model.
    pub wrapper: Option<Wrapper>,
    /// The LM head's rows are normalized to unit length before use (Baichuan 2's `NormHead`).
    pub norm_head: bool,
    /// Attention scores are biased by ALiBi, `slope_h · (key position − query position)`, and no
    /// layer rotates (Baichuan 2 13B).
    pub alibi: bool,
    /// Qwen v1's `seq_length` when inference scales queries past it by log_seq_length(position
    /// + 1) (`use_logn_attn`); training never does.
    pub logn_attention: Option<usize>,
    /// Qwen v1's `seq_length` when inference stretches the rotary base for prompts longer than
    /// it (`use_dynamic_ntk`); training never does.
    pub dynamic_ntk: Option<usize>,
}

impl ModelConfig {
    /// Read an HF `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let json: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        Self::from_hf_json(&json).with_context(|| format!("{}", path.display()))
    }

    pub fn from_hf_json(json: &Value) -> Result<Self> {
        let class = json
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str);
        if let Some((wrapper, text)) = class.and_then(Wrapper::from_hf_class) {
            return Self::from_wrapper_json(json, wrapper, text);
        }
        let architecture = hf_architecture(json)?;
        if architecture.remote_code() {
            return remote::remote_config(json, architecture);
        }
        let fields = Fields(json);
        let usize_field = |k: &str| -> Result<usize> {
            fields
                .usize(k)?
                .with_context(|| format!("field `{k}` is missing"))
        };
        let hidden_act = hf_activation(&fields)?;
        refuse_gemma_switches(&fields)?;
        let hidden_size = usize_field("hidden_size")?;
        let num_attention_heads = usize_field("num_attention_heads")?;
        let num_key_value_heads = fields.usize("num_key_value_heads")?;
        let head_dim = fields.usize("head_dim")?;
        // transformers 5 nests rope settings in `rope_parameters`; older files have them top-level.
        let rope_key = ["rope_parameters", "rope_scaling"]
            .into_iter()
            .find(|k| fields.get(k).is_some());
        let mut rope = match rope_key {
            Some(k) => Some(Fields(
                fields.get(k).filter(|v| v.is_object()).with_context(|| {
                    format!(
                        "field `{k}`: expected an object, got {}",
                        fields.get(k).unwrap()
                    )
                })?,
            )),
            None => None,
        };
        // Gemma 3 gives each layer type its own: `{"full_attention": {...}, "sliding_attention":
        // {...}}` (transformers 5), or `rope_local_base_freq` beside the global ones (4).
        let mut local_rope_theta = None;
        if architecture == Architecture::Gemma3 {
            local_rope_theta = Some(fields.f64("rope_local_base_freq")?.unwrap_or(10_000.0));
            if let Some(per_type) = rope.as_ref().and_then(|r| r.get("full_attention")) {
                let local = rope.as_ref().and_then(|r| r.get("sliding_attention"));
                if let Some(theta) = local.and_then(|l| Fields(l).f64("rope_theta").transpose()) {
                    local_rope_theta = Some(theta?);
                }
                rope = Some(Fields(per_type));
            }
        }
        // The nested value first: transformers 5 writes it there (and Gemma 3's top-level one,
        // when a file has both, is the global layers' too).
        let nested_theta = match &rope {
            Some(rope) => rope.f64("rope_theta")?,
            None => None,
        };
        let top_theta = fields.f64("rope_theta")?;
        let rope_theta = nested_theta.or(top_theta);
        let head_dim = head_dim.unwrap_or(hidden_size / num_attention_heads.max(1));
        let rotary_dim = match architecture.partial_rotary_default() {
            Some(default) => hf_rotary_dim(&fields, rope.as_ref(), head_dim, default)?,
            None => head_dim,
        };
        let rope_scaling = match &rope {
            Some(r) => hf_rope_scaling(r, &fields, architecture)?,
            None => None,
        };
        let qwen2 = architecture == Architecture::Qwen2;
        // GLM-4's q/k/v carry biases unless the config says otherwise; its o_proj never does.
        let glm = matches!(architecture, Architecture::Glm | Architecture::Glm4);
        let attention_bias = fields.bool("attention_bias")?.unwrap_or(glm);
        // StarCoder2: one `use_bias` for every linear layer, LayerNorm's `norm_epsilon`.
        let use_bias = match architecture {
            Architecture::Starcoder2 => Some(fields.bool("use_bias")?.unwrap_or(true)),
            _ => None,
        };
        let eps_key = match architecture {
            Architecture::Starcoder2 => "norm_epsilon",
            _ => "rms_norm_eps",
        };
        let num_hidden_layers =
            checked_layers(usize_field("num_hidden_layers")?, "num_hidden_layers")?;
        let no_rope_layers = match architecture {
            Architecture::SmolLM3 => hf_no_rope_layers(&fields, num_hidden_layers)?,
            _ => Vec::new(),
        };
        let sliding_window =
            hf_sliding_window(&fields, architecture, num_hidden_layers, &no_rope_layers)?;
        let scales = match architecture {
            Architecture::Granite => Scales {
                embedding: fields.f64("embedding_multiplier")?.unwrap_or(1.0),
                attention: Some(fields.f64("attention_multiplier")?.unwrap_or(1.0)),
                residual: fields.f64("residual_multiplier")?.unwrap_or(1.0),
                logits: fields.f64("logits_scaling")?.unwrap_or(1.0),
            },
            Architecture::Gemma2 | Architecture::Gemma3 => Scales {
                embedding: (hidden_size as f64).sqrt(),
                attention: Some(
                    1.0 / fields
                        .f64("query_pre_attn_scalar")?
                        .unwrap_or(head_dim as f64)
                        .sqrt(),
                ),
                ..Scales::default()
            },
            _ => Scales::default(),
        };
        let cfg = ModelConfig {
            architecture,
            vocab_size: usize_field("vocab_size")?,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim,
            rotary_dim,
            rms_norm_eps: fields.f64(eps_key)?.unwrap_or(1e-6),
            rope_theta: rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: fields.usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: fields.bool("tie_word_embeddings")?.unwrap_or(false),
            attention_bias: use_bias.unwrap_or(qwen2 || attention_bias),
            o_proj_bias: use_bias.unwrap_or(!qwen2 && !glm && attention_bias),
            qk_norm: architecture.qk_norm(),
            norm_placement: architecture.norm_placement(),
            norm_offset: architecture.norm_offset(),
            hidden_act,
            attn_softcap: gemma_softcap(&fields, architecture, "attn_logit_softcapping")?,
            final_softcap: gemma_softcap(&fields, architecture, "final_logit_softcapping")?,
            local_rope_theta,
            no_rope_layers,
            sliding_window,
            scales,
            attention_dropout: fields.f64("attention_dropout")?.unwrap_or(0.0),
            mlp_bias: use_bias.unwrap_or(fields.bool("mlp_bias")?.unwrap_or(false)),
            bos_token_id: fields.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: fields.token_ids("eos_token_id")?,
            source_dtype: match fields.str("torch_dtype")? {
                Some(dtype) => dtype,
                None => fields.str("dtype")?.unwrap_or("float32"),
            }
            .to_string(),
            wrapper: None,
            norm_head: false,
            alibi: false,
            logn_attention: None,
            dynamic_ntk: None,
        };
        cfg.validate()?;
        if let Some(top) = top_theta.filter(|&t| t != cfg.rope_theta) {
            // The nested value is the one used; a different top-level one is a mistake to report
            // (out of range first, as a lone top-level value would be).
            ModelConfig {
                rope_theta: top,
                ..cfg.clone()
            }
            .validate()?;
            bail!(
                "field `rope_theta` ({top}) disagrees with `rope_parameters.rope_theta` ({})",
                cfg.rope_theta
            );
        }
        Ok(cfg)
    }

    /// The language model of a multimodal checkpoint: its `text_config`, read as the text class
    /// (`architecture`) reads its own config.
    fn from_wrapper_json(
        json: &Value,
        wrapper: Wrapper,
        architecture: Architecture,
    ) -> Result<Self> {
        let text = json
            .get("text_config")
            .filter(|t| t.is_object())
            .with_context(|| {
                format!(
                    "field `text_config`: {} keeps its language model's settings there; it is \
                     missing or not an object",
                    wrapper.hf_class()
                )
            })?;
        let mut text = text.clone();
        text["architectures"] = serde_json::json!([architecture.hf_class()]);
        for key in ["torch_dtype", "dtype"] {
            if let (None, Some(v)) = (text.get(key), json.get(key)) {
                text[key] = v.clone();
            }
        }
        let cfg = Self::from_hf_json(&text).context("text_config")?;
        Ok(ModelConfig {
            wrapper: Some(wrapper),
            ..cfg
        })
    }

    /// Read the `{arch}.*` metadata of a GGUF file (the archs of [`Architecture::from_gguf_arch`]).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let file = gguf.path.display();
        let arch = gguf
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .with_context(|| format!("{file}: metadata `general.architecture` is missing"))?;
        let fused_qkv = gguf.tensor_info("blk.0.attn_qkv.weight").is_some();
        let architecture = Architecture::from_gguf_arch(arch, fused_qkv).with_context(|| {
            format!(
                "{file}: GGUF architecture {arch:?} is not supported (Hone reads {})",
                Architecture::gguf_archs().join(", ")
            )
        })?;
        let num = |key: &str| -> Result<u64> {
            gguf.get(&format!("{arch}.{key}"))
                .and_then(|v| v.as_u64())
                .with_context(|| {
                    format!("{file}: metadata `{arch}.{key}` is missing or not an integer")
                })
        };
        let float = |key: &str| gguf.get(&format!("{arch}.{key}")).and_then(|v| v.as_f64());
        let hidden_size = num("embedding_length")? as usize;
        let num_attention_heads = num("attention.head_count")? as usize;
        let num_key_value_heads = num("attention.head_count_kv")
            .map(|v| v as usize)
            .unwrap_or(num_attention_heads);
        // Phi-3's and GLM-4's `rope.dimension_count` is the rotated part of each head.
        let partial = architecture.partial_rotary_default().is_some();
        let head_dim = match partial {
            true => num("attention.key_length"),
            false => num("attention.key_length").or_else(|_| num("rope.dimension_count")),
        };
        let head_dim = head_dim
            .map(|v| v as usize)
            .unwrap_or(hidden_size / num_attention_heads.max(1));
        let rotary_dim = match partial {
            true => num("rope.dimension_count").map_or(head_dim, |v| v as usize),
            false => head_dim,
        };
        let vocab_size = match num("vocab_size") {
            Ok(v) => v as usize,
            Err(_) => gguf
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .or_else(|| gguf.tensor_info("token_embd.weight").map(|t| t.shape()[0]))
                .with_context(|| format!("{file}: cannot tell the vocabulary size"))?,
        };
        let rope_scaling = match gguf
            .get(&format!("{arch}.rope.scaling.type"))
            .and_then(|v| v.as_str())
        {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear {
                factor: float("rope.scaling.factor").unwrap_or(1.0),
            }),
            Some(other) => bail!("{file}: rope scaling type {other:?} is not supported"),
        };
        let rope_scaling = match gguf_longrope(gguf, arch)? {
            Some(longrope) => Some(longrope),
            None => rope_scaling,
        };
        let tok_id = |key: &str| {
            gguf.get(&format!("tokenizer.ggml.{key}"))
                .and_then(|v| v.as_u64())
                .map(|v| v as u32)
        };
        let has = |tensor: &str| gguf.tensor_info(tensor).is_some();
        let num_hidden_layers = checked_layers(num("block_count")? as usize, "block_count")?;
        // llama.cpp runs its baichuan arch with ALiBi (no rotary) for the 13B's 40 layers.
        let alibi = architecture == Architecture::Baichuan && num_hidden_layers == 40;
        let no_rope_layers = match architecture {
            Architecture::SmolLM3 => smollm3_nope_pattern(num_hidden_layers),
            _ if alibi => (0..num_hidden_layers).collect(),
            _ => Vec::new(),
        };
        let scales = match architecture {
            Architecture::Granite => Scales {
                embedding: float("embedding_scale").unwrap_or(1.0),
                attention: Some(float("attention.scale").unwrap_or(1.0)),
                residual: float("residual_scale").unwrap_or(1.0),
                logits: float("logit_scale").unwrap_or(1.0),
            },
            Architecture::Gemma2 | Architecture::Gemma3 => {
                let scalar = gemma_query_scalar(
                    architecture,
                    num_hidden_layers,
                    hidden_size,
                    num_attention_heads,
                    head_dim,
                );
                Scales {
                    embedding: (hidden_size as f64).sqrt(),
                    attention: Some(1.0 / (scalar as f64).sqrt()),
                    ..Scales::default()
                }
            }
            _ => Scales::default(),
        };
        let gemma3 = architecture == Architecture::Gemma3;
        // llama.cpp's gemma2 alternates windowed and global layers, its gemma3 makes every 6th
        // global and rotates the windowed ones with a base of their own (a key in newer files,
        // else 10000).
        let window_size = num("attention.sliding_window");
        // Phi-3's converter writes transformers' window (0: none) for every layer, as Hone's
        // export does for StarCoder2; llama.cpp's graphs ignore it, Hone runs it as transformers
        // does.
        let sliding_window = match (gemma_global_every(architecture), window_size) {
            (Some(every), Ok(size)) => Some(SlidingWindow {
                size: size as usize,
                layers: (0..num_hidden_layers)
                    .filter(|l| (l + 1) % every != 0)
                    .collect(),
            }),
            (None, Ok(size))
                if matches!(architecture, Architecture::Phi3 | Architecture::Starcoder2)
                    && size > 0 =>
            {
                Some(SlidingWindow {
                    size: size as usize,
                    layers: (0..num_hidden_layers).collect(),
                })
            }
            _ => None,
        };
        let softcap = |key: &str| float(key).map(|c| c as f32);
        let local_rope_theta = gemma3.then(|| float("rope.freq_base_swa").unwrap_or(10_000.0));
        let cfg = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            // llama.cpp's qwen keeps Qwen's `intermediate_size`, both MLP branches together.
            intermediate_size: match architecture {
                Architecture::QwenV1 => num("feed_forward_length")? as usize / 2,
                _ => num("feed_forward_length")? as usize,
            },
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rotary_dim,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon")
                .or_else(|| float("attention.layer_norm_epsilon"))
                .unwrap_or(1e-5),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: num("context_length").unwrap_or(2048) as usize,
            tie_word_embeddings: !has("output.weight"),
            attention_bias: has("blk.0.attn_q.bias") || has("blk.0.attn_qkv.bias"),
            o_proj_bias: has("blk.0.attn_output.bias"),
            qk_norm: architecture
                .qk_norm()
                .filter(|_| has("blk.0.attn_q_norm.weight")),
            norm_placement: architecture.norm_placement(),
            norm_offset: architecture.norm_offset(),
            hidden_act: match architecture {
                Architecture::Gemma2 | Architecture::Gemma3 | Architecture::Starcoder2 => {
                    Activation::GeluTanh
                }
                _ => Activation::Silu,
            },
            attn_softcap: softcap("attn_logit_softcapping"),
            final_softcap: softcap("final_logit_softcapping"),
            local_rope_theta,
            no_rope_layers,
            // llama.cpp's converters write no window for the other archs (nor does it run one).
            sliding_window,
            scales,
            attention_dropout: 0.0,
            mlp_bias: has("blk.0.ffn_up.bias"),
            bos_token_id: tok_id("bos_token_id"),
            eos_token_ids: tok_id("eos_token_id").into_iter().collect(),
            source_dtype: dominant_gguf_type(gguf),
            wrapper: None,
            norm_head: false,
            alibi,
            logn_attention: None,
            dynamic_ntk: None,
        };
        cfg.validate().with_context(|| format!("{file}"))?;
        Ok(cfg)
    }

    /// Checks every value the model uses is in range: sizes positive and consistent, the rotary
    /// base and scaling usable, eps a small positive number, token ids inside the vocabulary.
    fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, v) in positive {
            if v == 0 {
                bail!("`{name}` must be positive");
            }
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            bail!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.num_key_value_heads
            );
        }
        if !self.head_dim.is_multiple_of(2) {
            bail!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim
            );
        }
        // A base at or below 1 makes the rotary frequencies grow with the dimension; far above
        // any real model's (10⁴–10⁷), every dimension but the first barely rotates.
        if !(self.rope_theta > 1.0 && self.rope_theta <= 1e12) {
            bail!(
                "field `rope_theta`: {} is not a usable rotary base (must be above 1 and at most \
                 1e12; Llama uses 10000 or 500000)",
                self.rope_theta
            );
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps < 1.0) {
            bail!(
                "field `rms_norm_eps`: {} must be in (0, 1) (typically 1e-5 or 1e-6)",
                self.rms_norm_eps
            );
        }
        if self.max_position_embeddings == 0 {
            bail!("field `max_position_embeddings` must be positive");
        }
        // The rotary tables cover every position up front (cos and sin, f32): 512 MiB at the
        // largest contexts Hone's families ship (Qwen2.5-1M, head_dim 128). A config claiming far
        // more is refused here rather than by the allocator (found by fuzzing).
        let table_bytes = (self.max_position_embeddings as u128) * (self.head_dim as u128) * 4;
        if table_bytes > MAX_ROPE_TABLE_BYTES {
            bail!(
                "field `max_position_embeddings`: {} positions would need {} GiB of rotary tables; \
                 Hone supports up to {} GiB (about 4M positions at head_dim 128)",
                self.max_position_embeddings,
                table_bytes >> 30,
                MAX_ROPE_TABLE_BYTES >> 30
            );
        }
        if !(self.rotary_dim > 0
            && self.rotary_dim <= self.head_dim
            && self.rotary_dim.is_multiple_of(2))
        {
            bail!(
                "the rotary dimension ({}, head_dim · partial_rotary_factor) must be even and in \
                 (0, head_dim = {}]",
                self.rotary_dim,
                self.head_dim
            );
        }
        if let Some(scaling) = &self.rope_scaling {
            scaling.validate()?;
            scaling.check_frequencies(self.rotary_dim / 2)?;
        }
        self.scales.validate()?;
        if let Some(window) = &self.sliding_window {
            if window.size == 0 {
                bail!("field `sliding_window` must be positive");
            }
            if window.layers.iter().any(|&l| l >= self.num_hidden_layers) {
                bail!(
                    "sliding-window layers beyond the model's {} layers",
                    self.num_hidden_layers
                );
            }
        }
        if !(0.0..1.0).contains(&self.attention_dropout) {
            bail!(
                "field `attention_dropout`: {} must be in [0, 1)",
                self.attention_dropout
            );
        }
        if let Some(&layer) = self
            .no_rope_layers
            .iter()
            .find(|&&l| l >= self.num_hidden_layers)
        {
            bail!(
                "no_rope_layers: layer {layer} is beyond the model's {} layers",
                self.num_hidden_layers
            );
        }
        let ids = self.bos_token_id.iter().chain(&self.eos_token_ids);
        if let Some(id) = ids.into_iter().find(|&&id| id as usize >= self.vocab_size) {
            bail!(
                "token id {id} (bos_token_id / eos_token_id) is outside the vocabulary of {}",
                self.vocab_size
            );
        }
        Ok(())
    }

    /// Widths of the q and k norm weights, when q and k are normalized.
    pub fn qk_norm_widths(&self) -> Option<(usize, usize)> {
        let (q, kv) = self.attention_widths();
        self.qk_norm.map(|kind| match kind {
            QkNorm::PerHead => (self.head_dim, self.head_dim),
            QkNorm::FullWidth => (q, kv),
        })
    }

    /// How many keys a query of layer `layer` sees, itself included, under a sliding window.
    pub fn window(&self, layer: usize) -> Option<usize> {
        let window = self.sliding_window.as_ref()?;
        window.layers.contains(&layer).then_some(window.size)
    }

    /// Whether layer `layer` rotates q and k (all but SmolLM3's NoPE layers).
    pub fn uses_rope(&self, layer: usize) -> bool {
        !self.no_rope_layers.contains(&layer)
    }

    /// The factor attention scores are scaled by: `1/√head_dim`, or Granite's multiplier.
    pub fn attention_scale(&self) -> f32 {
        match self.scales.attention {
            Some(scale) => scale as f32,
            None => 1.0 / (self.head_dim as f32).sqrt(),
        }
    }

    /// Widths of the query projection and of each key/value projection (heads × head dimension).
    pub fn attention_widths(&self) -> (usize, usize) {
        (
            self.num_attention_heads * self.head_dim,
            self.num_key_value_heads * self.head_dim,
        )
    }

    /// Number of parameters, counting a tied LM head once.
    pub fn parameter_count(&self) -> u64 {
        let (h, v) = (self.hidden_size as u64, self.vocab_size as u64);
        let linears: u64 = super::layout::block_linears(self)
            .iter()
            .map(|l| {
                let (out, inp) = (l.out_features as u64, l.in_features as u64);
                out * inp + if l.bias { out } else { 0 }
            })
            .sum();
        let qk_norms = self.qk_norm_widths().map_or(0, |(q, k)| (q + k) as u64);
        // A LayerNorm has a bias beside its weight.
        let norm = if self.architecture.layer_norm() {
            2 * h
        } else {
            h
        };
        let per_layer = linears + qk_norms + self.norm_placement.norms().len() as u64 * norm;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers as u64 * per_layer + norm + head
    }
}

impl RopeScaling {
    /// Per-frequency factors must come one per rotated pair.
    fn check_frequencies(&self, pairs: usize) -> Result<()> {
        let lists: Vec<(&str, usize)> = match self {
            RopeScaling::FreqFactors(f) => vec![("rope_freqs", f.len())],
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                ..
            } => vec![
                ("short_factor", short_factor.len()),
                ("long_factor", long_factor.len()),
            ],
            _ => Vec::new(),
        };
        match lists.into_iter().find(|&(_, n)| n != pairs) {
            Some((name, n)) => bail!(
                "rope scaling `{name}`: {n} values, but the model rotates {pairs} frequency pairs \
                 (rotary dimension / 2)"
            ),
            None => Ok(()),
        }
    }

    fn validate(&self) -> Result<()> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "rope scaling `{name}`: {v} must be a finite positive number"
                ))
            }
        };
        match self {
            RopeScaling::Linear { factor } => positive("factor", *factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("factor", *factor)?;
                positive("low_freq_factor", *low_freq_factor)?;
                positive("high_freq_factor", *high_freq_factor)?;
                positive(
                    "original_max_position_embeddings",
                    *original_max_position_embeddings,
                )?;
                // transformers divides by their difference.
                if high_freq_factor <= low_freq_factor {
                    bail!(
                        "rope scaling `high_freq_factor` ({high_freq_factor}) must be above \
                         `low_freq_factor` ({low_freq_factor})"
                    );
                }
                Ok(())
            }
            RopeScaling::FreqFactors(factors) => factors
                .iter()
                .try_for_each(|&f| positive("rope_freqs", f64::from(f))),
            RopeScaling::LongRope {
                short_factor,
                long_factor,
                attention_factor,
                ..
            } => {
                positive("attention_factor", *attention_factor)?;
                let factors = short_factor.iter().chain(long_factor);
                factors
                    .into_iter()
                    .try_for_each(|&f| positive("short_factor/long_factor", f64::from(f)))
            }
        }
    }
}

/// The fields of a JSON object, each read as the type it must have: absent (or null) is None,
/// present with another type is an error naming the field.
struct Fields<'a>(&'a Value);

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn typed<T>(
        &self,
        key: &str,
        what: &str,
        read: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        self.get(key)
            .map(|v| read(v).with_context(|| format!("field `{key}`: expected {what}, got {v}")))
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        let read = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
        self.typed(key, "a non-negative integer", read)
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", Value::as_f64)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "true or false", Value::as_bool)
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        self.typed(key, "a string", Value::as_str)
    }

    /// A token id, or a list of them (transformers allows both for `eos_token_id`).
    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        let read = |v: &Value| match v {
            Value::Array(items) => items.iter().map(id).collect(),
            single => id(single).map(|id| vec![id]),
        };
        Ok(self
            .typed(key, "a token id or a list of them", read)?
            .unwrap_or_default())
    }
}

/// `head_dim · partial_rotary_factor`, truncated as transformers' `int(...)` truncates
/// (transformers 5 keeps the factor in `rope_parameters`, 4 at the top level).
fn hf_rotary_dim(
    fields: &Fields,
    rope: Option<&Fields>,
    head_dim: usize,
    default: f64,
) -> Result<usize> {
    let nested = match rope {
        Some(r) => r.f64("partial_rotary_factor")?,
        None => None,
    };
    let factor = match nested {
        Some(f) => f,
        None => fields.f64("partial_rotary_factor")?.unwrap_or(default),
    };
    if !(factor > 0.0 && factor <= 1.0) {
        bail!("field `partial_rotary_factor`: {factor} must be in (0, 1]");
    }
    Ok((head_dim as f64 * factor) as usize)
}

/// The rope scaling of the `rope_parameters`/`rope_scaling` object `r`; `fields` is the whole
/// config, where Phi-3 keeps `original_max_position_embeddings`.
fn hf_rope_scaling(
    r: &Fields,
    fields: &Fields,
    architecture: Architecture,
) -> Result<Option<RopeScaling>> {
    let kind = match r.str("rope_type")? {
        Some(kind) => Some(kind),
        None => r.str("type")?,
    };
    let f = |k: &str| -> Result<f64> {
        r.f64(k)?
            .with_context(|| format!("rope scaling `{k}` is missing"))
    };
    let phi3 = architecture == Architecture::Phi3;
    Ok(match kind.unwrap_or("default") {
        // Phi-3's configuration class renames the older `su` and `yarn` to `longrope`.
        "longrope" | "su" => Some(hf_longrope(r, fields)?),
        "yarn" if phi3 => Some(hf_longrope(r, fields)?),
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: f("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: f("factor")?,
            low_freq_factor: f("low_freq_factor")?,
            high_freq_factor: f("high_freq_factor")?,
            original_max_position_embeddings: f("original_max_position_embeddings")?,
        }),
        other => bail!(
            "rope scaling type {other:?} is not supported (default, linear, llama3, longrope are)"
        ),
    })
}

/// LongRoPE's parameters as transformers' `_compute_longrope_parameters` reads them: without
/// `factor`, the ratio of `max_position_embeddings` to the original; without `attention_factor`,
/// `√(1 + ln factor / ln original)` (1 when the factor is at most 1).
fn hf_longrope(r: &Fields, fields: &Fields) -> Result<RopeScaling> {
    let factors = |key: &str| -> Result<Vec<f32>> {
        let list = r.typed(key, "a list of numbers", |v| {
            v.as_array()?
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32))
                .collect::<Option<Vec<f32>>>()
        })?;
        list.with_context(|| format!("rope scaling `{key}` is missing"))
    };
    let key = "original_max_position_embeddings";
    let original = match r.usize(key)? {
        Some(n) => n,
        None => fields
            .usize(key)?
            .with_context(|| format!("rope scaling `{key}` is missing"))?,
    };
    if original < 2 {
        bail!("field `{key}`: {original} must be at least 2");
    }
    let max_positions = fields.usize("max_position_embeddings")?.unwrap_or(original);
    let factor = match r.f64("factor")? {
        Some(f) => f,
        None => max_positions as f64 / original as f64,
    };
    let attention_factor = match r.f64("attention_factor")? {
        Some(f) => f,
        None if factor <= 1.0 => 1.0,
        None => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
    };
    Ok(RopeScaling::LongRope {
        short_factor: factors("short_factor")?,
        long_factor: factors("long_factor")?,
        original_max_position_embeddings: original,
        attention_factor,
    })
}

/// Phi-3's LongRoPE as llama.cpp's converter writes it: the factor tensors `rope_factors_long` and
/// `rope_factors_short`, `rope.scaling.original_context_length` and `rope.scaling.attn_factor`.
fn gguf_longrope(gguf: &GgufFile, arch: &str) -> Result<Option<RopeScaling>> {
    let (long, short) = ("rope_factors_long.weight", "rope_factors_short.weight");
    if gguf.tensor_info(long).is_none() {
        return Ok(None);
    }
    let file = gguf.path.display();
    let key = |k: &str| format!("{arch}.{k}");
    let original = gguf
        .get(&key("rope.scaling.original_context_length"))
        .and_then(|v| v.as_u64())
        .with_context(|| {
            format!("{file}: metadata `{arch}.rope.scaling.original_context_length` is missing")
        })?;
    let attention_factor = gguf
        .get(&key("rope.scaling.attn_factor"))
        .and_then(|v| v.as_f64())
        .unwrap_or(1.0);
    Ok(Some(RopeScaling::LongRope {
        short_factor: gguf.tensor_f32(short)?.0,
        long_factor: gguf.tensor_f32(long)?.0,
        original_max_position_embeddings: original as usize,
        attention_factor,
    }))
}

/// The tensor type holding most parameters, as llama.cpp names it (e.g. "Q4_1").
fn dominant_gguf_type(gguf: &GgufFile) -> String {
    let mut by_type: std::collections::BTreeMap<&str, u64> = Default::default();
    for t in &gguf.tensors {
        *by_type.entry(t.ggml_type.name()).or_default() += t.n_elements();
    }
    by_type
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| "none".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn llama() -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 256,
            "bos_token_id": 1, "eos_token_id": [2, 3],
        })
    }

    /// `llama()` with `key` set to `value` (removed when null) must be refused with an error
    /// containing `says`.
    fn refused(key: &str, value: Value, says: &str) {
        let mut config = llama();
        config[key] = value.clone();
        let err = ModelConfig::from_hf_json(&config)
            .map(|_| ())
            .expect_err(&format!("{key}: {value} was accepted"));
        let err = format!("{err:#}");
        assert!(err.contains(says), "{key}: {value}: {err}");
        assert!(!err.contains('\n'), "not one line: {err}");
    }

    /// transformers 5 reads the nested rope_theta; a different top-level one is reported.
    #[test]
    fn a_top_level_rope_theta_must_agree_with_the_nested_one() {
        let mut config = llama();
        config["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 5e5});
        let err = ModelConfig::from_hf_json(&config).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "field `rope_theta` (10000) disagrees with `rope_parameters.rope_theta` (500000)"
        );
        config["rope_theta"] = json!(5e5);
        assert_eq!(ModelConfig::from_hf_json(&config).unwrap().rope_theta, 5e5);
    }

    #[test]
    fn a_valid_config_loads() {
        let cfg = ModelConfig::from_hf_json(&llama()).unwrap();
        assert_eq!((cfg.head_dim, cfg.eos_token_ids.clone()), (16, vec![2, 3]));
    }

    /// The remote-code families read their own layer counts, bounded as every other reader's
    /// (Baichuan 13B's ALiBi pattern has an entry per layer; ChatGLM calls the count num_layers).
    #[test]
    fn remote_families_bound_their_layer_counts() {
        for (model, key) in [
            ("baichuan2-alibi", "num_hidden_layers"),
            ("chatglm3", "num_layers"),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../fixtures/models")
                .join(model)
                .join("config.json");
            let mut config: Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            config[key] = json!(1u64 << 50);
            let err = format!("{:#}", ModelConfig::from_hf_json(&config).unwrap_err());
            assert!(
                err.contains(&format!("field `{key}`: 1125899906842624 layers")),
                "{model}: {err}"
            );
        }
    }

    /// The values a new user tried (#17): each was accepted and generated nonsense.
    #[test]
    fn wrong_types_and_ranges_name_the_field() {
        let theta = "field `rope_theta`";
        refused("rope_theta", json!(-1), theta);
        refused("rope_theta", json!(0), theta);
        refused("rope_theta", json!(1e300), theta);
        refused(
            "rope_theta",
            json!("10000"),
            "field `rope_theta`: expected a number",
        );
        refused(
            "rope_scaling",
            json!(1e300),
            "field `rope_scaling`: expected an object",
        );
        refused(
            "rope_scaling",
            json!([1, 2]),
            "field `rope_scaling`: expected an object",
        );
        let positions = "field `max_position_embeddings`: expected a non-negative integer";
        refused("max_position_embeddings", json!(0.5), positions);
        refused("max_position_embeddings", json!([]), positions);
        refused("max_position_embeddings", json!(0), "must be positive");
        // Found by fuzzing: sizes that parse but were allocated before anything checked them.
        refused(
            "max_position_embeddings",
            json!(1u64 << 40),
            "1099511627776 positions would need 65536 GiB of rotary tables",
        );
        refused(
            "num_hidden_layers",
            json!(1u64 << 60),
            "field `num_hidden_layers`: 1152921504606846976 layers",
        );
        refused(
            "architectures",
            json!(12),
            "field `architectures`: expected a list",
        );
        refused("rms_norm_eps", json!(0), "field `rms_norm_eps`");
        refused("rms_norm_eps", json!(2.0), "field `rms_norm_eps`");
        refused(
            "tie_word_embeddings",
            json!("yes"),
            "expected true or false",
        );
        refused("eos_token_id", json!(100), "outside the vocabulary of 100");
        refused("eos_token_id", json!(["2"]), "field `eos_token_id`");
        refused("hidden_size", json!(-64), "field `hidden_size`");
        refused("vocab_size", Value::Null, "field `vocab_size` is missing");
    }

    #[test]
    fn smollm3_nope_layers_and_granite_multipliers_are_read_and_checked() {
        let family = |class: &str, extra: Value| {
            let mut config = llama();
            config["architectures"] = json!([class]);
            config["num_hidden_layers"] = json!(8);
            for (k, v) in extra.as_object().unwrap() {
                config[k] = v.clone();
            }
            ModelConfig::from_hf_json(&config).map_err(|e| format!("{e:#}"))
        };
        let smol = family("SmolLM3ForCausalLM", json!({})).unwrap();
        assert_eq!(smol.no_rope_layers, [3, 7], "every 4th layer by default");
        assert!(smol.uses_rope(2) && !smol.uses_rope(3));
        let listed = json!({"no_rope_layers": [1, 0, 1, 1, 1, 1, 0, 1]});
        assert_eq!(
            family("SmolLM3ForCausalLM", listed).unwrap().no_rope_layers,
            [1, 6]
        );
        let short = family("SmolLM3ForCausalLM", json!({"no_rope_layers": [1, 0]}));
        assert!(short.unwrap_err().contains("2 entries for 8 layers"));
        let two = family(
            "SmolLM3ForCausalLM",
            json!({"no_rope_layers": [2, 2, 2, 2, 2, 2, 2, 2]}),
        );
        assert!(two.unwrap_err().contains("expected a list of 0s and 1s"));

        let scales = json!({"embedding_multiplier": 12, "attention_multiplier": 0.0625,
                            "residual_multiplier": 0.22, "logits_scaling": 8});
        let granite = family("GraniteForCausalLM", scales).unwrap();
        assert_eq!(granite.attention_scale(), 0.0625);
        assert_eq!(
            (granite.scales.embedding, granite.scales.logits),
            (12.0, 8.0)
        );
        let zero = family("GraniteForCausalLM", json!({"logits_scaling": 0}));
        assert!(zero.unwrap_err().contains("field `logits_scaling`: 0"));
        // Other families ignore Granite's keys, as their transformers classes do.
        let llama = family("LlamaForCausalLM", json!({"logits_scaling": 8})).unwrap();
        assert!(llama.scales.is_default() && llama.no_rope_layers.is_empty());
    }

    /// Which layers window follows each family's transformers config class.
    #[test]
    fn sliding_windows_follow_each_family() {
        let family = |class: &str, extra: Value| {
            let mut config = llama();
            config["architectures"] = json!([class]);
            config["num_hidden_layers"] = json!(4);
            for (k, v) in extra.as_object().unwrap() {
                config[k] = v.clone();
            }
            ModelConfig::from_hf_json(&config).map_err(|e| format!("{e:#}"))
        };
        let layers = |cfg: ModelConfig| cfg.sliding_window.map(|w| (w.size, w.layers));
        let mistral = family("MistralForCausalLM", json!({"sliding_window": 8})).unwrap();
        assert_eq!(layers(mistral), Some((8, vec![0, 1, 2, 3])));
        let off = json!({"sliding_window": 8, "use_sliding_window": false});
        assert_eq!(layers(family("Qwen2ForCausalLM", off).unwrap()), None);
        let from_max =
            json!({"sliding_window": 8, "use_sliding_window": true, "max_window_layers": 2});
        assert_eq!(
            layers(family("Qwen2ForCausalLM", from_max).unwrap()),
            Some((8, vec![2, 3]))
        );
        let typed = json!({"sliding_window": 8, "use_sliding_window": true, "layer_types":
            ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]});
        assert_eq!(
            layers(family("Qwen3ForCausalLM", typed).unwrap()),
            Some((8, vec![0, 2]))
        );
        let nope = json!({"sliding_window": 8, "use_sliding_window": true});
        assert_eq!(
            layers(family("SmolLM3ForCausalLM", nope).unwrap()),
            Some((8, vec![3]))
        );
        let chunked = json!({"use_sliding_window": true, "layer_types": ["chunked_attention", "full_attention", "full_attention", "full_attention"]});
        let err = family("Qwen3ForCausalLM", chunked).unwrap_err();
        assert!(
            err.contains("\"chunked_attention\" layers are not supported"),
            "{err}"
        );
        let zero = family("MistralForCausalLM", json!({"sliding_window": 0})).unwrap_err();
        assert!(zero.contains("`sliding_window` must be positive"), "{zero}");
        assert!(
            layers(family("LlamaForCausalLM", json!({"sliding_window": 8})).unwrap()).is_none()
        );
    }

    /// Gemma 3's config in transformers 5's form and in the older one (`rope_local_base_freq`,
    /// `rope_scaling`, `sliding_window_pattern`), soft-caps, and the switches Hone does not run.
    #[test]
    fn gemma3_configs_in_both_forms() {
        let gemma = |extra: Value| {
            let mut config = llama();
            config["architectures"] = json!(["Gemma3ForCausalLM"]);
            config.as_object_mut().unwrap().remove("rope_theta");
            config["num_hidden_layers"] = json!(6);
            config["hidden_activation"] = json!("gelu_pytorch_tanh");
            config["query_pre_attn_scalar"] = json!(64);
            config["sliding_window"] = json!(8);
            for (k, v) in extra.as_object().unwrap() {
                config[k] = v.clone();
            }
            ModelConfig::from_hf_json(&config).map_err(|e| format!("{e:#}"))
        };
        let per_type = json!({"rope_parameters": {
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}});
        let legacy = json!({"rope_theta": 1e6, "rope_local_base_freq": 1e4,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0}});
        for form in [per_type, legacy] {
            let cfg = gemma(form).unwrap();
            assert_eq!((cfg.rope_theta, cfg.local_rope_theta), (1e6, Some(1e4)));
            assert_eq!(cfg.rope_scaling, Some(RopeScaling::Linear { factor: 8.0 }));
            assert_eq!(cfg.hidden_act, Activation::GeluTanh);
            assert_eq!(cfg.attention_scale(), 0.125);
            assert_eq!(cfg.scales.embedding, 8.0, "√hidden_size");
            assert_eq!(cfg.window(0), Some(8));
            assert_eq!(cfg.window(5), None, "every 6th layer is global");
        }
        let capped = gemma(json!({"final_logit_softcapping": 30.0})).unwrap();
        assert_eq!(
            (capped.final_softcap, capped.attn_softcap),
            (Some(30.0), None)
        );
        let bad_cap = gemma(json!({"attn_logit_softcapping": -1.0})).unwrap_err();
        assert!(
            bad_cap.contains("field `attn_logit_softcapping`: -1"),
            "{bad_cap}"
        );
        let both_ways = gemma(json!({"use_bidirectional_attention": true})).unwrap_err();
        assert!(both_ways.contains("bidirectional"), "{both_ways}");
        let erf = gemma(json!({"hidden_activation": "gelu"})).unwrap_err();
        assert!(erf.contains("field `hidden_activation`: \"gelu\""), "{erf}");
    }

    #[test]
    fn rope_scaling_values_are_checked() {
        let llama3 = |high: f64| {
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                   "high_freq_factor": high, "original_max_position_embeddings": 8192})
        };
        let mut config = llama();
        config["rope_scaling"] = llama3(4.0);
        assert!(ModelConfig::from_hf_json(&config).is_ok());
        refused(
            "rope_scaling",
            llama3(1.0),
            "must be above `low_freq_factor`",
        );
        refused(
            "rope_scaling",
            json!({"type": "linear", "factor": -2.0}),
            "rope scaling `factor`",
        );
        refused(
            "rope_scaling",
            json!({"type": "linear", "factor": "2"}),
            "field `factor`: expected a number",
        );
    }

    /// Phi-3 (transformers 4's form: factors in `rope_scaling`, the original context and the
    /// partial factor at the top level), read as transformers reads it.
    fn phi3(changes: Value) -> Result<ModelConfig, String> {
        let mut config = json!({
            "architectures": ["Phi3ForCausalLM"], "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "max_position_embeddings": 256, "original_max_position_embeddings": 64,
            "partial_rotary_factor": 0.75, "rope_theta": 10000.0,
            "rope_scaling": {"type": "su", "short_factor": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
                             "long_factor": [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]},
        });
        for (k, v) in changes.as_object().unwrap() {
            config[k] = v.clone();
        }
        ModelConfig::from_hf_json(&config).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn phi3_partial_rotary_and_longrope() {
        let cfg = phi3(json!({})).unwrap();
        assert_eq!((cfg.head_dim, cfg.rotary_dim), (16, 12));
        let Some(RopeScaling::LongRope {
            original_max_position_embeddings,
            attention_factor,
            ..
        }) = cfg.rope_scaling
        else {
            panic!("not LongRoPE: {:?}", cfg.rope_scaling)
        };
        assert_eq!(original_max_position_embeddings, 64);
        // √(1 + ln 4 / ln 64), transformers' default from the context ratio.
        assert!((attention_factor - (1.0f64 + 4f64.ln() / 64f64.ln()).sqrt()).abs() < 1e-12);

        let err = phi3(json!({"partial_rotary_factor": 1.0})).unwrap_err();
        assert!(
            err.contains("`short_factor`: 6 values") && err.contains("8 frequency pairs"),
            "{err}"
        );
        let err = phi3(json!({"partial_rotary_factor": 1.5})).unwrap_err();
        assert!(err.contains("field `partial_rotary_factor`: 1.5"), "{err}");
        let err = phi3(json!({"original_max_position_embeddings": null})).unwrap_err();
        assert!(
            err.contains("`original_max_position_embeddings` is missing"),
            "{err}"
        );
    }

    /// GLM-4's classes default to rotating half of each head, q/k/v biases and no o_proj bias.
    #[test]
    fn glm_defaults() {
        let config = json!({
            "architectures": ["Glm4ForCausalLM"], "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "head_dim": 16,
        });
        let cfg = ModelConfig::from_hf_json(&config).unwrap();
        assert_eq!(cfg.rotary_dim, 8);
        assert!(cfg.attention_bias && !cfg.o_proj_bias);
        assert_eq!(cfg.norm_placement, NormPlacement::SandwichGlm4);
    }
}
