//! VeRA adapters in PEFT's format (`peft_type: "VERA"`, `peft.VeraConfig`): one pair of frozen
//! random matrices shared by every targeted layer, `vera_A` `[r, max in]` and `vera_B`
//! `[max out, r]` (saved once, as `base_model.vera_A` / `base_model.vera_B`), and per layer two
//! trained vectors, `vera_lambda_d` `[r]` and `vera_lambda_b` `[out]`:
//! `ΔW = diag(λ_b) · B[:out] · diag(λ_d) · A[:, :in]`. That is a LoRA update of rank r with
//! `A' = diag(λ_d) · A[:, :in]`, `B' = diag(λ_b) · B[:out]` and scale 1, which is how every
//! model command applies and merges it ([`VeraWeights::as_lora`]).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::config::{peft_json, PeftCommon, PEFT_VERSION};
use super::targets::Selector;
use super::{LoraWeights, TargetModules};

/// The shared projections' keys, and each layer's vectors' suffixes.
pub const SHARED_A: &str = "base_model.vera_A";
pub const SHARED_B: &str = "base_model.vera_B";
pub const LAMBDA_D: &str = ".vera_lambda_d";
pub const LAMBDA_B: &str = ".vera_lambda_b";

/// A VeRA config: the fields Hone interprets typed, every other field kept as read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VeraConfig {
    #[serde(flatten)]
    pub common: PeftCommon,
    #[serde(default = "default_rank")]
    pub r: usize,
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    #[serde(default = "default_true")]
    pub save_projection: bool,
    #[serde(default)]
    pub vera_dropout: f64,
    #[serde(default = "default_d_initial")]
    pub d_initial: f64,
    #[serde(default)]
    pub projection_prng_key: u64,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_rank() -> usize {
    256
}

fn default_true() -> bool {
    true
}

fn default_d_initial() -> f64 {
    0.1
}

/// Fields that, when set, make the adapter compute something Hone does not, and why.
const UNSUPPORTED: [(&str, &str); 4] = [
    ("modules_to_save", "Hone trains and saves the vectors only"),
    ("fan_in_fan_out", "Hone's layers are nn.Linear"),
    ("layers_to_transform", "Hone targets modules by name only"),
    ("layers_pattern", "Hone targets modules by name only"),
];

impl VeraConfig {
    /// A new config as PEFT writes it.
    pub fn new(r: usize, target_modules: Vec<String>, vera_dropout: f64) -> VeraConfig {
        let other = match json!({
            "auto_mapping": null, "peft_version": PEFT_VERSION, "bias": "none", "fan_in_fan_out": false,
            "init_weights": true, "layers_pattern": null, "layers_to_transform": null, "modules_to_save": null,
        }) {
            Value::Object(m) => m,
            _ => unreachable!("a JSON object literal"),
        };
        VeraConfig {
            common: PeftCommon::causal_lm(),
            r,
            target_modules: Some(TargetModules::Names(target_modules)),
            save_projection: true,
            vera_dropout,
            d_initial: 0.1,
            projection_prng_key: 0,
            other,
        }
    }

    /// The config as PEFT writes it.
    pub fn to_json(&self) -> Value {
        let typed = json!({
            "peft_type": "VERA",
            "r": self.r,
            "target_modules": self.target_modules,
            "save_projection": self.save_projection,
            "vera_dropout": self.vera_dropout,
            "d_initial": self.d_initial,
            "projection_prng_key": self.projection_prng_key,
        });
        peft_json(&self.other, &self.common, typed)
    }

    /// Whether `target_modules` selects module `module` (PEFT's rules; unset: q_proj, v_proj).
    pub fn selects(&self, module: &str) -> Result<bool> {
        Selector::new(self.target_modules.as_ref(), "target_modules")?.matches(module)
    }

    /// Refuse what Hone cannot honour. Errors are `field: problem`.
    pub fn validate(&self) -> Result<()> {
        for (field, why) in UNSUPPORTED {
            if let Some(value) = self.other.get(field).filter(|v| super::config::is_set(v)) {
                bail!("{field}: {value} is not supported ({why})");
            }
        }
        if let Some(bias) = self.other.get("bias").and_then(Value::as_str) {
            if bias != "none" {
                bail!("bias: {bias:?} is not supported (Hone's VeRA trains the vectors only)");
            }
        }
        if self.r == 0 {
            bail!("r: must be positive");
        }
        if !self.save_projection {
            bail!(
                "save_projection: false is not supported (the shared vera_A and vera_B would have to be drawn again \
                 from torch's generator with projection_prng_key; save them, PEFT's default)"
            );
        }
        self.common.validate()?;
        Ok(())
    }
}

/// A VeRA adapter's tensors: the shared projections and each module's vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct VeraWeights {
    /// `[r, max_in]`.
    pub a: Vec<f32>,
    /// `[max_out, r]`.
    pub b: Vec<f32>,
    pub r: usize,
    pub max_in: usize,
    pub max_out: usize,
    /// By HF module path: `(λ_d [r], λ_b [out])`.
    pub lambdas: BTreeMap<String, (Vec<f32>, Vec<f32>)>,
}

impl VeraWeights {
    /// Module `module`'s update as LoRA (`in_features` wide), or an error naming what does not
    /// fit.
    pub fn as_lora(&self, module: &str, in_features: usize) -> Result<LoraWeights> {
        let Some((d, b_scale)) = self.lambdas.get(module) else {
            bail!("{module}: no VeRA vectors");
        };
        let (r, out) = (self.r, b_scale.len());
        if d.len() != r || in_features > self.max_in || out > self.max_out {
            bail!(
                "{module}: vera_lambda_d [{}] and vera_lambda_b [{out}] do not fit vera_A [{r}, {}] and vera_B [{}, {r}] \
                 for a layer of {in_features} inputs",
                d.len(),
                self.max_in,
                self.max_out
            );
        }
        let a = (0..r)
            .flat_map(|i| {
                self.a[i * self.max_in..][..in_features]
                    .iter()
                    .map(move |v| v * d[i])
            })
            .collect();
        let b = (0..out)
            .flat_map(|o| {
                self.b[o * r..(o + 1) * r]
                    .iter()
                    .map(move |v| v * b_scale[o])
            })
            .collect();
        Ok(LoraWeights {
            a,
            b,
            r,
            in_features,
            out_features: out,
            scale: 1.0,
            magnitude: None,
        })
    }
}
