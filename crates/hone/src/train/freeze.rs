//! Partial ("freeze") fine-tuning as LLaMA-Factory configures it: train chosen modules of the last
//! (or first) N decoder layers, plus optional modules outside the layers, and freeze the rest.
//!
//! `freeze_trainable_layers: N` — N > 0: the last N layers, N < 0: the first |N|.
//! `freeze_trainable_modules` — `all`, or names of a layer's children (`self_attn`, `mlp`,
//! `input_layernorm`, `post_attention_layernorm`, or deeper ones such as `mlp.down_proj`).
//! `freeze_extra_modules` — `embed_tokens`, `norm` (the final norm), `lm_head`.
//! LLaMA-Factory matches these as substrings of parameter names, so its `norm` also catches every
//! layer norm; Hone matches whole name components, so each name means exactly one thing.

use anyhow::{bail, Result};

use super::config::LAYER_MODULES;

/// Modules outside the layers that `freeze_extra_modules` may name.
const EXTRA_MODULES: [(&str, &str); 3] = [
    ("embed_tokens", "model.embed_tokens."),
    ("norm", "model.norm."),
    ("lm_head", "lm_head."),
];

/// Which parameters train, by HF name.
#[derive(Clone, Debug)]
pub struct FreezeSelection {
    /// Parameter-name prefixes that train, e.g. `model.layers.29.mlp.`.
    prefixes: Vec<String>,
}

impl FreezeSelection {
    pub fn new(
        num_layers: usize,
        trainable_layers: i64,
        modules: &[String],
        extra: &[String],
    ) -> Result<FreezeSelection> {
        let n = trainable_layers.unsigned_abs() as usize;
        if n == 0 || n > num_layers {
            bail!(
                "freeze_trainable_layers: {trainable_layers} must be between 1 and {num_layers} \
                 (last N layers) or -1 and -{num_layers} (first N)"
            );
        }
        let layers = if trainable_layers > 0 {
            num_layers - n..num_layers
        } else {
            0..n
        };
        let mut prefixes = Vec::new();
        for module in modules {
            let top = module.split('.').next().unwrap_or_default();
            if module != "all" && !LAYER_MODULES.contains(&top) {
                bail!(
                    "freeze_trainable_modules: {module:?} is not a layer module; use all or any of {}",
                    LAYER_MODULES.join(", ")
                );
            }
            for l in layers.clone() {
                prefixes.push(match module.as_str() {
                    "all" => format!("model.layers.{l}."),
                    m => format!("model.layers.{l}.{m}."),
                });
            }
        }
        for module in extra {
            let Some((_, prefix)) = EXTRA_MODULES.iter().find(|(name, _)| name == module) else {
                bail!("freeze_extra_modules: {module:?} is not one of embed_tokens, norm, lm_head");
            };
            prefixes.push(prefix.to_string());
        }
        Ok(FreezeSelection { prefixes })
    }

    pub fn trains(&self, name: &str) -> bool {
        self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn last_layers_chosen_modules_and_extras() {
        let f = FreezeSelection::new(4, 2, &strings(&["mlp"]), &strings(&["norm"])).unwrap();
        assert!(f.trains("model.layers.3.mlp.down_proj.weight"));
        assert!(f.trains("model.layers.2.mlp.up_proj.weight"));
        assert!(!f.trains("model.layers.1.mlp.up_proj.weight"));
        assert!(!f.trains("model.layers.3.self_attn.q_proj.weight"));
        assert!(f.trains("model.norm.weight"));
        assert!(!f.trains("model.layers.3.post_attention_layernorm.weight"));
        assert!(!f.trains("model.embed_tokens.weight"));
    }

    #[test]
    fn negative_counts_take_the_first_layers_and_all_takes_whole_layers() {
        let f = FreezeSelection::new(12, -1, &strings(&["all"]), &[]).unwrap();
        assert!(f.trains("model.layers.0.input_layernorm.weight"));
        assert!(!f.trains("model.layers.10.input_layernorm.weight"));
        assert!(!f.trains("model.layers.1.mlp.up_proj.weight"));
    }

    #[test]
    fn bad_choices_are_named() {
        let e = FreezeSelection::new(4, 5, &strings(&["all"]), &[]).unwrap_err();
        assert!(e.to_string().contains("freeze_trainable_layers: 5"), "{e}");
        let e = FreezeSelection::new(4, 1, &strings(&["attention"]), &[]).unwrap_err();
        assert!(e.to_string().contains("\"attention\""), "{e}");
        let e = FreezeSelection::new(4, 1, &strings(&["all"]), &strings(&["head"])).unwrap_err();
        assert!(e.to_string().contains("freeze_extra_modules"), "{e}");
    }
}
