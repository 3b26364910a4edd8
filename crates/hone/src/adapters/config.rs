//! PEFT's `adapter_config.json` for LoRA (`peft.LoraConfig`): field names and defaults as in PEFT,
//! the fields Hone interprets typed, every other field kept as read so that writing the config
//! back loses nothing. PEFT adds fields every release, so unknown fields are accepted; fields whose
//! value changes what the adapter computes in ways Hone does not implement (`lora_bias`,
//! `modules_to_save`, ...) are refused by [`AdapterConfig::validate`], naming the field.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::targets::{ModuleMatcher, Patterns};
use anyhow::{bail, Result};

/// `target_modules` / `exclude_modules`: module names (exact, or a suffix after a `.`), or one
/// regex that must match the whole module path. The string `all-linear` means every linear layer
/// but the output head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetModules {
    Names(Vec<String>),
    Regex(String),
}

/// A field PEFT accepts as one value or a list of them (`layers_to_transform`, `layers_pattern`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn as_slice(&self) -> &[T] {
        match self {
            OneOrMany::One(x) => std::slice::from_ref(x),
            OneOrMany::Many(v) => v,
        }
    }
}

/// Which biases are trained and saved with the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bias {
    #[default]
    None,
    All,
    LoraOnly,
}

/// `init_lora_weights`: `true`, `false` or the name of an initialisation method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InitLoraWeights {
    Default(bool),
    Method(String),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AdapterConfig {
    #[serde(default = "lora")]
    pub peft_type: String,
    #[serde(flatten)]
    pub common: PeftCommon,
    #[serde(default = "default_r")]
    pub r: usize,
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// None means PEFT's default for Llama-family models, `["q_proj", "v_proj"]`.
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    #[serde(default)]
    pub exclude_modules: Option<TargetModules>,
    #[serde(default)]
    pub bias: Bias,
    #[serde(default)]
    pub use_rslora: bool,
    /// DoRA: each adapted layer also learns a magnitude per output row (`lora_magnitude_vector`).
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default = "default_init")]
    pub init_lora_weights: InitLoraWeights,
    #[serde(default)]
    pub layers_to_transform: Option<OneOrMany<usize>>,
    #[serde(default)]
    pub layers_pattern: Option<OneOrMany<String>>,
    /// Per-module ranks, by PEFT pattern key (first matching key wins, in file order).
    #[serde(default)]
    pub rank_pattern: Patterns<usize>,
    /// Per-module alphas, as `rank_pattern`.
    #[serde(default)]
    pub alpha_pattern: Patterns<f64>,
    /// Every other field, as read (or PEFT's defaults for a new config).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn lora() -> String {
    "LORA".into()
}
fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    8.0
}
fn default_init() -> InitLoraWeights {
    InitLoraWeights::Default(true)
}

/// The fields every PEFT config has (PEFT's `PeftConfigMixin` and `PeftConfig`): the task, the
/// base model the adapter was made for, and whether it loads for inference only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftCommon {
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub inference_mode: bool,
}

impl PeftCommon {
    /// A new causal-LM adapter's, as PEFT saves it.
    pub fn causal_lm() -> PeftCommon {
        PeftCommon {
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: None,
            revision: None,
            inference_mode: true,
        }
    }

    /// Refuses a task other than causal language modelling. Errors are `field: problem`.
    pub fn validate(&self) -> Result<()> {
        if let Some(task) = self.task_type.as_deref().filter(|t| *t != "CAUSAL_LM") {
            bail!("task_type: {task:?} is not supported (Hone runs causal language models: CAUSAL_LM)");
        }
        Ok(())
    }

    /// Adds these fields to a config's JSON.
    pub fn write(&self, map: &mut Map<String, Value>) {
        if let Ok(Value::Object(common)) = serde_json::to_value(self) {
            map.extend(common);
        }
    }
}

/// A config's JSON as PEFT writes it: the fields kept as read, then the common ones and the
/// method's own (`typed`, a JSON object) over them.
pub(super) fn peft_json(other: &Map<String, Value>, common: &PeftCommon, typed: Value) -> Value {
    let mut map = other.clone();
    common.write(&mut map);
    if let Value::Object(typed) = typed {
        map.extend(typed);
    }
    Value::Object(map)
}

/// The PEFT version whose `LoraConfig` fields [`AdapterConfig::new`] writes.
pub const PEFT_VERSION: &str = "0.21.2";

/// PEFT's defaults for the LoraConfig fields Hone does not type, so that a config Hone creates has
/// exactly the keys PEFT writes.
fn peft_defaults() -> Map<String, Value> {
    let defaults = json!({
        "alora_invocation_tokens": null, "arrow_config": null, "auto_mapping": null,
        "corda_config": null, "ensure_weight_tying": false, "eva_config": null,
        "fan_in_fan_out": false, "kasa_config": null, "layer_replication": null,
        "loftq_config": {}, "lora_bias": false, "lora_ga_config": null, "megatron_config": null,
        "megatron_core": "megatron.core", "modules_to_save": null, "monteclora_config": null,
        "peft_version": PEFT_VERSION, "qalora_group_size": 16, "target_parameters": null,
        "trainable_token_indices": null, "use_bdlora": null, "use_qalora": false, "velora_config": null,
    });
    match defaults {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    }
}

/// Fields that, when set, make the adapter compute something Hone does not, and why.
const UNSUPPORTED: [(&str, &str); 13] = [
    (
        "fan_in_fan_out",
        "it is for GPT-2 style Conv1D layers; Llama layers store weights [out, in]",
    ),
    (
        "modules_to_save",
        "adapters that carry full copies of modules are not supported",
    ),
    ("lora_bias", "a bias on lora_B is not supported"),
    ("layer_replication", "layer replication is not supported"),
    (
        "target_parameters",
        "LoRA on bare parameters (MoE experts) is not supported",
    ),
    (
        "trainable_token_indices",
        "trainable token embeddings are not supported",
    ),
    ("use_qalora", "QA-LoRA pools the layer input; not supported"),
    ("use_bdlora", "block-diagonal LoRA is not supported"),
    (
        "alora_invocation_tokens",
        "activated LoRA applies only after its invocation tokens",
    ),
    (
        "arrow_config",
        "Arrow routing between adapters is not supported",
    ),
    ("kasa_config", "the KaSA variant is not supported"),
    ("velora_config", "the VeLoRA variant is not supported"),
    (
        "monteclora_config",
        "the MonteCLoRA variant is not supported",
    ),
];

/// `init_lora_weights` values that leave the base model's weights untouched; the others (PiSSA,
/// OLoRA, CorDA, LoftQ, LoRA-GA) subtract an initial update from the base, so the saved adapter
/// only fits that modified base.
const BASE_PRESERVING_INITS: [&str; 3] = ["gaussian", "eva", "orthogonal"];

impl AdapterConfig {
    /// A LoRA config for causal LM fine-tuning, with PEFT's defaults for everything else.
    pub fn new(r: usize, lora_alpha: f64, target_modules: TargetModules) -> Self {
        AdapterConfig {
            peft_type: lora(),
            common: PeftCommon::causal_lm(),
            r,
            lora_alpha,
            lora_dropout: 0.0,
            target_modules: Some(target_modules),
            exclude_modules: None,
            bias: Bias::None,
            use_rslora: false,
            use_dora: false,
            init_lora_weights: default_init(),
            layers_to_transform: None,
            layers_pattern: None,
            rank_pattern: Patterns::default(),
            alpha_pattern: Patterns::default(),
            other: peft_defaults(),
        }
    }

    /// Parse `adapter_config.json` text. Errors are `field: problem` (or the JSON syntax error).
    pub fn from_json(text: &str) -> Result<Self> {
        from_json_by_field(text)
    }

    /// The config as PEFT writes it: every field, integral alphas as integers.
    pub fn to_json(&self) -> Value {
        let typed = json!({
            "peft_type": self.peft_type,
            "r": self.r,
            "lora_alpha": number(self.lora_alpha),
            "lora_dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "exclude_modules": self.exclude_modules,
            "bias": self.bias,
            "use_rslora": self.use_rslora,
            "use_dora": self.use_dora,
            "init_lora_weights": self.init_lora_weights,
            "layers_to_transform": self.layers_to_transform,
            "layers_pattern": self.layers_pattern,
            "rank_pattern": self.rank_pattern.to_json(|&r| json!(r)),
            "alpha_pattern": self.alpha_pattern.to_json(|&a| number(a)),
        });
        peft_json(&self.other, &self.common, typed)
    }

    /// Refuse what Hone cannot honour. Errors are `field: problem`.
    pub fn validate(&self) -> Result<()> {
        if self.peft_type != "LORA" {
            bail!(
                "peft_type: {:?} is not supported (Hone reads LoRA and DoRA adapters, peft_type \"LORA\", IA3, \
                 \"IA3\", prompt tuning, P-tuning and prefix tuning, \"PROMPT_TUNING\", \"P_TUNING\" and \
                 \"PREFIX_TUNING\", LLaMA-Adapter, \"ADAPTION_PROMPT\", VeRA, \"VERA\", LoHa, \"LOHA\", LoKr, \"LOKR\", \
                 and OFT, \"OFT\")",
                self.peft_type
            );
        }
        if self.r == 0 {
            bail!("r: must be positive");
        }
        if !self.lora_alpha.is_finite() {
            bail!("lora_alpha: must be a finite number");
        }
        if let Some((key, _)) = self.rank_pattern.iter().find(|(_, &r)| r == 0) {
            bail!("rank_pattern: {key:?}: rank must be positive");
        }
        if let Some((key, _)) = self.alpha_pattern.iter().find(|(_, a)| !a.is_finite()) {
            bail!("alpha_pattern: {key:?}: alpha must be a finite number");
        }
        if let InitLoraWeights::Method(m) = &self.init_lora_weights {
            if !BASE_PRESERVING_INITS.contains(&m.as_str()) {
                bail!(
                    "init_lora_weights: {m:?} is not supported: Hone applies adapters to the unchanged base model, \
                     and methods such as PiSSA, OLoRA, CorDA, LoftQ and LoRA-GA change the base weights (convert the \
                     adapter with PEFT's save_pretrained(..., path_initial_model_for_weight_conversion=...) first)"
                );
            }
        }
        for (field, why) in UNSUPPORTED {
            if let Some(value) = self.other.get(field).filter(|v| is_set(v)) {
                bail!("{field}: {value} is not supported ({why})");
            }
        }
        self.matcher()?;
        Ok(())
    }

    /// Which modules the config targets, and their ranks and scales.
    pub fn matcher(&self) -> Result<ModuleMatcher> {
        ModuleMatcher::new(self)
    }

    /// The config of an adapter that started from the base weight (OLoRA, PiSSA) once converted
    /// to plain LoRA on the original base, as PEFT's `save_pretrained(...,
    /// path_initial_model_for_weight_conversion=...)` writes it: rank doubled, alpha doubled (× √2
    /// with rsLoRA, which keeps the scale), pattern values doubled, `init_lora_weights: true`.
    pub fn converted_from_start(&self) -> AdapterConfig {
        let doubled = |p: &Patterns<usize>| {
            Patterns::from(
                p.iter()
                    .map(|(k, v)| (k.to_string(), 2 * v))
                    .collect::<Vec<_>>(),
            )
        };
        let alpha_factor = if self.use_rslora { 2f64.sqrt() } else { 2.0 };
        AdapterConfig {
            r: 2 * self.r,
            lora_alpha: self.lora_alpha * alpha_factor,
            rank_pattern: doubled(&self.rank_pattern),
            alpha_pattern: Patterns::from(
                self.alpha_pattern
                    .iter()
                    .map(|(k, v)| (k.to_string(), 2.0 * v))
                    .collect::<Vec<_>>(),
            ),
            init_lora_weights: InitLoraWeights::Default(true),
            ..self.clone()
        }
    }

    /// `target_modules` as written in the config, for messages.
    pub fn target_modules_text(&self) -> String {
        match &self.target_modules {
            Some(t) => json!(t).to_string(),
            None => "null".into(),
        }
    }
}

/// A config from JSON text whose every field has a default; errors are `field: problem` (or the
/// JSON syntax error).
/// Refuses the first of `fields` that `other` sets ([`is_set`]: not null, false, 0 or empty),
/// with why Hone does not honour it. Errors are `field: problem`.
pub(super) fn refuse_set(other: &Map<String, Value>, fields: &[(&str, &str)]) -> Result<()> {
    for (field, why) in fields {
        let value = other.get(*field).filter(|v| is_set(v));
        if let Some(value) = value {
            bail!("{field}: {value} is not supported ({why})");
        }
    }
    Ok(())
}

pub(super) fn from_json_by_field<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let fields: Map<String, Value> = serde_json::from_str(text)?;
    // Parse each field alone to name the one that is wrong.
    for (key, value) in &fields {
        let single = Value::Object(Map::from_iter([(key.clone(), value.clone())]));
        if let Err(e) = serde_json::from_value::<T>(single) {
            bail!("{key}: {e}");
        }
    }
    // The text, not the map, keeps rank_pattern / alpha_pattern keys in file order.
    Ok(serde_json::from_str(text)?)
}

/// A JSON number, written as an integer when it is one (as Python writes `lora_alpha=16`).
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// Whether a field holds a value other than its "off" forms (null, false, 0, "", [] or {}).
pub(super) fn is_set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_fields_take_peft_defaults_and_unknown_fields_are_kept() {
        let cfg = AdapterConfig::from_json(
            r#"{"target_modules": ["q_proj"], "new_in_peft_9": {"x": 1}}"#,
        )
        .unwrap();
        assert_eq!((cfg.r, cfg.lora_alpha, cfg.bias), (8, 8.0, Bias::None));
        assert_eq!(cfg.peft_type, "LORA");
        assert_eq!(cfg.init_lora_weights, InitLoraWeights::Default(true));
        cfg.validate().unwrap();
        assert_eq!(cfg.to_json()["new_in_peft_9"], json!({"x": 1}));
    }

    #[test]
    fn target_modules_is_a_list_or_a_regex() {
        let list = AdapterConfig::from_json(r#"{"target_modules": ["q_proj", "v_proj"]}"#).unwrap();
        assert_eq!(
            list.target_modules,
            Some(TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]))
        );
        let regex = AdapterConfig::from_json(r#"{"target_modules": ".*q_proj"}"#).unwrap();
        assert_eq!(
            regex.target_modules,
            Some(TargetModules::Regex(".*q_proj".into()))
        );
    }

    #[test]
    fn a_wrongly_typed_field_is_named() {
        let err = AdapterConfig::from_json(r#"{"r": "eight", "lora_alpha": 16}"#).unwrap_err();
        assert!(err.to_string().starts_with("r: invalid type"), "{err}");
        let err = AdapterConfig::from_json(r#"{"bias": "some"}"#).unwrap_err();
        assert!(
            err.to_string().starts_with("bias: unknown variant"),
            "{err}"
        );
    }

    #[test]
    fn what_hone_cannot_honour_is_refused_by_field() {
        let refused = [
            (
                r#"{"peft_type": "LOHA"}"#,
                "peft_type: \"LOHA\" is not supported",
            ),
            (r#"{"lora_bias": true}"#, "lora_bias: true is not supported"),
            (r#"{"fan_in_fan_out": true}"#, "fan_in_fan_out: true"),
            (
                r#"{"modules_to_save": ["lm_head"]}"#,
                "modules_to_save: [\"lm_head\"]",
            ),
            (
                r#"{"init_lora_weights": "pissa"}"#,
                "init_lora_weights: \"pissa\"",
            ),
            (r#"{"r": 0}"#, "r: must be positive"),
            (r#"{"target_modules": "(unclosed"}"#, "target_modules"),
        ];
        for (json, expected) in refused {
            let err = AdapterConfig::from_json(json)
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(format!("{err:#}").contains(expected), "{json}: {err:#}");
        }
        for ok in [
            r#"{"use_dora": true}"#,
            r#"{"modules_to_save": []}"#,
            r#"{"init_lora_weights": "gaussian"}"#,
        ] {
            AdapterConfig::from_json(ok).unwrap().validate().unwrap();
        }
    }

    #[test]
    fn a_new_config_writes_peft_fields_with_integral_alpha() {
        let mut cfg = AdapterConfig::new(4, 8.0, TargetModules::Names(vec!["q_proj".into()]));
        cfg.alpha_pattern = Patterns::from(vec![("o_proj".to_string(), 2.5)]);
        let json = cfg.to_json();
        assert_eq!(json["lora_alpha"].to_string(), "8");
        assert_eq!(json["alpha_pattern"], json!({"o_proj": 2.5}));
        assert_eq!(json["task_type"], "CAUSAL_LM");
        assert_eq!(json["use_dora"], false);
        let back = AdapterConfig::from_json(&json.to_string()).unwrap();
        assert_eq!(back, cfg);
    }
}
