//! (IA)³ adapters in PEFT's format (`peft.IA3Config`, `peft_type: "IA3"`): one trained vector per
//! targeted Linear layer, `ia3_l`, that scales the layer's output features (`[out, 1]`; the bias
//! is scaled with them) or, for the `feedforward_modules`, its input features (`[1, in]`, before
//! the product). Merged, W's rows (and its bias) or columns are multiplied by the vector, as PEFT's
//! `merge_and_unload`. The vectors start at 1, which changes nothing.

use anyhow::{bail, Result};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::config::{is_set, peft_json, PeftCommon, TargetModules, PEFT_VERSION};
use super::targets::Selector;
use crate::model::ModelConfig;

/// PEFT's `IA3Config`: the fields Hone interprets typed, every other field kept as read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Ia3Config {
    #[serde(flatten)]
    pub common: PeftCommon,
    /// None means PEFT's default for the model's family ([`default_modules`]).
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    /// The targets whose input, not output, is scaled.
    #[serde(default)]
    pub feedforward_modules: Option<TargetModules>,
    #[serde(default = "yes")]
    pub init_ia3_weights: bool,
    /// Every other field, as read (or PEFT's defaults for a new config).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn yes() -> bool {
    true
}

/// PEFT's `TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING` and `..._FEEDFORWARD_MODULES_MAPPING`
/// for the families Hone runs: (model_type, targets, feedforward targets).
const DEFAULTS: [(&str, &[&str], &[&str]); 7] = [
    ("llama", &["k_proj", "v_proj", "down_proj"], &["down_proj"]),
    (
        "mistral",
        &["k_proj", "v_proj", "down_proj"],
        &["down_proj"],
    ),
    ("gemma", &["q_proj", "v_proj", "down_proj"], &["down_proj"]),
    ("gemma2", &["q_proj", "v_proj", "down_proj"], &["down_proj"]),
    (
        "gemma3_text",
        &["q_proj", "v_proj", "down_proj"],
        &["down_proj"],
    ),
    ("qwen2", &["q_proj", "v_proj", "down_proj"], &["down_proj"]),
    ("qwen3", &["q_proj", "v_proj", "down_proj"], &["down_proj"]),
];

/// PEFT's default (targets, feedforward targets) for the model's family; None where PEFT has none
/// (it then asks for `target_modules`).
pub fn default_modules(cfg: &ModelConfig) -> Option<(Vec<String>, Vec<String>)> {
    let model_type = cfg.architecture.model_type();
    let (_, targets, feedforward) = DEFAULTS.iter().find(|d| d.0 == model_type)?;
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
    Some((names(targets), names(feedforward)))
}

/// Why a feedforward module that shares its input product with other modules is refused: Hone
/// computes the layers that read the same input (q|k|v, gate|up) as one product, so one of them
/// cannot have its own scaled input.
pub const SHARED_INPUT_SCALING: &str =
    "IA3 input scaling (feedforward_modules) is not supported on a layer that \
     shares its input product with others";

/// Fields that make an adapter compute something Hone does not.
const UNSUPPORTED: [(&str, &str); 2] = [
    (
        "fan_in_fan_out",
        "it is for GPT-2 style Conv1D layers; Llama layers store weights [out, in]",
    ),
    (
        "modules_to_save",
        "adapters that carry full copies of modules are not supported",
    ),
];

impl Ia3Config {
    /// An IA3 config for causal LM fine-tuning, with PEFT's defaults for everything else.
    pub fn new(targets: Vec<String>, feedforward: Vec<String>) -> Ia3Config {
        let other = json!({
            "auto_mapping": null, "fan_in_fan_out": false, "modules_to_save": null,
            "peft_version": PEFT_VERSION,
        });
        Ia3Config {
            common: PeftCommon::causal_lm(),
            target_modules: Some(TargetModules::Names(targets)),
            exclude_modules: None,
            feedforward_modules: Some(TargetModules::Names(feedforward)),
            init_ia3_weights: true,
            other: match other {
                Value::Object(m) => m,
                _ => unreachable!("a JSON object literal"),
            },
        }
    }

    /// The config as PEFT writes it.
    pub fn to_json(&self) -> Value {
        let typed = json!({
            "peft_type": "IA3",
            "target_modules": self.target_modules,
            "exclude_modules": self.exclude_modules,
            "feedforward_modules": self.feedforward_modules,
            "init_ia3_weights": self.init_ia3_weights,
        });
        peft_json(&self.other, &self.common, typed)
    }

    /// Refuse what Hone cannot honour. Errors are `field: problem`.
    pub fn validate(&self) -> Result<()> {
        for (field, why) in UNSUPPORTED {
            if let Some(value) = self.other.get(field).filter(|v| is_set(v)) {
                bail!("{field}: {value} is not supported ({why})");
            }
        }
        if self.target_modules.is_none() {
            bail!("target_modules: required (PEFT fills it in when it saves an adapter)");
        }
        if self.feedforward_modules.is_none() {
            bail!("feedforward_modules: required (PEFT fills it in when it saves an adapter)");
        }
        self.matcher()?;
        Ok(())
    }

    /// Which modules the config targets, and which of them scale their input.
    pub fn matcher(&self) -> Result<Ia3Matcher> {
        let feedforward = match &self.feedforward_modules {
            Some(TargetModules::Regex(s)) => Feedforward::Regex(Selector::new(
                Some(&TargetModules::Regex(s.clone())),
                "feedforward_modules",
            )?),
            Some(TargetModules::Names(names)) => Feedforward::Suffixes(names.clone()),
            None => Feedforward::Suffixes(Vec::new()),
        };
        Ok(Ia3Matcher {
            targets: Selector::new(self.target_modules.as_ref(), "target_modules")?,
            exclude: self
                .exclude_modules
                .as_ref()
                .map(|e| Selector::new(Some(e), "exclude_modules"))
                .transpose()?,
            feedforward,
        })
    }
}

/// `feedforward_modules` as PEFT's `_check_target_module_feedforward` reads it: a regex matching
/// the whole path, or names the path merely ends with.
enum Feedforward {
    Regex(Selector),
    Suffixes(Vec<String>),
}

/// An IA3 config's module selection, compiled.
pub struct Ia3Matcher {
    targets: Selector,
    exclude: Option<Selector>,
    feedforward: Feedforward,
}

impl Ia3Matcher {
    /// Whether PEFT puts an IA3 vector on the module at this HF path.
    pub fn is_target(&self, module: &str) -> Result<bool> {
        if let Some(ex) = &self.exclude {
            if ex.matches(module)? {
                return Ok(false);
            }
        }
        self.targets.matches(module)
    }

    /// Whether the targeted module scales its input (else its output).
    pub fn is_feedforward(&self, module: &str) -> Result<bool> {
        match &self.feedforward {
            Feedforward::Regex(re) => re.matches(module),
            Feedforward::Suffixes(names) => Ok(names.iter().any(|n| module.ends_with(n.as_str()))),
        }
    }
}

/// One module's IA3 vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Ia3Vector {
    pub values: Vec<f32>,
    /// Scales the input features (`[1, in]`), else the output features (`[out, 1]`).
    pub feedforward: bool,
}

impl Ia3Vector {
    /// The shape PEFT stores `ia3_l` in.
    pub fn shape(&self) -> [usize; 2] {
        match self.feedforward {
            true => [1, self.values.len()],
            false => [self.values.len(), 1],
        }
    }

    /// Multiplies a row-major `[out, in]` weight (and, scaling outputs, its bias) by the vector.
    pub fn merge_into(&self, weight: &mut [f32], bias: Option<&mut [f32]>) {
        let l = &self.values;
        if self.feedforward {
            for row in weight.chunks_exact_mut(l.len()) {
                row.iter_mut().zip(l).for_each(|(w, s)| *w *= s);
            }
            return;
        }
        let cols = weight.len() / l.len();
        for (row, s) in weight.chunks_exact_mut(cols).zip(l) {
            row.iter_mut().for_each(|w| *w *= s);
        }
        if let Some(bias) = bias {
            bias.iter_mut().zip(l).for_each(|(b, s)| *b *= s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feedforward_names_match_as_suffixes_and_targets_as_path_parts() {
        let mut cfg = Ia3Config::new(
            vec!["k_proj".into(), "down_proj".into()],
            vec!["down_proj".into()],
        );
        cfg.exclude_modules = Some(TargetModules::Names(vec![
            "layers.1.self_attn.k_proj".into()
        ]));
        let m = cfg.matcher().unwrap();
        assert!(m.is_target("model.layers.0.self_attn.k_proj").unwrap());
        assert!(!m.is_target("model.layers.1.self_attn.k_proj").unwrap());
        assert!(!m.is_target("model.layers.0.self_attn.q_proj").unwrap());
        assert!(m.is_feedforward("model.layers.0.mlp.down_proj").unwrap());
        assert!(!m.is_feedforward("model.layers.0.self_attn.k_proj").unwrap());
    }

    #[test]
    fn merging_scales_rows_and_bias_or_columns() {
        let out = Ia3Vector {
            values: vec![2.0, 3.0],
            feedforward: false,
        };
        let (mut w, mut b) = (vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0], vec![1.0, 1.0]);
        out.merge_into(&mut w, Some(&mut b));
        assert_eq!((w, b), (vec![2.0, 2.0, 2.0, 3.0, 3.0, 3.0], vec![2.0, 3.0]));
        let input = Ia3Vector {
            values: vec![2.0, 3.0, 4.0],
            feedforward: true,
        };
        let mut w = vec![1.0; 6];
        input.merge_into(&mut w, None);
        assert_eq!(w, vec![2.0, 3.0, 4.0, 2.0, 3.0, 4.0]);
        assert_eq!(input.shape(), [1, 3]);
    }
}
