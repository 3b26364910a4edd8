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
    let parts = load_parts(spec, adapter, device)?;
    let model = Llama::from_weights(parts.config, parts.weights, device)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", parts.source.path().display()))?;
    Ok(LoadedModel {
        model,
        tokenizer: parts.tokenizer,
        source: parts.source,
    })
}

/// A model's pieces before they are assembled into a [`Llama`]: what exporters write out.
pub struct ModelParts {
    pub config: ModelConfig,
    /// f32 weights by HF tensor name, with any adapter merged in.
    pub weights: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
    pub source: ModelSource,
}

/// Config, f32 weights (adapter merged) and tokenizer of `spec`, unassembled.
pub fn load_parts(spec: &str, adapter: Option<&Path>, device: &Device) -> Result<ModelParts> {
    // Read the adapter first: a bad adapter fails before the model's weights are loaded.
    let adapter = match adapter {
        Some(dir) => Some((dir, read_adapter(dir)?)),
        None => None,
    };
    let source = source::resolve(spec)?;
    let (config, mut weights, tokenizer) = match &source {
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
    if let Some((dir, adapter)) = &adapter {
        merge(&mut weights, &config, adapter).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot merge into {}: {e:#}",
                dir.display(),
                source.path().display()
            )
        })?;
    }
    Ok(ModelParts {
        config,
        weights,
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
