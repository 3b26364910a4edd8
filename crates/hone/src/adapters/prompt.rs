//! Prompt-learning adapters in PEFT's format: prompt tuning (`peft_type: "PROMPT_TUNING"`,
//! `peft.PromptTuningConfig`), P-tuning (`"P_TUNING"`, `peft.PromptEncoderConfig`) and prefix
//! tuning (`"PREFIX_TUNING"`, `peft.PrefixTuningConfig`). The first two put `num_virtual_tokens`
//! trained embeddings before every sequence's own tokens; prefix tuning puts trained keys and
//! values before every layer's own, as a KV cache that starts filled. The file holds one tensor,
//! `prompt_embeddings`: `[num_virtual_tokens, token_dim]` embeddings, or for prefix tuning
//! `[num_virtual_tokens, num_layers · 2 · token_dim]` keys and values (any encoder is run once when
//! PEFT saves, so the file holds its output and no encoder). Nothing is merged into the weights:
//! the virtual tokens are prepended whenever a sequence starts.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::config::{peft_json, PeftCommon, PEFT_VERSION};
use crate::model::ModelConfig;

/// Which prompt-learning method, by PEFT's `peft_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum PromptMethod {
    #[serde(rename = "PROMPT_TUNING")]
    PromptTuning,
    #[serde(rename = "P_TUNING")]
    PTuning,
    #[serde(rename = "PREFIX_TUNING")]
    PrefixTuning,
}

impl PromptMethod {
    pub fn peft_type(self) -> &'static str {
        match self {
            PromptMethod::PromptTuning => "PROMPT_TUNING",
            PromptMethod::PTuning => "P_TUNING",
            PromptMethod::PrefixTuning => "PREFIX_TUNING",
        }
    }

    /// The method as people call it.
    pub fn name(self) -> &'static str {
        match self {
            PromptMethod::PromptTuning => "prompt tuning",
            PromptMethod::PTuning => "P-tuning",
            PromptMethod::PrefixTuning => "prefix tuning",
        }
    }
}

/// A prompt-learning config: the fields Hone interprets typed, every other field kept as read (or
/// PEFT's defaults for a new config).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PromptConfig {
    /// Always in the file (`PeftConfig::from_json` chose this type by it); the default only lets
    /// each field be checked alone.
    #[serde(default = "prompt_tuning")]
    pub peft_type: PromptMethod,
    #[serde(flatten)]
    pub common: PeftCommon,
    /// None only in a config that PEFT would refuse (it is required).
    #[serde(default)]
    pub num_virtual_tokens: Option<usize>,
    /// The width of each virtual token: the model's hidden size; for prefix tuning, one layer's
    /// keys (key/value heads × head_dim, PEFT's choice for grouped-query models).
    #[serde(default)]
    pub token_dim: Option<usize>,
    /// Prefix tuning: how many layers the keys and values are for.
    #[serde(default)]
    pub num_layers: Option<usize>,
    #[serde(default)]
    pub num_transformer_submodules: Option<usize>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn prompt_tuning() -> PromptMethod {
    PromptMethod::PromptTuning
}

/// Fields that, when set, make the adapter compute something Hone does not, and why.
const UNSUPPORTED: [(&str, &str); 2] = [
    (
        "modules_to_save",
        "Hone trains and saves the virtual tokens only",
    ),
    ("auto_mapping", "custom model classes are not supported"),
];

impl PromptConfig {
    /// A new config as PEFT writes it for `model` (its `token_dim`, `num_layers`,
    /// `num_attention_heads`: for prefix tuning the key/value heads' — PEFT's
    /// `_prepare_prompt_learning_config` for grouped-query models, which every model with
    /// `num_key_value_heads` in its config is), with the method's own fields from `fields`.
    pub fn new(
        method: PromptMethod,
        num_virtual_tokens: usize,
        model: &ModelConfig,
        fields: Map<String, Value>,
    ) -> PromptConfig {
        let (token_dim, heads) = match method {
            PromptMethod::PrefixTuning => (
                model.num_key_value_heads * model.head_dim,
                model.num_key_value_heads,
            ),
            _ => (model.hidden_size, model.num_attention_heads),
        };
        let mut other = match json!({
            "auto_mapping": null, "modules_to_save": null, "peft_version": PEFT_VERSION,
            "num_attention_heads": heads,
        }) {
            Value::Object(m) => m,
            _ => unreachable!("a JSON object literal"),
        };
        other.extend(fields);
        PromptConfig {
            peft_type: method,
            common: PeftCommon::causal_lm(),
            num_virtual_tokens: Some(num_virtual_tokens),
            token_dim: Some(token_dim),
            num_layers: Some(model.num_hidden_layers),
            num_transformer_submodules: Some(1),
            other,
        }
    }

    /// The config as PEFT writes it.
    pub fn to_json(&self) -> Value {
        let typed = json!({
            "peft_type": self.peft_type.peft_type(),
            "num_virtual_tokens": self.num_virtual_tokens,
            "token_dim": self.token_dim,
            "num_layers": self.num_layers,
            "num_transformer_submodules": self.num_transformer_submodules,
        });
        peft_json(&self.other, &self.common, typed)
    }

    /// Refuse what Hone cannot honour. Errors are `field: problem`.
    pub fn validate(&self) -> Result<()> {
        for (field, why) in UNSUPPORTED {
            if let Some(value) = self.other.get(field).filter(|v| super::config::is_set(v)) {
                bail!("{field}: {value} is not supported ({why})");
            }
        }
        match self.num_virtual_tokens {
            None | Some(0) => bail!("num_virtual_tokens: required, at least 1"),
            Some(_) => {}
        }
        if self.num_transformer_submodules.is_some_and(|n| n != 1) {
            bail!("num_transformer_submodules: a decoder-only model has 1 (2 is for encoder-decoder models)");
        }
        self.common.validate()?;
        Ok(())
    }

    pub fn num_virtual_tokens(&self) -> usize {
        self.num_virtual_tokens.unwrap_or(0)
    }

    /// The width of a row of `prompt_embeddings` as the config declares it: `token_dim`, or for
    /// prefix tuning every layer's key and value, `num_layers · 2 · token_dim` (None when a field
    /// it needs is missing).
    pub fn row_width(&self) -> Option<usize> {
        match self.peft_type {
            PromptMethod::PrefixTuning => Some(self.num_layers? * 2 * self.token_dim?),
            _ => self.token_dim,
        }
    }
}
