//! LLaMA-Adapter adapters in PEFT's format (`peft_type: "ADAPTION_PROMPT"`,
//! `peft.AdaptionPromptConfig`): in each of the top `adapter_layers` layers a learned prompt of
//! `adapter_len` embeddings that the layer's attention also attends, through a learned gate
//! ([`crate::model::adaption`]). The file holds, per adapted layer,
//! `base_model.model.model.layers.N.self_attn.adaption_prompt` `[1, adapter_len, hidden]` and
//! `....adaption_gate` `[1]`. Nothing is merged into the weights.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::config::{peft_json, PeftCommon, PEFT_VERSION};

/// The module that holds a layer's prompt, as PEFT's `target_modules` names it.
pub const TARGET: &str = "self_attn";
/// The tensors' names after the module's.
pub const PROMPT_KEY: &str = ".adaption_prompt";
pub const GATE_KEY: &str = ".adaption_gate";

/// One adapted layer's prompt (`[adapter_len, hidden]`) and gate.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptionPrompt {
    pub prompt: Vec<f32>,
    pub gate: f32,
}

/// A LLaMA-Adapter config: the fields Hone interprets typed, every other field kept as read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AdaptionConfig {
    #[serde(flatten)]
    pub common: PeftCommon,
    /// The prompt's length (required by PEFT).
    #[serde(default)]
    pub adapter_len: Option<usize>,
    /// How many of the top layers are adapted (required by PEFT).
    #[serde(default)]
    pub adapter_layers: Option<usize>,
    #[serde(default)]
    pub target_modules: Option<String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl AdaptionConfig {
    /// A new config as PEFT writes it.
    pub fn new(adapter_len: usize, adapter_layers: usize) -> AdaptionConfig {
        let other = match json!({"auto_mapping": null, "peft_version": PEFT_VERSION}) {
            Value::Object(m) => m,
            _ => unreachable!("a JSON object literal"),
        };
        AdaptionConfig {
            common: PeftCommon::causal_lm(),
            adapter_len: Some(adapter_len),
            adapter_layers: Some(adapter_layers),
            target_modules: Some(TARGET.into()),
            other,
        }
    }

    /// The config as PEFT writes it.
    pub fn to_json(&self) -> Value {
        let typed = json!({
            "peft_type": "ADAPTION_PROMPT",
            "adapter_len": self.adapter_len,
            "adapter_layers": self.adapter_layers,
            "target_modules": self.target_modules,
        });
        peft_json(&self.other, &self.common, typed)
    }

    /// Refuse what Hone cannot honour. Errors are `field: problem`.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.adapter_len, Some(n) if n > 0) {
            bail!("adapter_len: required, at least 1");
        }
        if !matches!(self.adapter_layers, Some(n) if n > 0) {
            bail!("adapter_layers: required, at least 1");
        }
        if let Some(t) = self.target_modules.as_deref().filter(|t| *t != TARGET) {
            bail!("target_modules: {t:?} is not supported (PEFT's Llama and Mistral adapt {TARGET:?})");
        }
        self.common.validate()?;
        Ok(())
    }

    pub fn adapter_len(&self) -> usize {
        self.adapter_len.unwrap_or(0)
    }

    pub fn adapter_layers(&self) -> usize {
        self.adapter_layers.unwrap_or(0)
    }
}

/// The attention module of layer `layer`, as the adapter's tensors name it.
pub fn module(layer: usize) -> String {
    format!("model.layers.{layer}.{TARGET}")
}
