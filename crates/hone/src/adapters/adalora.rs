//! AdaLoRA adapters in PEFT's format (`peft_type: "ADALORA"`, `peft.AdaLoraConfig`): per targeted
//! layer an SVD-shaped update `ΔW = B · diag(E) · A · alpha / (init_r + 1e-5)`, saved as
//! `....lora_A` `[k, in]`, `....lora_E` `[k, 1]` and `....lora_B` `[out, k]` (no `.weight`), k the
//! rank the budget left the layer: training masks the least important triplets (E set to 0) and
//! `rank_pattern` records which of the `init_r` rows each layer kept; PEFT saves only those rows.
//! The update is a LoRA with `A' = diag(E)·A` ([`AdaloraWeights::as_lora`]), which is how every
//! model command applies and merges it.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::config::{is_set, peft_json, refuse_set, PeftCommon, PEFT_VERSION};
use super::targets::selects;
use super::{LoraWeights, TargetModules};

/// Each module's tensors' suffixes: A, E, B.
pub const KEYS: [&str; 3] = [".lora_A", ".lora_E", ".lora_B"];

/// PEFT's `AdaLoraConfig`: the fields Hone interprets typed, every other field kept as read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AdaloraConfig {
    #[serde(flatten)]
    pub common: PeftCommon,
    #[serde(default = "eight")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    /// Each layer's starting rank.
    #[serde(default = "twelve")]
    pub init_r: usize,
    /// The average rank the budget ends at.
    #[serde(default = "default_target_r")]
    pub target_r: usize,
    /// Steps before the budget starts to shrink, and steps after it stops.
    #[serde(default)]
    pub tinit: u64,
    #[serde(default)]
    pub tfinal: u64,
    /// Steps between two reallocations.
    #[serde(default = "one", rename = "deltaT")]
    pub delta_t: u64,
    /// The importance EMAs' factors.
    #[serde(default = "ema")]
    pub beta1: f64,
    #[serde(default = "ema")]
    pub beta2: f64,
    #[serde(default = "half")]
    pub orth_reg_weight: f64,
    #[serde(default)]
    pub total_step: Option<u64>,
    /// Which of the `init_r` rows each layer kept, by `<module>.lora_E` (None: all).
    #[serde(default)]
    pub rank_pattern: Option<BTreeMap<String, Vec<bool>>>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn eight() -> f64 {
    8.0
}
fn twelve() -> usize {
    12
}
fn default_target_r() -> usize {
    8
}
fn one() -> u64 {
    1
}
fn ema() -> f64 {
    0.85
}
fn half() -> f64 {
    0.5
}

/// Fields that, when set, make the adapter compute something Hone does not, and why.
const UNSUPPORTED: [(&str, &str); 7] = [
    ("modules_to_save", "Hone trains and saves the adapter only"),
    ("layers_to_transform", "Hone targets modules by name only"),
    ("layers_pattern", "Hone targets modules by name only"),
    (
        "fan_in_fan_out",
        "it is for GPT-2 style Conv1D layers; Llama layers store weights [out, in]",
    ),
    ("use_dora", "PEFT's AdaLoRA refuses DoRA too"),
    ("alpha_pattern", "every module has lora_alpha"),
    ("lora_bias", "a bias on lora_B is not supported"),
];

/// One module's triplets: `a` `[k, in]`, `e` `[k]`, `b` `[out, k]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaloraWeights {
    pub a: Vec<f32>,
    pub e: Vec<f32>,
    pub b: Vec<f32>,
    pub r: usize,
    pub in_features: usize,
    pub out_features: usize,
    /// `alpha / (init_r + 1e-5)`: PEFT divides by the starting rank however many rows are kept.
    pub scale: f64,
}

impl AdaloraConfig {
    /// A new config as PEFT writes it (`total_step` is the run's).
    pub fn new(init_r: usize, target_r: usize, alpha: f64, targets: Vec<String>) -> AdaloraConfig {
        let other = match json!({
            "alora_invocation_tokens": null, "alpha_pattern": {}, "arrow_config": null, "auto_mapping": null,
            "bias": "none", "corda_config": null, "ensure_weight_tying": false, "eva_config": null,
            "fan_in_fan_out": false, "init_lora_weights": true, "kasa_config": null, "layer_replication": null,
            "layers_pattern": null, "layers_to_transform": null, "loftq_config": {}, "lora_bias": false,
            "lora_ga_config": null, "megatron_config": null, "megatron_core": "megatron.core",
            "modules_to_save": null, "monteclora_config": null, "peft_version": PEFT_VERSION, "qalora_group_size": 16,
            "r": 8, "target_parameters": null, "trainable_token_indices": null, "use_bdlora": null,
            "use_dora": false, "use_qalora": false, "use_rslora": false, "velora_config": null,
        }) {
            Value::Object(m) => m,
            _ => unreachable!("a JSON object literal"),
        };
        AdaloraConfig {
            common: PeftCommon::causal_lm(),
            lora_alpha: alpha,
            lora_dropout: 0.0,
            target_modules: Some(TargetModules::Names(targets)),
            exclude_modules: None,
            init_r,
            target_r,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            beta1: ema(),
            beta2: ema(),
            orth_reg_weight: half(),
            total_step: None,
            rank_pattern: None,
            other,
        }
    }

    /// The config as PEFT writes it.
    pub fn to_json(&self) -> Value {
        let typed = json!({
            "peft_type": "ADALORA",
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "exclude_modules": self.exclude_modules,
            "init_r": self.init_r,
            "target_r": self.target_r,
            "tinit": self.tinit,
            "tfinal": self.tfinal,
            "deltaT": self.delta_t,
            "beta1": self.beta1,
            "beta2": self.beta2,
            "orth_reg_weight": self.orth_reg_weight,
            "total_step": self.total_step,
            "rank_pattern": self.rank_pattern,
        });
        peft_json(&self.other, &self.common, typed)
    }

    /// Whether the config targets module `module` (PEFT's rules; unset: q_proj, v_proj).
    pub fn selects(&self, module: &str) -> Result<bool> {
        let (targets, exclude) = (self.target_modules.as_ref(), self.exclude_modules.as_ref());
        selects(targets, exclude, module)
    }

    /// What `B · diag(E) · A` is multiplied by: `lora_alpha` (or `init_r` when it is not
    /// positive) over `init_r + 1e-5`.
    pub fn scale(&self) -> f64 {
        let scaling = match self.lora_alpha {
            a if a > 0.0 => a,
            _ => self.init_r as f64,
        };
        scaling / (self.init_r as f64 + 1e-5)
    }

    /// The rows module `module` kept, by `rank_pattern` (None: every row).
    pub fn kept(&self, module: &str) -> Option<&[bool]> {
        let key = format!("{module}{}", KEYS[1]);
        self.rank_pattern.as_ref()?.get(&key).map(Vec::as_slice)
    }

    /// Refuse what Hone cannot honour. Errors are `field: problem`.
    pub fn validate(&self) -> Result<()> {
        refuse_set(&self.other, &UNSUPPORTED)?;
        match self.other.get("bias").and_then(Value::as_str) {
            None | Some("none") => {}
            Some(b) => bail!("bias: {b:?} is not supported (AdaLoRA adapters that train biases)"),
        }
        if let Some(v) = self.other.get("use_rslora").filter(|v| is_set(v)) {
            bail!("use_rslora: {v} is not supported (PEFT's AdaLoRA ignores it; set it false)");
        }
        if self.init_r == 0 {
            bail!("init_r: must be positive");
        }
        if !self.lora_alpha.is_finite() {
            bail!("lora_alpha: must be a finite number");
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            bail!("lora_dropout: must be in [0, 1)");
        }
        for (name, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(beta > 0.0 && beta < 1.0) {
                bail!("{name}: must be in (0, 1), as PEFT's RankAllocator asserts");
            }
        }
        if self.orth_reg_weight.is_nan() || self.orth_reg_weight < 0.0 {
            bail!("orth_reg_weight: must be at least 0");
        }
        if self.delta_t == 0 {
            bail!("deltaT: must be positive");
        }
        if let Some(key) = self
            .rank_pattern
            .iter()
            .flatten()
            .find_map(|(k, v)| (v.len() != self.init_r).then_some(k))
        {
            bail!(
                "rank_pattern: {key:?} has not init_r ({}) entries",
                self.init_r
            );
        }
        self.common.validate()?;
        Ok(())
    }

    /// PEFT's training schedule check: a budget phase must remain between `tinit` and
    /// `total_step - tfinal`. Errors are `field: problem`.
    pub fn check_schedule(&self, total_step: u64) -> Result<()> {
        if self.tinit >= total_step.saturating_sub(self.tfinal) {
            bail!(
                "tinit: {} leaves no steps to reallocate ranks in ({total_step} steps, tfinal {}): decrease tinit or \
                 tfinal, or train longer",
                self.tinit,
                self.tfinal
            );
        }
        Ok(())
    }
}

impl AdaloraWeights {
    /// How many values the triplets hold.
    pub fn parameters(&self) -> usize {
        self.a.len() + self.e.len() + self.b.len()
    }

    /// The update as LoRA of rank k: `A' = diag(E)·A`, B, the scale kept.
    pub fn as_lora(&self) -> LoraWeights {
        let a = self
            .a
            .chunks_exact(self.in_features)
            .zip(&self.e)
            .flat_map(|(row, &e)| row.iter().map(move |&v| v * e))
            .collect();
        LoraWeights {
            a,
            b: self.b.clone(),
            r: self.r,
            in_features: self.in_features,
            out_features: self.out_features,
            scale: self.scale,
            magnitude: None,
        }
    }

    /// Only the rows `kept` marks: `A` and `E` rows, `B` columns (PEFT's saved form).
    pub fn keeping(&self, kept: &[bool]) -> AdaloraWeights {
        let rows = |m: &[f32], width: usize| -> Vec<f32> {
            m.chunks_exact(width)
                .zip(kept)
                .filter(|(_, &k)| k)
                .flat_map(|(r, _)| r.iter().copied())
                .collect()
        };
        let b = self
            .b
            .chunks_exact(self.r)
            .flat_map(|row| row.iter().zip(kept).filter(|(_, &k)| k).map(|(v, _)| *v))
            .collect();
        AdaloraWeights {
            a: rows(&self.a, self.in_features),
            e: rows(&self.e, 1),
            b,
            r: kept.iter().filter(|&&k| k).count(),
            ..*self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_is_a_lora_of_the_kept_rows() {
        let w = AdaloraWeights {
            a: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            e: vec![2.0, 0.0, -1.0],
            b: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            r: 3,
            in_features: 2,
            out_features: 2,
            scale: 0.5,
        };
        assert_eq!(w.as_lora().a, vec![2.0, 4.0, 0.0, 0.0, -5.0, -6.0]);
        let kept = w.keeping(&[true, false, true]);
        assert_eq!(
            (kept.a, kept.e, kept.b, kept.r),
            (
                vec![1.0, 2.0, 5.0, 6.0],
                vec![2.0, -1.0],
                vec![1.0, 3.0, 4.0, 6.0],
                2
            )
        );
    }

    #[test]
    fn the_scale_divides_by_the_starting_rank() {
        let c = AdaloraConfig::new(12, 8, 32.0, vec!["q_proj".into()]);
        assert!((c.scale() - 32.0 / (12.0 + 1e-5)).abs() < 1e-12);
        let mut zero = c.clone();
        zero.lora_alpha = 0.0;
        assert!((zero.scale() - 12.0 / (12.0 + 1e-5)).abs() < 1e-12);
        assert!(c.check_schedule(100).is_ok());
        let mut late = c;
        late.tinit = 60;
        late.tfinal = 40;
        assert!(late
            .check_schedule(100)
            .unwrap_err()
            .to_string()
            .starts_with("tinit: "));
    }
}
