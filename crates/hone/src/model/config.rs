//! Model hyper-parameters, read from an HF `config.json` or from GGUF metadata into one struct.
//!
//! Field names follow transformers' `LlamaConfig`; Mistral and Qwen2 are Llama with small differences
//! (Qwen2 has q/k/v biases), captured by `attention_bias` rather than separate types.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::io::gguf::GgufFile;

/// The architectures Hone runs; all are the Llama block with optional biases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
}

impl Architecture {
    /// The transformers class name, as written in `config.json`'s `architectures`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }

    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
        }
    }
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
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry a bias (Qwen2 always; Llama when `attention_bias` is set).
    pub attention_bias: bool,
    /// The o_proj and MLP projections carry a bias (Llama's `mlp_bias` / `attention_bias`).
    pub o_proj_bias: bool,
    pub mlp_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// dtype the weights were stored in (`torch_dtype`/`dtype`, or the GGUF's dominant tensor type).
    pub source_dtype: String,
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
        let architecture = hf_architecture(json)?;
        let get = |k: &str| json.get(k).filter(|v| !v.is_null());
        let usize_field = |k: &str| -> Result<usize> {
            get(k)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .with_context(|| format!("field `{k}` is missing or not a non-negative integer"))
        };
        if let Some(act) = get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                bail!(
                    "field `hidden_act`: {act:?} is not supported (Hone runs silu/SwiGLU models)"
                );
            }
        }
        let hidden_size = usize_field("hidden_size")?;
        let num_attention_heads = usize_field("num_attention_heads")?;
        let num_key_value_heads = match get("num_key_value_heads") {
            Some(_) => usize_field("num_key_value_heads")?,
            None => num_attention_heads,
        };
        let head_dim = match get("head_dim") {
            Some(_) => usize_field("head_dim")?,
            None => hidden_size / num_attention_heads.max(1),
        };
        // transformers 5 nests rope settings in `rope_parameters`; older files have them top-level.
        let rope = get("rope_parameters").or_else(|| get("rope_scaling"));
        let rope_theta = get("rope_theta")
            .or_else(|| rope.and_then(|r| r.get("rope_theta")))
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0);
        let rope_scaling = match rope {
            Some(r) => hf_rope_scaling(r)?,
            None => None,
        };
        let qwen2 = architecture == Architecture::Qwen2;
        let attention_bias = get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let cfg = ModelConfig {
            architecture,
            vocab_size: usize_field("vocab_size")?,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(2048) as usize,
            tie_word_embeddings: get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            attention_bias: qwen2 || attention_bias,
            o_proj_bias: !qwen2 && attention_bias,
            mlp_bias: get("mlp_bias").and_then(Value::as_bool).unwrap_or(false),
            bos_token_id: get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|v| v as u32),
            eos_token_ids: token_ids(get("eos_token_id")),
            source_dtype: get("torch_dtype")
                .or_else(|| get("dtype"))
                .and_then(Value::as_str)
                .unwrap_or("float32")
                .to_string(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read the `llama.*` metadata of a GGUF file (architecture `llama` only).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let file = gguf.path.display();
        let arch = gguf
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .with_context(|| format!("{file}: metadata `general.architecture` is missing"))?;
        if arch != "llama" {
            bail!("{file}: GGUF architecture {arch:?} is not supported (Hone reads `llama` GGUF files)");
        }
        let num = |key: &str| -> Result<u64> {
            gguf.get(&format!("llama.{key}"))
                .and_then(|v| v.as_u64())
                .with_context(|| {
                    format!("{file}: metadata `llama.{key}` is missing or not an integer")
                })
        };
        let float = |key: &str| gguf.get(&format!("llama.{key}")).and_then(|v| v.as_f64());
        let hidden_size = num("embedding_length")? as usize;
        let num_attention_heads = num("attention.head_count")? as usize;
        let num_key_value_heads = num("attention.head_count_kv")
            .map(|v| v as usize)
            .unwrap_or(num_attention_heads);
        let head_dim = num("attention.key_length")
            .or_else(|_| num("rope.dimension_count"))
            .map(|v| v as usize)
            .unwrap_or(hidden_size / num_attention_heads.max(1));
        let vocab_size = match num("vocab_size") {
            Ok(v) => v as usize,
            Err(_) => gguf
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .or_else(|| gguf.tensor_info("token_embd.weight").map(|t| t.shape()[0]))
                .with_context(|| format!("{file}: cannot tell the vocabulary size"))?,
        };
        let rope_scaling = match gguf.get("llama.rope.scaling.type").and_then(|v| v.as_str()) {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear {
                factor: float("rope.scaling.factor").unwrap_or(1.0),
            }),
            Some(other) => bail!("{file}: rope scaling type {other:?} is not supported"),
        };
        let tok_id = |key: &str| {
            gguf.get(&format!("tokenizer.ggml.{key}"))
                .and_then(|v| v.as_u64())
                .map(|v| v as u32)
        };
        let cfg = ModelConfig {
            architecture: Architecture::Llama,
            vocab_size,
            hidden_size,
            intermediate_size: num("feed_forward_length")? as usize,
            num_hidden_layers: num("block_count")? as usize,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: num("context_length").unwrap_or(2048) as usize,
            tie_word_embeddings: gguf.tensor_info("output.weight").is_none(),
            attention_bias: gguf.tensor_info("blk.0.attn_q.bias").is_some(),
            o_proj_bias: gguf.tensor_info("blk.0.attn_output.bias").is_some(),
            mlp_bias: gguf.tensor_info("blk.0.ffn_up.bias").is_some(),
            bos_token_id: tok_id("bos_token_id"),
            eos_token_ids: tok_id("eos_token_id").into_iter().collect(),
            source_dtype: dominant_gguf_type(gguf),
        };
        cfg.validate().with_context(|| format!("{file}"))?;
        Ok(cfg)
    }

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
        Ok(())
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
        let (h, i, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let (q, kv) = self.attention_widths();
        let (q, kv) = (q as u64, kv as u64);
        let mut attn = h * q + 2 * h * kv + q * h;
        if self.attention_bias {
            attn += q + 2 * kv;
        }
        if self.o_proj_bias {
            attn += h;
        }
        let mlp = 3 * h * i + if self.mlp_bias { 2 * i + h } else { 0 };
        let per_layer = attn + mlp + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers as u64 * per_layer + h + head
    }
}

fn hf_architecture(json: &Value) -> Result<Architecture> {
    let class = json
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    let model_type = json.get("model_type").and_then(Value::as_str);
    Ok(match (class, model_type) {
        (Some("LlamaForCausalLM"), _) | (None, Some("llama")) => Architecture::Llama,
        (Some("MistralForCausalLM"), _) | (None, Some("mistral")) => Architecture::Mistral,
        (Some("Qwen2ForCausalLM"), _) | (None, Some("qwen2")) => Architecture::Qwen2,
        (Some(c), _) => bail!(
            "architecture {c:?} is not supported (Hone runs LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM)"
        ),
        (None, t) => bail!("neither `architectures` nor a supported `model_type` is set (model_type: {t:?})"),
    })
}

fn hf_rope_scaling(r: &Value) -> Result<Option<RopeScaling>> {
    let kind = r
        .get("rope_type")
        .or_else(|| r.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let f = |k: &str| -> Result<f64> {
        r.get(k)
            .and_then(Value::as_f64)
            .with_context(|| format!("rope scaling `{k}` is missing"))
    };
    Ok(match kind {
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
        other => {
            bail!("rope scaling type {other:?} is not supported (default, linear, llama3 are)")
        }
    })
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => vec![],
    }
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
