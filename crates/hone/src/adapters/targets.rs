//! Which modules a LoRA config applies to, and with which rank and alpha, decided exactly as PEFT
//! decides (`check_target_module_exists`, `get_pattern_key`). Patterns are Python regexes; PEFT
//! users write lookarounds such as `^(?!.*vision).*q_proj`, so they compile with `fancy_regex`,
//! which supports them as Python's `re` does.

use std::fmt;
use std::marker::PhantomData;

use anyhow::{Context, Result};
use fancy_regex::Regex;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

use super::config::{AdapterConfig, TargetModules};
use super::lora_scale;
use crate::model::layout::all_block_linears;

/// PEFT's `rank_pattern` / `alpha_pattern`: pattern keys and values in file order, because the
/// first key that matches a module wins.
#[derive(Debug, Clone, PartialEq)]
pub struct Patterns<T>(Vec<(String, T)>);

impl<T> Default for Patterns<T> {
    fn default() -> Self {
        Patterns(Vec::new())
    }
}

impl<T> From<Vec<(String, T)>> for Patterns<T> {
    fn from(v: Vec<(String, T)>) -> Self {
        Patterns(v)
    }
}

impl<T> Patterns<T> {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A JSON object, each value written by `value`.
    pub fn to_json(&self, value: impl Fn(&T) -> Value) -> Value {
        Value::Object(self.0.iter().map(|(k, v)| (k.clone(), value(v))).collect())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patterns<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for InOrder<T> {
            type Value = Patterns<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of pattern keys to values, or null")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Patterns(entries))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Patterns::default())
            }
        }
        deserializer.deserialize_any(InOrder(PhantomData))
    }
}

/// PEFT's default LoRA `target_modules` for Llama, Mistral and Qwen2 when the config names none.
const DEFAULT_TARGETS: [&str; 2] = ["q_proj", "v_proj"];

/// `target_modules` or `exclude_modules` compiled.
pub(super) enum Selector {
    Names(Vec<String>),
    Regex(Regex),
    AllLinear,
}

impl Selector {
    pub(super) fn new(t: Option<&TargetModules>, field: &str) -> Result<Selector> {
        Ok(match t {
            None => Selector::Names(DEFAULT_TARGETS.map(String::from).to_vec()),
            Some(TargetModules::Names(names)) => Selector::Names(names.clone()),
            Some(TargetModules::Regex(s)) if s.eq_ignore_ascii_case("all-linear") => {
                Selector::AllLinear
            }
            Some(TargetModules::Regex(s)) => {
                Selector::Regex(python_regex(&format!("^(?:{s})$"), field)?)
            }
        })
    }

    /// PEFT: a regex must match the whole path; a name must equal it or end it after a `.`.
    pub(super) fn matches(&self, module: &str) -> Result<bool> {
        Ok(match self {
            Selector::Names(names) => names.iter().any(|n| ends_with_part(module, n)),
            Selector::Regex(re) => re.is_match(module)?,
            // PEFT excludes the output head; every family's block linear layers.
            Selector::AllLinear => all_block_linears()
                .iter()
                .any(|n| ends_with_part(module, n)),
        })
    }
}

/// Whether `target_modules` selects `module` and `exclude_modules` does not (PEFT's rules; unset
/// targets: q_proj, v_proj), for the methods without rank patterns (VeRA, LoHa, LoKr).
pub fn selects(
    targets: Option<&TargetModules>,
    exclude: Option<&TargetModules>,
    module: &str,
) -> Result<bool> {
    let excluded = match exclude {
        Some(e) => Selector::new(Some(e), "exclude_modules")?.matches(module)?,
        None => false,
    };
    Ok(!excluded && Selector::new(targets, "target_modules")?.matches(module)?)
}

/// `module == name` or `module` ends with `.name`.
fn ends_with_part(module: &str, name: &str) -> bool {
    module == name
        || module
            .strip_suffix(name)
            .is_some_and(|head| head.ends_with('.'))
}

fn python_regex(pattern: &str, field: &str) -> Result<Regex> {
    Regex::new(pattern).with_context(|| format!("{field}: {pattern:?} is not a valid regex"))
}

/// A config's target selection and per-module ranks and alphas, regexes compiled once.
pub struct ModuleMatcher {
    targets: Selector,
    exclude: Option<Selector>,
    /// With `layers_to_transform`: the allowed layer indices and the regexes that find a module's
    /// layer index (from `layers_pattern`).
    layers: Option<(Vec<usize>, Vec<Regex>)>,
    ranks: Vec<(Regex, usize)>,
    alphas: Vec<(Regex, f64)>,
    r: usize,
    alpha: f64,
    use_rslora: bool,
}

impl ModuleMatcher {
    pub fn new(cfg: &AdapterConfig) -> Result<ModuleMatcher> {
        let targets = Selector::new(cfg.target_modules.as_ref(), "target_modules")?;
        let exclude = cfg
            .exclude_modules
            .as_ref()
            .map(|e| Selector::new(Some(e), "exclude_modules"))
            .transpose()?;
        // PEFT only filters by layer for a list of names (it forbids layers_to_transform with a regex).
        let layers = match (&cfg.layers_to_transform, &targets) {
            (Some(idx), Selector::Names(_)) if !idx.as_slice().is_empty() => {
                let patterns: Vec<&str> = cfg
                    .layers_pattern
                    .as_ref()
                    .map(|p| p.as_slice().iter().map(String::as_str).collect())
                    .unwrap_or_default();
                // Lazy `.*?`: the first numbered segment is the layer, not an expert index after it.
                let finders = if patterns.iter().all(|p| p.is_empty()) {
                    vec![python_regex(r"^.*?\.[^.]*\.(\d+)\.", "layers_pattern")?]
                } else {
                    patterns
                        .iter()
                        .map(|p| {
                            python_regex(&format!(r"^(?:.*?\.)?{p}\.(\d+)\."), "layers_pattern")
                        })
                        .collect::<Result<_>>()?
                };
                Some((idx.as_slice().to_vec(), finders))
            }
            _ => None,
        };
        Ok(ModuleMatcher {
            targets,
            exclude,
            layers,
            ranks: pattern_regexes(cfg.rank_pattern.iter(), "rank_pattern")?,
            alphas: pattern_regexes(cfg.alpha_pattern.iter(), "alpha_pattern")?,
            r: cfg.r,
            alpha: cfg.lora_alpha,
            use_rslora: cfg.use_rslora,
        })
    }

    /// Whether PEFT puts a LoRA adapter on the module at this HF path (`model.layers.0.mlp.up_proj`).
    pub fn is_target(&self, module: &str) -> Result<bool> {
        if let Some(ex) = &self.exclude {
            if ex.matches(module)? {
                return Ok(false);
            }
        }
        if !self.targets.matches(module)? {
            return Ok(false);
        }
        let Some((allowed, finders)) = &self.layers else {
            return Ok(true);
        };
        for finder in finders {
            if let Some(caps) = finder.captures(module)? {
                let index: Option<usize> = caps.get(1).and_then(|m| m.as_str().parse().ok());
                return Ok(index.is_some_and(|i| allowed.contains(&i)));
            }
        }
        Ok(false)
    }

    /// The module's rank: its `rank_pattern` entry, else `r`.
    pub fn rank(&self, module: &str) -> Result<usize> {
        Ok(first_match(&self.ranks, module)?.unwrap_or(self.r))
    }

    /// The module's alpha: its `alpha_pattern` entry, else `lora_alpha`.
    pub fn alpha(&self, module: &str) -> Result<f64> {
        Ok(first_match(&self.alphas, module)?.unwrap_or(self.alpha))
    }

    /// What the module's `B · A` is multiplied by.
    pub fn scale(&self, module: &str) -> Result<f64> {
        Ok(lora_scale(
            self.rank(module)?,
            self.alpha(module)?,
            self.use_rslora,
        ))
    }
}

/// PEFT's `get_pattern_key`: key `k` applies to a module whose path matches `(.*\.)?(k)$`.
fn pattern_regexes<'a, T: Copy + 'a>(
    entries: impl Iterator<Item = (&'a str, &'a T)>,
    field: &str,
) -> Result<Vec<(Regex, T)>> {
    entries
        .map(|(key, &v)| Ok((python_regex(&format!(r"^(?:.*\.)?(?:{key})$"), field)?, v)))
        .collect()
}

fn first_match<T: Copy>(patterns: &[(Regex, T)], module: &str) -> Result<Option<T>> {
    for (re, v) in patterns {
        if re.is_match(module)? {
            return Ok(Some(*v));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(json: &str) -> ModuleMatcher {
        AdapterConfig::from_json(json).unwrap().matcher().unwrap()
    }

    #[test]
    fn names_match_whole_path_segments() {
        let m = matcher(r#"{"target_modules": ["q_proj", "mlp.up_proj"]}"#);
        assert!(m.is_target("model.layers.0.self_attn.q_proj").unwrap());
        assert!(m.is_target("model.layers.3.mlp.up_proj").unwrap());
        assert!(!m.is_target("model.layers.0.self_attn.qq_proj").unwrap());
        assert!(!m.is_target("model.layers.0.self_attn.k_proj").unwrap());
    }

    #[test]
    fn a_regex_must_match_the_whole_path_and_may_look_ahead() {
        let m = matcher(r#"{"target_modules": "^(?!.*layers\\.1\\.).*(q|v)_proj"}"#);
        assert!(m.is_target("model.layers.0.self_attn.v_proj").unwrap());
        assert!(!m.is_target("model.layers.1.self_attn.v_proj").unwrap());
        assert!(!m
            .is_target("model.layers.0.self_attn.v_proj.extra")
            .unwrap());
    }

    #[test]
    fn all_linear_skips_the_output_head_and_exclude_wins() {
        let m = matcher(r#"{"target_modules": "all-linear", "exclude_modules": ["down_proj"]}"#);
        assert!(m.is_target("model.layers.0.mlp.gate_proj").unwrap());
        assert!(!m.is_target("model.layers.0.mlp.down_proj").unwrap());
        assert!(!m.is_target("lm_head").unwrap());
    }

    #[test]
    fn layers_to_transform_filters_by_layer_index() {
        let m = matcher(r#"{"target_modules": ["q_proj"], "layers_to_transform": [1, 3]}"#);
        assert!(!m.is_target("model.layers.0.self_attn.q_proj").unwrap());
        assert!(m.is_target("model.layers.3.self_attn.q_proj").unwrap());
        let m = matcher(
            r#"{"target_modules": ["q_proj"], "layers_to_transform": 2, "layers_pattern": "layers"}"#,
        );
        assert!(m.is_target("model.layers.2.self_attn.q_proj").unwrap());
        assert!(!m.is_target("model.layers.12.self_attn.q_proj").unwrap());
    }

    #[test]
    fn the_first_matching_pattern_key_sets_rank_and_alpha() {
        let m = matcher(
            r#"{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
                "rank_pattern": {"layers.1.self_attn.q_proj": 2, "q_proj": 4},
                "alpha_pattern": {"v_proj": 3}}"#,
        );
        assert_eq!(m.rank("model.layers.1.self_attn.q_proj").unwrap(), 2);
        assert_eq!(m.rank("model.layers.0.self_attn.q_proj").unwrap(), 4);
        assert_eq!(m.rank("model.layers.0.self_attn.v_proj").unwrap(), 8);
        assert_eq!(
            m.scale("model.layers.0.self_attn.v_proj").unwrap(),
            3.0 / 8.0
        );
        assert_eq!(
            m.scale("model.layers.0.self_attn.q_proj").unwrap(),
            16.0 / 4.0
        );
        // A key matches whole trailing segments only, as PEFT's `(.*\.)?(key)$`.
        assert_eq!(m.rank("model.layers.0.self_attn.xq_proj").unwrap(), 8);
    }

    #[test]
    fn rslora_scales_by_the_square_root_of_the_rank() {
        assert_eq!(lora_scale(16, 8.0, false), 0.5);
        assert_eq!(lora_scale(16, 8.0, true), 2.0);
    }
}
