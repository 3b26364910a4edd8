//! Writing an adapter directory as PEFT's `save_pretrained` does: `adapter_config.json` (sorted
//! keys, two-space indent), `adapter_model.safetensors` (f32, metadata `format: pt`) and a model
//! card `README.md` whose front matter tells the Hub this is a PEFT adapter of its base model.
//!
//! Everything is first written to a staging directory beside the target. A new directory then
//! appears whole with one rename. An existing one has each file replaced by a rename (never a
//! half-written file), the weights before the config.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::adalora;
use super::adaption::{GATE_KEY, PROMPT_KEY};
use super::loha;
use super::lokr::{self, Factor};
use super::oft;
use super::peft::{
    CONFIG_FILE, IA3, KEY_PREFIX, MAGNITUDE, PROMPT_EMBEDDINGS, WEIGHTS_FILE, WRAPPED_BIAS,
};
use super::vera::{LAMBDA_B, LAMBDA_D, SHARED_A, SHARED_B};
use super::{Adapter, PeftConfig, PromptMethod};
use crate::io::safetensors::{serialize_f32, F32Tensor};
use crate::io::{atomic, json};
use crate::tokenizer::Tokenizer;

const CARD_FILE: &str = "README.md";

/// Write `adapter` to `dir` in PEFT's layout, with the tokenizer's files when given (as training
/// tools save them next to the adapter).
pub fn write_adapter(dir: &Path, adapter: &Adapter, tokenizer: Option<&Tokenizer>) -> Result<()> {
    let context = || format!("{}: cannot write the adapter", dir.display());
    adapter.config.validate().with_context(context)?;
    adapter.validate().with_context(context)?;
    if dir.exists() && !dir.is_dir() {
        bail!("{}: exists and is not a directory", dir.display());
    }
    let staging = atomic::staging_dir(dir)?;
    let written = write_files(&staging, adapter, tokenizer, !dir.join(CARD_FILE).exists())
        .and_then(|()| publish(&staging, dir));
    if written.is_err() {
        // Best effort: what matters is the original error; the staging dir may be half-written.
        let _ = fs::remove_dir_all(&staging);
    }
    written.with_context(context)
}

fn write_files(
    staging: &Path,
    adapter: &Adapter,
    tokenizer: Option<&Tokenizer>,
    with_card: bool,
) -> Result<()> {
    let weights = serialize_weights(adapter)?;
    fs::write(staging.join(WEIGHTS_FILE), weights)?;
    let config = json::sorted_pretty(&adapter.config.to_json())?;
    fs::write(staging.join(CONFIG_FILE), config)?;
    if with_card {
        fs::write(staging.join(CARD_FILE), model_card(adapter))?;
    }
    if let Some(tok) = tokenizer {
        tok.save_hf(staging)?;
    }
    Ok(())
}

/// Move the staged files into `dir`: the whole directory when `dir` is new, else file by file
/// with the config last, so a reader never sees a config without its weights.
fn publish(staging: &Path, dir: &Path) -> Result<()> {
    if !dir.exists() {
        return fs::rename(staging, dir)
            .with_context(|| format!("cannot rename {} to {}", staging.display(), dir.display()));
    }
    let mut names: Vec<_> = fs::read_dir(staging)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort_by_key(|n| n == CONFIG_FILE);
    for name in names {
        let (from, to) = (staging.join(&name), dir.join(&name));
        fs::rename(&from, &to).with_context(|| format!("cannot replace {}", to.display()))?;
    }
    fs::remove_dir(staging).with_context(|| format!("cannot remove {}", staging.display()))
}

/// `adapter_model.safetensors` bytes: f32 tensors under PEFT's names.
fn serialize_weights(adapter: &Adapter) -> Result<Vec<u8>> {
    let mut tensors: Vec<F32Tensor> = Vec::new();
    for (module, w) in &adapter.modules {
        let key = format!("{KEY_PREFIX}{module}");
        tensors.push((
            format!("{key}.lora_A.weight"),
            vec![w.r, w.in_features],
            &w.a,
        ));
        tensors.push((
            format!("{key}.lora_B.weight"),
            vec![w.out_features, w.r],
            &w.b,
        ));
        if let Some(m) = &w.magnitude {
            tensors.push((format!("{key}{MAGNITUDE}"), vec![m.len()], m));
        }
    }
    for (module, v) in &adapter.scales {
        let key = format!("{KEY_PREFIX}{module}{IA3}");
        tensors.push((key, v.shape().to_vec(), &v.values));
    }
    for (name, bias) in &adapter.biases {
        let module = name.strip_suffix(".bias").unwrap_or(name);
        let key = if adapter.modules.contains_key(module) {
            format!("{KEY_PREFIX}{module}{WRAPPED_BIAS}")
        } else {
            format!("{KEY_PREFIX}{name}")
        };
        tensors.push((key, vec![bias.len()], bias));
    }
    for (module, w) in &adapter.lokr {
        let key = format!("{KEY_PREFIX}{module}");
        let (a, b, c, d) = w.dims;
        for (factor, names, (rows, cols)) in
            [(&w.w1, [0, 1, 2], (a, c)), (&w.w2, [3, 4, 5], (b, d))]
        {
            match factor {
                Factor::Whole(m) => tensors.push((
                    format!("{key}{}", lokr::KEYS[names[0]]),
                    vec![rows, cols],
                    m,
                )),
                Factor::Product { a: fa, b: fb, r } => {
                    tensors.push((format!("{key}{}", lokr::KEYS[names[1]]), vec![rows, *r], fa));
                    tensors.push((format!("{key}{}", lokr::KEYS[names[2]]), vec![*r, cols], fb));
                }
            }
        }
    }
    for (module, w) in &adapter.loha {
        let key = format!("{KEY_PREFIX}{module}");
        let (out, r, inp) = (w.out_features, w.r, w.in_features);
        let factors = [
            (&w.w1a, [out, r]),
            (&w.w1b, [r, inp]),
            (&w.w2a, [out, r]),
            (&w.w2b, [r, inp]),
        ];
        for (suffix, (values, shape)) in loha::KEYS.iter().zip(factors) {
            tensors.push((format!("{key}{suffix}"), shape.to_vec(), values));
        }
    }
    if let Some(vera) = &adapter.vera {
        tensors.push((SHARED_A.into(), vec![vera.r, vera.max_in], &vera.a));
        tensors.push((SHARED_B.into(), vec![vera.max_out, vera.r], &vera.b));
        for (module, (d, b)) in &vera.lambdas {
            let key = format!("{KEY_PREFIX}{module}");
            tensors.push((format!("{key}{LAMBDA_D}"), vec![d.len()], d));
            tensors.push((format!("{key}{LAMBDA_B}"), vec![b.len()], b));
        }
    }
    for (module, w) in &adapter.adalora {
        let key = format!("{KEY_PREFIX}{module}");
        let shapes = [
            vec![w.r, w.in_features],
            vec![w.r, 1],
            vec![w.out_features, w.r],
        ];
        for ((suffix, shape), values) in adalora::KEYS.iter().zip(shapes).zip([&w.a, &w.e, &w.b]) {
            tensors.push((format!("{key}{suffix}"), shape, values));
        }
    }
    for (module, w) in &adapter.oft {
        let shape = vec![w.rows(), w.triangles.len() / w.rows()];
        tensors.push((
            format!("{KEY_PREFIX}{module}{}", oft::KEY),
            shape,
            &w.triangles,
        ));
    }
    if let PeftConfig::Adaption(config) = &adapter.config {
        let len = config.adapter_len().max(1);
        for (module, p) in &adapter.adaption {
            let key = format!("{KEY_PREFIX}{module}");
            let shape = vec![1, len, p.prompt.len() / len];
            tensors.push((format!("{key}{PROMPT_KEY}"), shape, &p.prompt));
            let gate = std::slice::from_ref(&p.gate);
            tensors.push((format!("{key}{GATE_KEY}"), vec![1], gate));
        }
    }
    if let (Some(prompt), Some(width)) = (&adapter.prompt, adapter.prompt_width()) {
        let shape = vec![prompt.len() / width, width];
        tensors.push((PROMPT_EMBEDDINGS.to_string(), shape, prompt));
    }
    // PEFT (through safetensors.torch) records the framework the tensors came from.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    serialize_f32(&tensors, metadata).with_context(|| WEIGHTS_FILE.to_string())
}

/// A short model card with the front matter PEFT writes (`base_model`, `library_name: peft`).
fn model_card(adapter: &Adapter) -> String {
    let base = adapter.config.base_model_name_or_path();
    let mut card = String::from("---\n");
    if let Some(base) = base {
        card += &format!("base_model: {base}\n");
    }
    card += "library_name: peft\npipeline_tag: text-generation\ntags:\n";
    if let Some(base) = base {
        card += &format!("- base_model:adapter:{base}\n");
    }
    let (tag, shape) = match &adapter.config {
        PeftConfig::Lora(cfg) => (
            "lora",
            format!(
                "Rank {}, alpha {}{}, on {} modules",
                cfg.r,
                cfg.lora_alpha,
                if cfg.use_rslora {
                    " (rank-stabilised)"
                } else {
                    ""
                },
                adapter.modules.len()
            ),
        ),
        PeftConfig::Ia3(_) => (
            "ia3",
            format!("Vectors on {} modules", adapter.scales.len()),
        ),
        PeftConfig::Lokr(cfg) => (
            "lokr",
            format!(
                "Rank {}, alpha {}, on {} modules",
                cfg.r,
                cfg.alpha,
                adapter.lokr.len()
            ),
        ),
        PeftConfig::Adalora(cfg) => (
            "adalora",
            format!(
                "Ranks from {} down to an average of {}, alpha {}, on {} modules",
                cfg.init_r,
                cfg.target_r,
                cfg.lora_alpha,
                adapter.adalora.len()
            ),
        ),
        PeftConfig::Oft(cfg) => (
            "oft",
            format!(
                "Block-diagonal rotations ({}) of the inputs of {} modules",
                match cfg.r {
                    0 => format!("blocks of {}", cfg.oft_block_size),
                    r => format!("{r} blocks"),
                },
                adapter.oft.len()
            ),
        ),
        PeftConfig::Loha(cfg) => (
            "loha",
            format!(
                "Rank {}, alpha {}, on {} modules",
                cfg.r,
                cfg.alpha,
                adapter.loha.len()
            ),
        ),
        PeftConfig::Vera(cfg) => (
            "vera",
            format!(
                "Shared rank-{} projections, vectors on {} modules",
                cfg.r,
                adapter.vera.as_ref().map_or(0, |v| v.lambdas.len())
            ),
        ),
        PeftConfig::Adaption(cfg) => (
            "llama-adapter",
            format!(
                "A gated prompt of {} embeddings in each of the top {} layers",
                cfg.adapter_len(),
                cfg.adapter_layers()
            ),
        ),
        PeftConfig::Prompt(cfg) => (
            match cfg.peft_type {
                PromptMethod::PrefixTuning => "prefix-tuning",
                _ => "prompt-tuning",
            },
            format!("{} virtual tokens", cfg.num_virtual_tokens()),
        ),
    };
    card += &format!("- {tag}\n- hone\n---\n\n");
    card += &format!(
        "# {} adapter{}\n\n{shape}. Written by Hone in Hugging Face PEFT's format: load it with \
         `PeftModel.from_pretrained(base_model, \"<this directory>\")` or `hone generate --model <base model> \
         --adapter <this directory>`.\n",
        adapter.config.method(),
        base.map(|b| format!(" for {b}")).unwrap_or_default(),
    );
    card
}
