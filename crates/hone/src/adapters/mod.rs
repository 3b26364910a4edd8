//! LoRA adapters in Hugging Face PEFT's directory format: `adapter_config.json` plus
//! `adapter_model.safetensors`, read, written and merged into a model's weights, so adapters move
//! freely between Hone and PEFT (and the tools built on it).
//!
//! A LoRA adapter adds `scale · B · A` to a linear layer's weight `W [out, in]`, with
//! `A [r, in]`, `B [out, r]` and `scale = alpha / r` (or `alpha / sqrt(r)` for rank-stabilised LoRA).
//! A DoRA adapter (`use_dora`) also rescales each output row of the result to a learned magnitude
//! ([`dora`]).

pub mod config;
pub mod dora;
pub mod merge;
pub mod peft;
pub mod targets;
mod write;

use std::collections::BTreeMap;

pub use config::{AdapterConfig, Bias, InitLoraWeights, OneOrMany, TargetModules};
pub use merge::merge;
pub use peft::read_adapter;
pub use targets::{ModuleMatcher, Patterns};
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

/// A LoRA adapter: its config, the LoRA matrices of each target module, and the bias tensors PEFT
/// saves when the config's `bias` is `all` or `lora_only` (they replace the model's).
#[derive(Debug, Clone, PartialEq)]
pub struct Adapter {
    pub config: AdapterConfig,
    /// By HF module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub modules: BTreeMap<String, LoraWeights>,
    /// By HF tensor name, e.g. `model.layers.0.self_attn.q_proj.bias`.
    pub biases: BTreeMap<String, Vec<f32>>,
}

impl Adapter {
    /// Checks the modules against the config: each is a target of it, with the rank and scale the
    /// config gives it and matrices of the stated shapes. Errors name the module.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        let matcher = self.config.matcher()?;
        for (module, w) in &self.modules {
            if !matcher.is_target(module)? {
                bail!(
                    "{module}: has LoRA weights but target_modules ({}) does not select it",
                    self.config.target_modules_text()
                );
            }
            let r = matcher.rank(module)?;
            if w.r != r {
                bail!(
                    "{module}: lora_A has rank {} but the config gives rank {r} (r / rank_pattern)",
                    w.r
                );
            }
            if w.a.len() != w.r * w.in_features || w.b.len() != w.out_features * w.r {
                bail!(
                    "{module}: lora_A has {} values and lora_B {}, not [{r}, {}] and [{}, {r}]",
                    w.a.len(),
                    w.b.len(),
                    w.in_features,
                    w.out_features
                );
            }
            match (&w.magnitude, self.config.use_dora) {
                (None, true) => bail!("{module}: use_dora is set but the module has no lora_magnitude_vector"),
                (Some(_), false) => bail!("{module}: has a lora_magnitude_vector (DoRA) but use_dora is not set"),
                (Some(m), true) if m.len() != w.out_features => bail!(
                    "{module}: lora_magnitude_vector has {} values, not one per output feature ({})",
                    m.len(),
                    w.out_features
                ),
                _ => {}
            }
            let scale = matcher.scale(module)?;
            if (w.scale - scale).abs() > 1e-9 * scale.abs().max(1.0) {
                bail!(
                    "{module}: scale {} differs from the config's {scale} (lora_alpha, alpha_pattern, use_rslora)",
                    w.scale
                );
            }
        }
        if !self.biases.is_empty() && self.config.bias == Bias::None {
            bail!("the adapter has bias tensors but its config says bias \"none\"");
        }
        Ok(())
    }
}
