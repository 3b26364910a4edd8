//! Hugging Face checkpoint directories, as transformers' `save_pretrained` writes them, so that
//! `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained` (and every tool built
//! on them) load a merged or fully fine-tuned model: `config.json`, `generation_config.json`,
//! `model.safetensors` or shards with `model.safetensors.index.json`, and the tokenizer's files
//! (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`).
//!
//! The directory is built in a staging directory beside the target and renamed into place, so a
//! failed write leaves nothing under the target's name and an overwritten checkpoint is replaced
//! whole, never mixed with the previous one.

mod config;
mod remote;
mod shards;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};

use self::shards::ShardWriter;
use crate::io::{atomic, json};
use crate::model::{hf_tensor_shapes, Architecture, ModelConfig};
use crate::quant::{quantize, GgmlType};
use crate::tokenizer::Tokenizer;

/// transformers' default `max_shard_size`, "5GB" (decimal gigabytes, as it parses sizes).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 5_000_000_000;

/// A tensor to write: HF name, row-major shape, f32 values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// The floating-point type the weights are stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    BF16,
    F16,
}

impl SaveDtype {
    /// The name `config.json`'s `dtype` uses (torch's dtype name).
    pub fn hf_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::BF16 => "bfloat16",
            SaveDtype::F16 => "float16",
        }
    }

    /// The dtype `cfg`'s weights were stored in when it is one of these, else f32 (the exact
    /// form of a quantized GGUF's dequantized weights).
    pub fn of_source(cfg: &ModelConfig) -> SaveDtype {
        cfg.source_dtype
            .to_lowercase()
            .parse()
            .unwrap_or(SaveDtype::F32)
    }

    fn ggml(self) -> GgmlType {
        match self {
            SaveDtype::F32 => GgmlType::F32,
            SaveDtype::BF16 => GgmlType::BF16,
            SaveDtype::F16 => GgmlType::F16,
        }
    }

    fn safetensors(self) -> safetensors::Dtype {
        match self {
            SaveDtype::F32 => safetensors::Dtype::F32,
            SaveDtype::BF16 => safetensors::Dtype::BF16,
            SaveDtype::F16 => safetensors::Dtype::F16,
        }
    }
}

impl FromStr for SaveDtype {
    type Err = anyhow::Error;

    /// `f32`, `bf16`, `f16`, or torch's names `float32`, `bfloat16`, `float16`.
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "f32" | "float32" => SaveDtype::F32,
            "bf16" | "bfloat16" => SaveDtype::BF16,
            "f16" | "float16" => SaveDtype::F16,
            other => bail!("dtype {other:?} is not one of f32, bf16, f16"),
        })
    }
}

#[derive(Debug, Clone)]
pub struct HfWriteOptions {
    /// Tensor bytes per safetensors file before a new shard starts (transformers' `max_shard_size`).
    pub max_shard_bytes: u64,
    /// Replace an existing directory (atomically) instead of refusing.
    pub overwrite: bool,
    /// A directory whose modeling code (`*.py`) is copied beside the weights: a remote-code
    /// family's base checkpoint, whose `auto_map` classes transformers loads from there.
    pub modeling_code: Option<PathBuf>,
}

impl Default for HfWriteOptions {
    fn default() -> Self {
        HfWriteOptions {
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            overwrite: false,
            modeling_code: None,
        }
    }
}

/// What [`write_hf_checkpoint`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfCheckpoint {
    /// File names in the directory, sorted.
    pub files: Vec<String>,
    /// Bytes of tensor data over all weight files.
    pub total_size: u64,
}

/// Writes the model `cfg` with `tensors` (HF name, row-major shape, f32 values; exactly the
/// tensors [`hf_tensor_shapes`] lists, in any order) and `tokenizer` as an HF checkpoint in `dir`,
/// weights stored as `dtype`. Errors name the tensor: unknown, missing, mis-shaped, not finite
/// (PEFT's `safe_merge` check), or out of `dtype`'s range.
pub fn write_hf_checkpoint(
    dir: &Path,
    cfg: &ModelConfig,
    tensors: impl IntoIterator<Item = NamedTensor>,
    tokenizer: &Tokenizer,
    dtype: SaveDtype,
    opts: &HfWriteOptions,
) -> Result<HfCheckpoint> {
    let context = || format!("{}: cannot write the checkpoint", dir.display());
    check_output_dir(dir, opts.overwrite).with_context(context)?;
    let config = config::config_json(cfg, dtype).with_context(context)?;
    let staging = atomic::staging_dir(dir).with_context(context)?;
    let written =
        write_weights(&staging, cfg, tensors, dtype, opts.max_shard_bytes).and_then(|total_size| {
            let generation = config::generation_config_json(cfg, tokenizer);
            for (name, value) in [
                ("config.json", &config),
                ("generation_config.json", &generation),
            ] {
                let path = staging.join(name);
                fs::write(&path, json::sorted_pretty(value)? + "\n")
                    .with_context(|| format!("{}: cannot write", path.display()))?;
            }
            tokenizer.save_hf(&staging)?;
            if let Some(code) = &opts.modeling_code {
                copy_modeling_code(code, &staging)?;
            }
            let files = file_names(&staging)?;
            atomic::sync_tree(&staging)?;
            // Checked again: the directory may have appeared while the weights were written.
            check_output_dir(dir, opts.overwrite)?;
            atomic::replace_dir(&staging, dir)?;
            Ok(HfCheckpoint { files, total_size })
        });
    if written.is_err() {
        // Best effort: the staging directory may be half-written; the write error is what matters.
        let _ = fs::remove_dir_all(&staging);
    }
    written.with_context(context)
}

/// `weights` as [`write_hf_checkpoint`] takes them: f32 values in transformers' `state_dict()`
/// order, then any tensor the config does not name (which the writer will refuse, by name). A
/// tied model's `lm_head.weight`, which some checkpoints carry, is dropped: the head is the
/// embedding matrix, as transformers saves it.
pub fn tensors_in_hf_order(
    cfg: &ModelConfig,
    mut weights: HashMap<String, Tensor>,
) -> Result<Vec<NamedTensor>> {
    if cfg.tie_word_embeddings {
        weights.remove("lm_head.weight");
    }
    let mut names: Vec<String> = hf_tensor_shapes(cfg)
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| weights.contains_key(name))
        .collect();
    let known: HashSet<&String> = names.iter().collect();
    let mut others: Vec<String> = weights
        .keys()
        .filter(|name| !known.contains(name))
        .cloned()
        .collect();
    others.sort();
    names.extend(others);
    names
        .into_iter()
        .map(|name| {
            // Removed one by one, so each tensor's memory is freed once its copy exists.
            let t = weights.remove(&name).expect("names come from the map");
            let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            Ok((name, t.dims().to_vec(), values))
        })
        .collect()
}

/// Refuses an output path that exists (unless `overwrite`) or is not a directory, as
/// [`write_hf_checkpoint`] will: callers check first to fail before slow work.
pub fn check_output_dir(dir: &Path, overwrite: bool) -> Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if !meta.is_dir() => bail!("exists and is not a directory"),
        Ok(_) if !overwrite => {
            bail!("already exists (allow overwriting to replace it, e.g. `hone merge --force`)")
        }
        Ok(_) => Ok(()),
        // A file in place of a parent directory: reported when the parent is created.
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => Ok(()),
        Err(e) => Err(e).context("cannot inspect"),
    }
}

/// The names of the files in `dir`, sorted.
fn file_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

/// Copies the `*.py` files of `from` into `to`.
fn copy_modeling_code(from: &Path, to: &Path) -> Result<()> {
    let entries = fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "py") && path.is_file() {
            let name = path.file_name().expect("a file has a name");
            fs::copy(&path, to.join(name))
                .with_context(|| format!("cannot copy {}", path.display()))?;
        }
    }
    Ok(())
}

/// Checks and encodes each tensor and writes the weight files into `staging` under the family's
/// checkpoint names; returns the bytes of tensor data written.
fn write_weights(
    staging: &Path,
    cfg: &ModelConfig,
    tensors: impl IntoIterator<Item = NamedTensor>,
    dtype: SaveDtype,
    max_shard_bytes: u64,
) -> Result<u64> {
    let order = hf_tensor_shapes(cfg);
    let expected: HashMap<&str, &[usize]> = order
        .iter()
        .map(|(name, shape)| (name.as_str(), shape.as_slice()))
        .collect();
    let mut seen = HashSet::new();
    let mut shards = ShardWriter::new(staging, dtype, max_shard_bytes);
    for (name, shape, values) in tensors {
        check_tensor(cfg, &expected, &name, &shape, &values)?;
        if !seen.insert(name.clone()) {
            bail!("tensor {name}: given twice");
        }
        let bytes = encode(&name, &values, dtype)?;
        shards.push(checkpoint_name(cfg, &name), shape, bytes)?;
    }
    if cfg.architecture == Architecture::ChatGlm {
        // A buffer ChatGLM's checkpoints carry (its forward recomputes the frequencies).
        let inv_freq = chatglm_inv_freq(cfg);
        let bytes = encode(CHATGLM_INV_FREQ, &inv_freq, dtype)?;
        shards.push(CHATGLM_INV_FREQ.to_string(), vec![inv_freq.len()], bytes)?;
    }
    if let Some((missing, _)) = order.iter().find(|(name, _)| !seen.contains(name)) {
        bail!(
            "tensor {missing}: missing ({} of the {} tensors were given)",
            seen.len(),
            order.len()
        );
    }
    let total_size = shards.total_size();
    shards.finish()?;
    Ok(total_size)
}

/// The checkpoint's name of Hone's tensor `name` (a remote-code family's own names).
fn checkpoint_name(cfg: &ModelConfig, name: &str) -> String {
    match cfg.architecture.checkpoint_names() {
        Some(names) => names.to_checkpoint(name),
        None => name.to_string(),
    }
}

const CHATGLM_INV_FREQ: &str = "transformer.rotary_pos_emb.inv_freq";

/// ChatGLM's `RotaryEmbedding(kv_channels // 2)` buffer: `1 / θ^(2i/d)` over `d = head_dim / 2`.
fn chatglm_inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    let dim = cfg.head_dim / 2;
    (0..dim / 2)
        .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / dim as f32))
        .collect()
}

fn check_tensor(
    cfg: &ModelConfig,
    expected: &HashMap<&str, &[usize]>,
    name: &str,
    shape: &[usize],
    values: &[f32],
) -> Result<()> {
    let Some(&want) = expected.get(name) else {
        if name == "lm_head.weight" && cfg.tie_word_embeddings {
            bail!("tensor {name}: the config ties the output head to model.embed_tokens.weight, so a checkpoint has no separate head");
        }
        bail!(
            "tensor {name}: not a tensor of this {} model",
            cfg.architecture.hf_class()
        );
    };
    if shape != want {
        bail!("tensor {name}: shape {shape:?}, but the config implies {want:?}");
    }
    if values.len() != shape.iter().product::<usize>() {
        bail!("tensor {name}: {} values for shape {shape:?}", values.len());
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        bail!(
            "tensor {name}: value {} at index {i} is not finite; refusing to write a broken model",
            values[i]
        );
    }
    Ok(())
}

/// Little-endian `dtype` bytes of finite `values`; a value beyond `dtype`'s range is an error
/// rather than a silent infinity.
fn encode(name: &str, values: &[f32], dtype: SaveDtype) -> Result<Vec<u8>> {
    let bytes = quantize(dtype.ggml(), values)?;
    let exponent_mask: u16 = match dtype {
        SaveDtype::F32 => return Ok(bytes),
        SaveDtype::F16 => 0x7c00,
        SaveDtype::BF16 => 0x7f80,
    };
    let overflow = bytes
        .chunks_exact(2)
        .position(|b| u16::from_le_bytes([b[0], b[1]]) & exponent_mask == exponent_mask);
    if let Some(i) = overflow {
        bail!(
            "tensor {name}: value {} at index {i} is beyond the range of {}",
            values[i],
            dtype.hf_name()
        );
    }
    Ok(bytes)
}
