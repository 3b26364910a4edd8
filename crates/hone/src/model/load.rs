//! One call from the MODEL argument to a ready model and its tokenizer.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::config::ModelConfig;
use super::{weights, Llama};
use crate::adapters::{merge, read_adapter};
use crate::io::gguf::GgufFile;
use crate::io::source::{self, ModelSource};
use crate::tokenizer::Tokenizer;

pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub source: ModelSource,
}

/// A model's parts before they become a [`Llama`]: what training starts from.
pub struct ModelWeights {
    pub source: ModelSource,
    pub config: ModelConfig,
    /// f32 tensors under HF names.
    pub weights: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
}

/// Resolve `spec` (HF directory, GGUF file or Hub id) and read its config, f32 weights and
/// tokenizer.
pub fn load_weights(spec: &str, device: &Device) -> Result<ModelWeights> {
    let source = source::resolve(spec)?;
    let (config, weights, tokenizer) = match &source {
        ModelSource::HfDir(dir) => {
            let (cfg, w) = weights::load(&source, device)?;
            (cfg, w, Tokenizer::from_hf_dir(dir)?)
        }
        ModelSource::Gguf(path) => {
            let gguf = GgufFile::open(path)?;
            let (cfg, w) = weights::load_gguf(&gguf, device)?;
            (cfg, w, Tokenizer::from_gguf(&gguf)?)
        }
    };
    Ok(ModelWeights {
        source,
        config,
        weights,
        tokenizer,
    })
}

/// Resolve `spec` (HF directory, GGUF file or Hub id) and load weights and tokenizer.
pub fn load(spec: &str, device: &Device) -> Result<LoadedModel> {
    load_with_adapter(spec, None, device)
}

/// [`load`], with the PEFT LoRA adapter in `adapter` (a directory) merged into the weights.
pub fn load_with_adapter(
    spec: &str,
    adapter: Option<&Path>,
    device: &Device,
) -> Result<LoadedModel> {
    // Read the adapter first: a bad adapter fails before the model's weights are loaded.
    let adapter = match adapter {
        Some(dir) => Some((dir, read_adapter(dir)?)),
        None => None,
    };
    let ModelWeights {
        source,
        config: cfg,
        weights: mut w,
        tokenizer,
    } = load_weights(spec, device)?;
    if let Some((dir, adapter)) = &adapter {
        merge(&mut w, &cfg, adapter).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot merge into {}: {e:#}",
                dir.display(),
                source.path().display()
            )
        })?;
    }
    let model = Llama::from_weights(cfg, w, device)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", source.path().display()))?;
    Ok(LoadedModel {
        model,
        tokenizer,
        source,
    })
}

/// Config and tokenizer only, without reading the weights (for `hone info`).
pub fn inspect(spec: &str) -> Result<(ModelSource, ModelConfig, Tokenizer)> {
    let source = source::resolve(spec)?;
    Ok(match &source {
        ModelSource::HfDir(dir) => {
            let cfg = ModelConfig::from_hf_file(&dir.join("config.json"))?;
            (source.clone(), cfg, Tokenizer::from_hf_dir(dir)?)
        }
        ModelSource::Gguf(path) => {
            let gguf = GgufFile::open(path)?;
            (
                source.clone(),
                ModelConfig::from_gguf(&gguf)?,
                Tokenizer::from_gguf(&gguf)?,
            )
        }
    })
}
