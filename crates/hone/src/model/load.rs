//! One call from the MODEL argument to a ready model and its tokenizer.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};

use super::config::ModelConfig;
use super::quantize::{self, BaseQuantization};
use super::{memory, weights, Llama, Weight};
use crate::adapters::merge::check_fits;
use crate::adapters::peft::read_config_if_present;
use crate::adapters::{merge, read_adapter};
use crate::io::gguf::GgufFile;
use crate::io::source::{self, ModelSource};
use crate::tokenizer::Tokenizer;

pub struct LoadedModel {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub source: ModelSource,
}

/// How a model's weights are held for inference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// Matrices in their stored type (quantized, f16, bf16), read in place from the file; a
    /// decoding step quantizes activations to 8 bits for the quantized ones, as llama.cpp does.
    #[default]
    Stored,
    /// Every weight expanded to f32 and adapters merged: the arithmetic of transformers, which the
    /// parity tests check to 1e-4.
    Exact,
}

/// Resolve `spec` (HF directory, GGUF file or Hub id) and load weights and tokenizer.
pub fn load(spec: &str, precision: Precision, device: &Device) -> Result<LoadedModel> {
    load_with_adapter(spec, None, precision, device)
}

/// [`load`], with the PEFT LoRA adapter in `adapter` (a directory): merged into the weights on the
/// exact path, applied beside the stored weights otherwise.
pub fn load_with_adapter(
    spec: &str,
    adapter: Option<&Path>,
    precision: Precision,
    device: &Device,
) -> Result<LoadedModel> {
    if precision == Precision::Exact {
        // A prompt-learning or LLaMA-Adapter adapter is not merged: it joins the model as it is.
        let prompt = match adapter {
            Some(dir) if read_config_if_present(dir)?.is_some_and(|c| !c.is_mergeable()) => {
                Some((dir, read_adapter(dir)?))
            }
            _ => None,
        };
        let merged = if prompt.is_some() { None } else { adapter };
        let w = load_weights(spec, merged, device)?;
        let mut model = Llama::from_weights(w.config, w.weights, device)
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", w.source.path().display()))?;
        if let Some((dir, adapter)) = prompt {
            model = model
                .with_prompt(&adapter)
                .map_err(|e| anyhow::anyhow!("{}: {e:#}", dir.display()))?;
        }
        return Ok(LoadedModel {
            model,
            tokenizer: w.tokenizer,
            source: w.source,
        });
    }
    let adapter = match adapter {
        Some(dir) => Some((dir, read_adapter(dir)?)),
        None => None,
    };
    let StoredWeights {
        config,
        weights,
        tokenizer,
        source,
    } = load_stored_weights(spec, device)?;
    if let Some((dir, adapter)) = &adapter {
        check_fits(&config, adapter, |name| weights.get(name).map(|w| w.dims())).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot apply to {}: {e:#}",
                dir.display(),
                source.path().display()
            )
        })?;
    }
    let model = Llama::from_stored(config, weights, adapter.as_ref().map(|(_, a)| a), device)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", source.path().display()))?;
    Ok(LoadedModel {
        model,
        tokenizer,
        source,
    })
}

/// A model's config, weights under HF names as [`weights::load_stored`] keeps them (matrices in
/// their stored type), and tokenizer.
pub struct StoredWeights {
    pub config: ModelConfig,
    pub weights: HashMap<String, Weight>,
    pub tokenizer: Tokenizer,
    pub source: ModelSource,
}

/// Resolves `spec` and maps its weights in their stored type (no adapter).
pub fn load_stored_weights(spec: &str, device: &Device) -> Result<StoredWeights> {
    let source = source::resolve(spec)?;
    memory::check_fits(&source, Precision::Stored)?;
    let (config, weights, tokenizer) = match &source {
        ModelSource::HfDir(dir) => {
            let (cfg, w) = weights::load_stored(&source, device)?;
            (cfg, w, Tokenizer::from_hf_dir(dir)?)
        }
        ModelSource::Gguf(path) => {
            let gguf = GgufFile::open_populated(path)?;
            let (cfg, w) = weights::load_gguf_stored(&gguf, device)?;
            (cfg, w, Tokenizer::from_gguf(&gguf)?)
        }
    };
    Ok(StoredWeights {
        config,
        weights,
        tokenizer,
        source,
    })
}

/// A model's config, f32 weights under HF names, and tokenizer, before a [`Llama`] is built
/// from them (for writing them out again).
pub struct LoadedWeights {
    pub config: ModelConfig,
    pub weights: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
    pub source: ModelSource,
}

/// Resolves `spec` and reads its config, weights and tokenizer, with the PEFT LoRA adapter in
/// `adapter` (a directory) merged into the weights.
pub fn load_weights(spec: &str, adapter: Option<&Path>, device: &Device) -> Result<LoadedWeights> {
    load_weights_with(spec, adapter, device, |_, _| Ok(()))
}

/// [`load_weights`] for an adapter trained with `quantization_bit` on a base that was quantized
/// at load: before merging, the decoder matrices are quantized to `trained_on` and dequantized,
/// giving the weights the adapter was trained against. A base that is already quantized is left
/// as it is (its dequantized weights are what training used). Returns whether it rounded them.
pub fn load_weights_quantized(
    spec: &str,
    adapter: &Path,
    trained_on: BaseQuantization,
    device: &Device,
) -> Result<(LoadedWeights, bool)> {
    let mut rounded = false;
    let loaded = load_weights_with(spec, Some(adapter), device, |source, weights| {
        if !quantize::is_quantized(&memory::stored_tensors(source)?) {
            quantize::round_trip_decoder_matrices(weights, trained_on)?;
            rounded = true;
        }
        Ok(())
    })?;
    Ok((loaded, rounded))
}

/// [`load_weights`], with `prepare` run on the f32 weights before the adapter is merged.
fn load_weights_with(
    spec: &str,
    adapter: Option<&Path>,
    device: &Device,
    prepare: impl FnOnce(&ModelSource, &mut HashMap<String, Tensor>) -> Result<()>,
) -> Result<LoadedWeights> {
    // Read the adapter first: a bad adapter fails before the model's weights are loaded.
    let adapter = match adapter {
        Some(dir) => Some((dir, read_adapter(dir)?)),
        None => None,
    };
    let source = source::resolve(spec)?;
    memory::check_fits(&source, Precision::Exact)?;
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
    prepare(&source, &mut weights)?;
    if let Some((dir, adapter)) = &adapter {
        merge(&mut weights, &config, adapter).map_err(|e| {
            anyhow::anyhow!(
                "{}: cannot merge into {}: {e:#}",
                dir.display(),
                source.path().display()
            )
        })?;
    }
    Ok(LoadedWeights {
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
