//! PEFT adapters (LoRA, DoRA, IA3) in Hugging Face PEFT's directory format:
//! `adapter_config.json` plus `adapter_model.safetensors`, read, written and merged into a model's
//! weights, so adapters move freely between Hone and PEFT (and the tools built on it).
//!
//! A LoRA adapter adds `scale · B · A` to a linear layer's weight `W [out, in]`, with
//! `A [r, in]`, `B [out, r]` and `scale = alpha / r` (or `alpha / sqrt(r)` for rank-stabilised LoRA).
//! A DoRA adapter (`use_dora`) also rescales each output row of the result to a learned magnitude
//! ([`dora`]). An IA3 adapter scales a layer's outputs or inputs by a learned vector ([`ia3`]).
//! A prompt-tuning or P-tuning adapter puts learned virtual tokens before every sequence, a
//! prefix-tuning one learned keys and values ([`prompt`]); a LLaMA-Adapter one gives the top
//! layers' attention a gated learned prompt ([`adaption`]). A VeRA adapter scales a pair of frozen
//! random matrices shared by every layer with two learned vectors per layer, a LoRA update once
//! its layer's width is known ([`vera`]); a LoHa one is the Hadamard product of two low-rank
//! products, a LoRA update of rank r² ([`loha`]); a LoKr one a Kronecker product, a LoRA update
//! too ([`lokr`]); an AdaLoRA one an SVD-shaped update `B·diag(E)·A` whose ranks training
//! allocated, a LoRA update as well ([`adalora`]). An OFT one rotates each targeted layer's input by learned block-diagonal
//! orthogonal matrices ([`oft`]).

pub mod adalora;
pub mod adaption;
pub mod config;
pub mod dora;
pub mod ia3;
pub mod loha;
pub mod lokr;
pub mod merge;
pub mod oft;
pub mod peft;
pub mod prompt;
pub mod targets;
mod validate;
pub mod vera;
mod write;

use std::collections::BTreeMap;

pub use adalora::{AdaloraConfig, AdaloraWeights};
pub use adaption::{AdaptionConfig, AdaptionPrompt};
pub use config::{AdapterConfig, Bias, InitLoraWeights, OneOrMany, PeftCommon, TargetModules};
pub use ia3::{Ia3Config, Ia3Vector};
pub use loha::{LohaConfig, LohaWeights};
pub use lokr::{LokrConfig, LokrWeights};
pub use merge::merge;
pub use oft::{OftConfig, OftWeights};
pub use peft::read_adapter;
pub use prompt::{PromptConfig, PromptMethod};
pub use targets::{ModuleMatcher, Patterns};
pub use vera::{VeraConfig, VeraWeights};
pub use write::write_adapter;

/// The factor PEFT multiplies `B · A` by: `alpha / r`, or `alpha / sqrt(r)` with `use_rslora`.
pub fn lora_scale(r: usize, alpha: f64, use_rslora: bool) -> f64 {
    if use_rslora {
        alpha / (r as f64).sqrt()
    } else {
        alpha / r as f64
    }
}

/// One module's LoRA matrices, row-major f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraWeights {
    /// `lora_A`, `[r, in_features]`.
    pub a: Vec<f32>,
    /// `lora_B`, `[out_features, r]`.
    pub b: Vec<f32>,
    pub r: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// What `B · A` is multiplied by before it is added to the weight (see [`lora_scale`]).
    pub scale: f64,
    /// DoRA's `lora_magnitude_vector`, `[out_features]` (None: plain LoRA).
    pub magnitude: Option<Vec<f32>>,
}

impl LoraWeights {
    /// The update `scale · B·A`, borrowed.
    pub fn low_rank(&self) -> dora::LowRank<'_> {
        dora::LowRank {
            a: &self.a,
            b: &self.b,
            r: self.r,
            scale: self.scale as f32,
        }
    }
}

/// An adapter's PEFT config: the method, with its own fields.
#[derive(Debug, Clone, PartialEq)]
pub enum PeftConfig {
    /// `peft_type: "LORA"` (DoRA with `use_dora`).
    Lora(AdapterConfig),
    /// `peft_type: "IA3"`.
    Ia3(Ia3Config),
    /// `peft_type: "PROMPT_TUNING"`, `"P_TUNING"` or `"PREFIX_TUNING"`.
    Prompt(PromptConfig),
    /// `peft_type: "ADAPTION_PROMPT"` (LLaMA-Adapter).
    Adaption(AdaptionConfig),
    /// `peft_type: "VERA"`.
    Vera(VeraConfig),
    /// `peft_type: "LOHA"`.
    Loha(LohaConfig),
    /// `peft_type: "LOKR"`.
    Lokr(LokrConfig),
    /// `peft_type: "OFT"`.
    Oft(OftConfig),
    /// `peft_type: "ADALORA"`.
    Adalora(AdaloraConfig),
}

impl PeftConfig {
    /// Parse `adapter_config.json` text by its `peft_type`. Errors are `field: problem`.
    pub fn from_json(text: &str) -> anyhow::Result<PeftConfig> {
        let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)?;
        match fields.get("peft_type").and_then(|t| t.as_str()) {
            Some("IA3") => Ok(PeftConfig::Ia3(config::from_json_by_field(text)?)),
            Some("PROMPT_TUNING" | "P_TUNING" | "PREFIX_TUNING") => {
                Ok(PeftConfig::Prompt(config::from_json_by_field(text)?))
            }
            Some("ADAPTION_PROMPT") => Ok(PeftConfig::Adaption(config::from_json_by_field(text)?)),
            Some("VERA") => Ok(PeftConfig::Vera(config::from_json_by_field(text)?)),
            Some("LOHA") => Ok(PeftConfig::Loha(config::from_json_by_field(text)?)),
            Some("LOKR") => Ok(PeftConfig::Lokr(config::from_json_by_field(text)?)),
            Some("OFT") => Ok(PeftConfig::Oft(config::from_json_by_field(text)?)),
            Some("ADALORA") => Ok(PeftConfig::Adalora(config::from_json_by_field(text)?)),
            _ => Ok(PeftConfig::Lora(AdapterConfig::from_json(text)?)),
        }
    }

    /// The config as PEFT writes it.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            PeftConfig::Lora(c) => c.to_json(),
            PeftConfig::Ia3(c) => c.to_json(),
            PeftConfig::Prompt(c) => c.to_json(),
            PeftConfig::Adaption(c) => c.to_json(),
            PeftConfig::Vera(c) => c.to_json(),
            PeftConfig::Loha(c) => c.to_json(),
            PeftConfig::Lokr(c) => c.to_json(),
            PeftConfig::Oft(c) => c.to_json(),
            PeftConfig::Adalora(c) => c.to_json(),
        }
    }

    /// Refuse what Hone cannot honour. Errors are `field: problem`.
    pub fn validate(&self) -> anyhow::Result<()> {
        match self {
            PeftConfig::Lora(c) => c.validate(),
            PeftConfig::Ia3(c) => c.validate(),
            PeftConfig::Prompt(c) => c.validate(),
            PeftConfig::Adaption(c) => c.validate(),
            PeftConfig::Vera(c) => c.validate(),
            PeftConfig::Loha(c) => c.validate(),
            PeftConfig::Lokr(c) => c.validate(),
            PeftConfig::Oft(c) => c.validate(),
            PeftConfig::Adalora(c) => c.validate(),
        }
    }

    /// The LoRA config, unless the adapter is of another method.
    pub fn lora(&self) -> Option<&AdapterConfig> {
        match self {
            PeftConfig::Lora(c) => Some(c),
            _ => None,
        }
    }

    pub fn lora_mut(&mut self) -> Option<&mut AdapterConfig> {
        match self {
            PeftConfig::Lora(c) => Some(c),
            _ => None,
        }
    }

    /// Whether the method's update can be merged into the weights (prompt learning and
    /// LLaMA-Adapter add to what the model attends instead; PEFT cannot merge them either).
    pub fn is_mergeable(&self) -> bool {
        matches!(
            self,
            PeftConfig::Lora(_)
                | PeftConfig::Ia3(_)
                | PeftConfig::Vera(_)
                | PeftConfig::Loha(_)
                | PeftConfig::Lokr(_)
                | PeftConfig::Oft(_)
                | PeftConfig::Adalora(_)
        )
    }

    /// The method, as people call it: `LoRA`, `DoRA`, `IA3`, `prompt tuning`, `P-tuning`,
    /// `prefix tuning`, `LLaMA-Adapter`, `VeRA`, `LoHa`, `LoKr`, `OFT` or `AdaLoRA`.
    pub fn method(&self) -> &'static str {
        match self {
            PeftConfig::Lora(c) if c.use_dora => "DoRA",
            PeftConfig::Lora(_) => "LoRA",
            PeftConfig::Ia3(_) => "IA3",
            PeftConfig::Prompt(c) => c.peft_type.name(),
            PeftConfig::Adaption(_) => "LLaMA-Adapter",
            PeftConfig::Vera(_) => "VeRA",
            PeftConfig::Loha(_) => "LoHa",
            PeftConfig::Lokr(_) => "LoKr",
            PeftConfig::Oft(_) => "OFT",
            PeftConfig::Adalora(_) => "AdaLoRA",
        }
    }

    pub fn base_model_name_or_path(&self) -> Option<&str> {
        self.common().base_model_name_or_path.as_deref()
    }

    pub fn common_mut(&mut self) -> &mut PeftCommon {
        match self {
            PeftConfig::Lora(c) => &mut c.common,
            PeftConfig::Ia3(c) => &mut c.common,
            PeftConfig::Prompt(c) => &mut c.common,
            PeftConfig::Adaption(c) => &mut c.common,
            PeftConfig::Vera(c) => &mut c.common,
            PeftConfig::Loha(c) => &mut c.common,
            PeftConfig::Lokr(c) => &mut c.common,
            PeftConfig::Oft(c) => &mut c.common,
            PeftConfig::Adalora(c) => &mut c.common,
        }
    }

    /// The fields every method's config has.
    pub fn common(&self) -> &PeftCommon {
        match self {
            PeftConfig::Lora(c) => &c.common,
            PeftConfig::Ia3(c) => &c.common,
            PeftConfig::Prompt(c) => &c.common,
            PeftConfig::Adaption(c) => &c.common,
            PeftConfig::Vera(c) => &c.common,
            PeftConfig::Loha(c) => &c.common,
            PeftConfig::Lokr(c) => &c.common,
            PeftConfig::Oft(c) => &c.common,
            PeftConfig::Adalora(c) => &c.common,
        }
    }
}

/// An adapter: its config, the LoRA matrices or IA3 vectors of each target module, and the bias
/// tensors PEFT saves when a LoRA config's `bias` is `all` or `lora_only` (they replace the
/// model's).
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    pub config: PeftConfig,
    /// LoRA (and DoRA) updates by HF module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub modules: BTreeMap<String, LoraWeights>,
    /// IA3 vectors by HF module path.
    pub scales: BTreeMap<String, Ia3Vector>,
    /// By HF tensor name, e.g. `model.layers.0.self_attn.q_proj.bias`.
    pub biases: BTreeMap<String, Vec<f32>>,
    /// A prompt-learning adapter's virtual tokens, `[num_virtual_tokens, token_dim]` row-major
    /// (prefix tuning: their keys and values, `[num_virtual_tokens, num_layers · 2 · token_dim]`).
    pub prompt: Option<Vec<f32>>,
    /// LLaMA-Adapter's prompts and gates by attention module, e.g. `model.layers.7.self_attn`.
    pub adaption: BTreeMap<String, AdaptionPrompt>,
    /// VeRA's shared projections and per-module vectors (its `modules` are empty until
    /// [`Adapter::resolved`] fills them with the equivalent LoRA).
    pub vera: Option<VeraWeights>,
    /// LoHa's factors by HF module path (its `modules` are empty until [`Adapter::resolved`]
    /// fills them with the equivalent LoRA).
    pub loha: BTreeMap<String, LohaWeights>,
    /// LoKr's factors by HF module path (likewise resolved to LoRA).
    pub lokr: BTreeMap<String, LokrWeights>,
    /// OFT's rotations by HF module path (applied to the layer's input, never as LoRA).
    pub oft: BTreeMap<String, OftWeights>,
    /// AdaLoRA's kept triplets by HF module path (likewise resolved to LoRA).
    pub adalora: BTreeMap<String, AdaloraWeights>,
}

impl Adapter {
    /// The adapter with its VeRA, LoHa, LoKr or AdaLoRA update spelt out as LoRA modules (and their own
    /// tensors taken out), for a model whose tensors' shapes `dims` gives by HF name (itself,
    /// borrowed, for other adapters).
    pub fn resolved(
        &self,
        dims: impl Fn(&str) -> Option<Vec<usize>>,
    ) -> anyhow::Result<std::borrow::Cow<'_, Adapter>> {
        let factored = !(self.loha.is_empty() && self.lokr.is_empty() && self.adalora.is_empty());
        if self.vera.is_none() && !factored {
            return Ok(std::borrow::Cow::Borrowed(self));
        }
        // The copy keeps the update as LoRA only, so resolving it again borrows it.
        let mut resolved = self.clone();
        for (module, w) in std::mem::take(&mut resolved.loha) {
            resolved.modules.insert(module, w.as_lora());
        }
        for (module, w) in std::mem::take(&mut resolved.lokr) {
            resolved.modules.insert(module, w.as_lora());
        }
        // A layer the budget left no triplet adds nothing.
        for (module, w) in std::mem::take(&mut resolved.adalora) {
            if w.r > 0 {
                resolved.modules.insert(module, w.as_lora());
            }
        }
        if let Some(vera) = resolved.vera.take() {
            for module in vera.lambdas.keys() {
                let shape = dims(&format!("{module}.weight"))
                    .ok_or_else(|| anyhow::anyhow!("{module}: the model has no such layer"))?;
                let lora = vera.as_lora(module, shape[shape.len() - 1])?;
                resolved.modules.insert(module.clone(), lora);
            }
        }
        Ok(std::borrow::Cow::Owned(resolved))
    }

    /// The width of a row of `prompt_embeddings`: `token_dim` for virtual tokens, every layer's
    /// keys and values for prefix tuning, or what the values imply.
    pub fn prompt_width(&self) -> Option<usize> {
        let (PeftConfig::Prompt(config), Some(prompt)) = (&self.config, &self.prompt) else {
            return None;
        };
        let n = config.num_virtual_tokens().max(1);
        Some(config.row_width().unwrap_or(prompt.len() / n))
    }

    /// The prompt-learning method, for a prompt-learning adapter.
    pub fn prompt_method(&self) -> Option<PromptMethod> {
        match &self.config {
            PeftConfig::Prompt(c) => Some(c.peft_type),
            _ => None,
        }
    }
}
