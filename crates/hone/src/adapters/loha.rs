//! LoHa adapters in PEFT's format (`peft_type: "LOHA"`, `peft.LoHaConfig`): per targeted layer
//! `ΔW = (W1a · W1b) ⊙ (W2a · W2b) · alpha / r`, the Hadamard product of two rank-r products,
//! saved as `....hada_w1_a` `[out, r]`, `hada_w1_b` `[r, in]`, `hada_w2_a`, `hada_w2_b`. That
//! product is itself a LoRA update of rank r², `B' · A'` with `B'[:, (i, j)] = W1a[:, i] ⊙ W2a[:, j]`
//! and `A'[(i, j), :] = W1b[i, :] ⊙ W2b[j, :]` (a face-splitting product), which is how every
//! model command applies and merges it ([`LohaWeights::as_lora`]) and how training computes it.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::config::{peft_json, refuse_set, PeftCommon, PEFT_VERSION};
use super::targets::selects;
use super::{LoraWeights, TargetModules};

/// Each module's tensors' suffixes.
pub const KEYS: [&str; 4] = [".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b"];

/// A LoHa config: the fields Hone interprets typed, every other field kept as read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LohaConfig {
    #[serde(flatten)]
    pub common: PeftCommon,
    #[serde(default = "default_rank")]
    pub r: usize,
    #[serde(default = "default_rank_f64")]
    pub alpha: f64,
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_rank() -> usize {
    8
}

fn default_rank_f64() -> f64 {
    8.0
}

/// Fields that, when set, make the adapter compute something Hone does not, and why.
const UNSUPPORTED: [(&str, &str); 7] = [
    ("modules_to_save", "Hone trains and saves the adapter only"),
    ("layers_to_transform", "Hone targets modules by name only"),
    ("layers_pattern", "Hone targets modules by name only"),
    ("rank_pattern", "every module has rank r"),
    ("alpha_pattern", "every module has alpha"),
    (
        "rank_dropout",
        "PEFT draws it from torch's generator at every step",
    ),
    (
        "module_dropout",
        "PEFT draws it from torch's generator at every step",
    ),
];

impl LohaConfig {
    /// A new config as PEFT writes it.
    pub fn new(r: usize, alpha: f64, target_modules: Vec<String>) -> LohaConfig {
        let other = match json!({
            "auto_mapping": null, "peft_version": PEFT_VERSION, "alpha_pattern": {}, "init_weights": true,
            "layers_pattern": null, "layers_to_transform": null, "module_dropout": 0.0, "modules_to_save": null,
            "rank_dropout": 0.0, "rank_pattern": {}, "use_effective_conv2d": false,
        }) {
            Value::Object(m) => m,
            _ => unreachable!("a JSON object literal"),
        };
        LohaConfig {
            common: PeftCommon::causal_lm(),
            r,
            alpha,
            target_modules: Some(TargetModules::Names(target_modules)),
            exclude_modules: None,
            other,
        }
    }

    /// The config as PEFT writes it.
    pub fn to_json(&self) -> Value {
        let typed = json!({
            "peft_type": "LOHA",
            "r": self.r,
            "alpha": self.alpha,
            "target_modules": self.target_modules,
            "exclude_modules": self.exclude_modules,
        });
        peft_json(&self.other, &self.common, typed)
    }

    /// Whether the config targets module `module` (PEFT's rules; unset: q_proj, v_proj).
    pub fn selects(&self, module: &str) -> Result<bool> {
        let (targets, exclude) = (self.target_modules.as_ref(), self.exclude_modules.as_ref());
        selects(targets, exclude, module)
    }

    /// The update's scale, `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Refuse what Hone cannot honour. Errors are `field: problem`.
    pub fn validate(&self) -> Result<()> {
        refuse_set(&self.other, &UNSUPPORTED)?;
        if self.r == 0 {
            bail!("r: must be positive");
        }
        if !self.alpha.is_finite() {
            bail!("alpha: must be a finite number");
        }
        self.common.validate()?;
        Ok(())
    }
}

/// One module's LoHa factors: `w1a`, `w2a` `[out, r]`, `w1b`, `w2b` `[r, in]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LohaWeights {
    pub w1a: Vec<f32>,
    pub w1b: Vec<f32>,
    pub w2a: Vec<f32>,
    pub w2b: Vec<f32>,
    pub r: usize,
    pub in_features: usize,
    pub out_features: usize,
    pub scale: f64,
}

impl LohaWeights {
    /// The update as LoRA of rank r²: `B'` `[out, r²]` and `A'` `[r², in]` (see the module
    /// comment), the scale kept.
    pub fn as_lora(&self) -> LoraWeights {
        let (a, b) = face_split(
            (&self.w1a, &self.w2a, &self.w1b, &self.w2b),
            self.r,
            (self.out_features, self.in_features),
        );
        LoraWeights {
            a,
            b,
            r: self.r * self.r,
            in_features: self.in_features,
            out_features: self.out_features,
            scale: self.scale,
            magnitude: None,
        }
    }
}

/// `(A', B')` of rank r² from LoHa's factors: `B'[o, i·r + j] = w1a[o, i] · w2a[o, j]`,
/// `A'[i·r + j, k] = w1b[i, k] · w2b[j, k]`.
pub fn face_split(
    (w1a, w2a, w1b, w2b): (&[f32], &[f32], &[f32], &[f32]),
    r: usize,
    (out, inp): (usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let mut b = Vec::with_capacity(out * r * r);
    for o in 0..out {
        let (x, y) = (&w1a[o * r..(o + 1) * r], &w2a[o * r..(o + 1) * r]);
        b.extend(x.iter().flat_map(|&x| y.iter().map(move |&y| x * y)));
    }
    let mut a = Vec::with_capacity(r * r * inp);
    for i in 0..r {
        for j in 0..r {
            let (x, y) = (&w1b[i * inp..(i + 1) * inp], &w2b[j * inp..(j + 1) * inp]);
            a.extend(x.iter().zip(y).map(|(x, y)| x * y));
        }
    }
    (a, b)
}
