//! The `hone train` run config: a LLaMA-Factory-style YAML file of flat `key: value` lines plus
//! `key=value` overrides from the command line, so an existing LLaMA-Factory SFT config runs
//! unchanged. Every key is checked on its own first, so an error names where it came from
//! (`file:line` or the override) and the key; then the keys are checked together. Relative
//! paths in the config (`model_name_or_path`, `dataset_dir`, `output_dir`, ...) are relative to
//! the current directory, as in LLaMA-Factory.

mod args;
mod check;
mod resolve;
pub mod templates;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};

use crate::model::quantize::BaseQuantization;
use crate::quant::bnb::FourBit;

pub use args::{DataArgs, EvalArgs, MethodArgs, ModelArgs, OutputArgs, PredictArgs, TrainArgs};
pub use resolve::{linear_modules, StepPlan, LAYER_MODULES, NON_LAYER_MODULES};
pub use values::{
    CommaList, EvalStrategy, FinetuningType, PrefLoss, PromptTuningInit, QuantizationMethod,
    QuantizationType, ResumeFrom, Stage, StepCount,
};

/// A fully resolved supervised fine-tuning run: every key with its value or its default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SftConfig {
    #[serde(flatten)]
    pub model: ModelArgs,
    #[serde(flatten)]
    pub method: MethodArgs,
    #[serde(flatten)]
    pub data: DataArgs,
    #[serde(flatten)]
    pub output: OutputArgs,
    #[serde(flatten)]
    pub train: TrainArgs,
    #[serde(flatten)]
    pub eval: EvalArgs,
    #[serde(flatten)]
    pub predict: PredictArgs,
}

/// Where a key's value came from, for error messages.
#[derive(Clone, Debug)]
enum Origin {
    File { path: PathBuf, line: Option<usize> },
    Override(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Override(text) => write!(f, "override `{text}`"),
        }
    }
}

/// The keys set so far, each with its origin; later settings of a key replace earlier ones.
struct Settings {
    file: PathBuf,
    known: Vec<String>,
    values: Mapping,
    origins: BTreeMap<String, Origin>,
}

impl Settings {
    /// The origin to blame for `key`: where it was set, else the config file.
    fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::File {
            path: self.file.clone(),
            line: None,
        })
    }

    /// Checks `key: value` on its own (known key, right type), then records it.
    fn set(&mut self, key: &str, value: Value, origin: Origin) -> Result<()> {
        if !self.known.iter().any(|k| k == key) {
            bail!(
                "{origin}: {key}: unknown key (nearest valid key: `{}`; \
                 `hone train --print-config` lists them all)",
                nearest(key, &self.known)
            );
        }
        let mut single = Mapping::new();
        single.insert(Value::from(key), value.clone());
        if let Err(e) = serde_yaml_ng::from_value::<SftConfig>(Value::Mapping(single)) {
            bail!("{origin}: {key}: {}", plain_types(&e.to_string()));
        }
        self.values.insert(Value::from(key), value);
        self.origins.insert(key.to_string(), origin);
        Ok(())
    }
}

impl SftConfig {
    /// Reads the YAML config at `path`, applies `key=value` overrides in order, fills in the
    /// derived defaults and checks the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<SftConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read config", path.display()))?;
        let mut settings = Settings {
            file: path.to_path_buf(),
            known: known_keys(),
            values: Mapping::new(),
            origins: BTreeMap::new(),
        };
        for (key, value) in top_level_mapping(path, &text)? {
            let line = key_line(&text, &key);
            let origin = Origin::File {
                path: path.to_path_buf(),
                line,
            };
            settings.set(&key, value, origin)?;
        }
        for text in overrides {
            let (key, value) = parse_override(text)?;
            settings.set(key, value, Origin::Override(text.clone()))?;
        }
        let mut config: SftConfig =
            serde_yaml_ng::from_value(Value::Mapping(settings.values.clone()))
                .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        config.fill_derived_defaults();
        check::check(&config)
            .map_err(|e| anyhow!("{}: {}: {}", settings.origin(e.key), e.key, e.problem))?;
        Ok(config)
    }

    /// The resolved config as YAML in LLaMA-Factory's section order, every key with its value or
    /// default; loading it gives back the same config.
    pub fn to_yaml(&self) -> String {
        let sections: [(&str, Result<String, serde_yaml_ng::Error>); 6] = [
            ("model", serde_yaml_ng::to_string(&self.model)),
            ("method", serde_yaml_ng::to_string(&self.method)),
            ("dataset", serde_yaml_ng::to_string(&self.data)),
            ("output", serde_yaml_ng::to_string(&self.output)),
            ("train", serde_yaml_ng::to_string(&self.train)),
            ("eval", serde_yaml_ng::to_string(&self.eval)),
        ];
        sections
            .into_iter()
            .map(|(name, yaml)| {
                // Plain structs of scalars always serialize; a failure is a bug in the types.
                let yaml = yaml.expect("config sections serialize to YAML");
                format!("### {name}\n{yaml}")
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The config a run saved as [`TRAINING_ARGS`], read as written: it was checked when the run
    /// started, and overrides do not apply to it.
    pub fn read_saved(path: &Path) -> Result<SftConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        serde_yaml_ng::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
    }

    /// What `quantization_bit` (with `quantization_type` and `double_quantization`) quantizes an
    /// unquantized base to; None without it.
    pub fn base_quantization(&self) -> Option<BaseQuantization> {
        let m = &self.model;
        Some(match m.quantization_bit? {
            8 => BaseQuantization::Q8_0,
            _ => BaseQuantization::FourBit {
                ty: match m.quantization_type {
                    QuantizationType::Nf4 => FourBit::Nf4,
                    QuantizationType::Fp4 => FourBit::Fp4,
                },
                double: m.double_quantization,
            },
        })
    }

    /// Values that LLaMA-Factory's parser derives from others, made explicit so the printed
    /// config shows what the run uses.
    fn fill_derived_defaults(&mut self) {
        self.method.lora_alpha = Some(self.lora_alpha());
        if self.eval.eval_strategy == EvalStrategy::Steps && self.eval.eval_steps.is_none() {
            self.eval.eval_steps = Some(self.output.logging_steps);
        }
    }
}

/// Hone writes a run's resolved config under this name in its output directory.
pub const TRAINING_ARGS: &str = "training_args.yaml";

/// The [`TRAINING_ARGS`] of the run an adapter directory comes from (see [`find_run_file`]).
pub fn find_training_args(dir: &Path) -> Option<PathBuf> {
    find_run_file(dir, TRAINING_ARGS)
}

/// A file `name` of the run an adapter directory comes from: in the directory, else in its
/// parent (a `checkpoint-N` inside the run's output).
pub fn find_run_file(dir: &Path, name: &str) -> Option<PathBuf> {
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The quantization the run of an adapter directory trained on (`quantization_bit` in its
/// [`TRAINING_ARGS`]), with that file's path; None for other adapters.
pub fn trained_quantization(adapter: &Path) -> Result<Option<(PathBuf, BaseQuantization)>> {
    let Some(path) = find_training_args(adapter) else {
        return Ok(None);
    };
    Ok(SftConfig::read_saved(&path)?
        .base_quantization()
        .map(|q| (path, q)))
}

/// Every valid key, in config order: the keys a default config serializes to.
fn known_keys() -> Vec<String> {
    match serde_yaml_ng::to_value(SftConfig::default()) {
        Ok(Value::Mapping(m)) => m
            .into_iter()
            .filter_map(|(k, _)| k.as_str().map(str::to_string))
            .collect(),
        _ => unreachable!("SftConfig serializes to a mapping"),
    }
}

/// The name in `names` closest in spelling to `name` (see [`crate::io::names::nearest`]).
pub(super) fn nearest<'a, S: AsRef<str>>(name: &str, names: &'a [S]) -> &'a str {
    crate::io::names::nearest(name, names, 1)
        .first()
        .copied()
        .unwrap_or_default()
}

/// serde's messages name Rust types (`expected u32`); users of a YAML file need words.
fn plain_types(message: &str) -> String {
    [
        ("expected u32", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
    ]
    .iter()
    .fold(message.to_string(), |m, (rust, plain)| {
        m.replace(rust, plain)
    })
}

/// The file's `key: value` pairs in order; the top level must be a mapping with string keys.
fn top_level_mapping(path: &Path, text: &str) -> Result<Vec<(String, Value)>> {
    let doc: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| anyhow!("{}: not valid YAML: {e}", path.display()))?;
    let mapping = match doc {
        Value::Mapping(m) => m,
        Value::Null => bail!(
            "{}: empty config: expected `key: value` lines",
            path.display()
        ),
        _ => bail!(
            "{}: expected `key: value` lines at the top level",
            path.display()
        ),
    };
    mapping
        .into_iter()
        .map(|(k, v)| match k {
            Value::String(k) => Ok((k, v)),
            other => bail!(
                "{}:{}: key {} is not a name",
                path.display(),
                scalar_text(&other)
                    .and_then(|t| key_line(text, &t))
                    .unwrap_or(1),
                scalar_text(&other).unwrap_or_else(|| "(non-scalar)".into())
            ),
        })
        .collect()
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some("null".into()),
        _ => None,
    }
}

/// The 1-based line where the top-level `key:` is written, plain or quoted.
fn key_line(text: &str, key: &str) -> Option<usize> {
    let quoted = [key.to_string(), format!("\"{key}\""), format!("'{key}'")];
    text.lines()
        .position(|line| {
            quoted.iter().any(|q| {
                line.strip_prefix(q.as_str())
                    .is_some_and(|rest| rest.trim_start().starts_with(':'))
            })
        })
        .map(|i| i + 1)
}

/// `key=value`, the value read as YAML (so `true`, `3`, `1e-4`, `null` get their types; an empty
/// value is null).
fn parse_override(text: &str) -> Result<(&str, Value)> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| anyhow!("override `{text}`: expected key=value"))?;
    let key = key.trim();
    let value: Value = serde_yaml_ng::from_str(value)
        .map_err(|e| anyhow!("override `{text}`: {key}: not a YAML value: {e}"))?;
    Ok((key, value))
}
