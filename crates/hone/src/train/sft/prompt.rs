//! Setting up a prompt-tuning, P-tuning or prefix-tuning run: the PEFT config it saves, and where
//! its virtual tokens start — PEFT's `prompt_tuning_init` (random, a text's token embeddings, or
//! sampled vocabulary rows), prefix tuning's `init_weights`, or the prompt a run continues
//! (`adapter_name_or_path`).

use anyhow::{bail, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Map, Value};

use crate::adapters::{Adapter, PromptConfig, PromptMethod};
use crate::model::virtual_tokens::prefix_width;
use crate::model::ModelConfig;
use crate::tokenizer::Tokenizer;
use crate::train::config::{FinetuningType, PromptTuningInit, SftConfig};
use crate::train::model::TrainModel;
use crate::train::prompt::{normal, VirtualPrompt};

/// The prompt-learning method of a `finetuning_type` (None for the others).
pub fn method(finetuning_type: FinetuningType) -> Option<PromptMethod> {
    match finetuning_type {
        FinetuningType::PromptTuning => Some(PromptMethod::PromptTuning),
        FinetuningType::PTuning => Some(PromptMethod::PTuning),
        FinetuningType::Prefix => Some(PromptMethod::PrefixTuning),
        _ => None,
    }
}

/// The width of a virtual token as PEFT's `token_dim`: the hidden size, or for prefix tuning one
/// layer's keys (key/value heads × head_dim).
fn token_dim(method: PromptMethod, model: &ModelConfig) -> usize {
    match method {
        PromptMethod::PrefixTuning => prefix_width(model),
        _ => model.hidden_size,
    }
}

/// The encoder's hidden width: `encoder_hidden_size`, else `token_dim` (PEFT's default).
fn encoder_hidden(config: &SftConfig, model: &ModelConfig, method: PromptMethod) -> usize {
    config
        .method
        .encoder_hidden_size
        .map_or(token_dim(method, model), |h| h as usize)
}

/// The widths of the trained embedding's rows and of the encoder's layers in turn (empty without
/// one): P-tuning `d → h → h → d`; prefix tuning with `prefix_projection` `d → h → layers · 2 · d`,
/// without it a `layers · 2 · d` table.
fn shapes(config: &SftConfig, model: &ModelConfig, method: PromptMethod) -> (usize, Vec<usize>) {
    let (d, h) = (
        token_dim(method, model),
        encoder_hidden(config, model, method),
    );
    let table = model.num_hidden_layers * 2 * d;
    match method {
        PromptMethod::PromptTuning => (d, Vec::new()),
        PromptMethod::PTuning => (d, vec![d, h, h, d]),
        PromptMethod::PrefixTuning if config.method.prefix_projection => (d, vec![d, h, table]),
        PromptMethod::PrefixTuning => (table, Vec::new()),
    }
}

/// The config the run's adapter is saved with, as PEFT writes it.
pub fn prompt_config(
    config: &SftConfig,
    model: &ModelConfig,
    method: PromptMethod,
) -> PromptConfig {
    let m = &config.method;
    let fields = match method {
        PromptMethod::PromptTuning => {
            let text = m.prompt_tuning_init == PromptTuningInit::Text;
            json!({
                "prompt_tuning_init": m.prompt_tuning_init.peft_name(),
                "prompt_tuning_init_text": m.prompt_tuning_init_text,
                "tokenizer_name_or_path": text.then(|| config.model.model_name_or_path.clone()),
                "tokenizer_kwargs": null,
            })
        }
        PromptMethod::PTuning => json!({
            "encoder_reparameterization_type": "MLP",
            "encoder_hidden_size": encoder_hidden(config, model, method),
            "encoder_num_layers": 2,
            "encoder_dropout": 0.0,
        }),
        PromptMethod::PrefixTuning => json!({
            "encoder_hidden_size": encoder_hidden(config, model, method),
            "prefix_projection": m.prefix_projection,
            "init_weights": m.init_weights,
        }),
    };
    let fields: Map<String, Value> = match fields {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    };
    PromptConfig::new(method, m.num_virtual_tokens as usize, model, fields)
}

/// Gives `model` its virtual tokens: those of `start` (a prompt-tuning or prefix-tuning adapter
/// the run continues) or PEFT's start; an encoder starts as `nn.Linear` layers do (prefix tuning's
/// last layer at zero with `init_weights: zero`).
pub fn attach(
    config: &SftConfig,
    model: &mut TrainModel,
    tokenizer: &Tokenizer,
    start: Option<&Adapter>,
) -> Result<()> {
    let Some(method) = method(config.method.finetuning_type) else {
        return Ok(());
    };
    let cfg = model.config().clone();
    let (width, encoder) = shapes(config, &cfg, method);
    let n = config.method.num_virtual_tokens as usize;
    let values = match start {
        Some(adapter) => continued(config, adapter, method, (n, width))?,
        None => initial(config, model, tokenizer, (n, width))?,
    };
    let mut prompt = VirtualPrompt::new(method, values, (n, width), &encoder, config.train.seed);
    if config.method.init_weights.is_some() {
        if let Some(last) = prompt.encoder.last_mut() {
            last.weight.value.fill(0.0);
            last.bias.value.fill(0.0);
        }
    }
    model.prompt = Some(prompt);
    Ok(())
}

/// The virtual tokens of an adapter a run continues.
fn continued(
    config: &SftConfig,
    adapter: &Adapter,
    method: PromptMethod,
    (n, width): (usize, usize),
) -> Result<Vec<f32>> {
    if method == PromptMethod::PTuning {
        bail!(
            "adapter_name_or_path: a P-tuning adapter holds its encoder's output, not the encoder (as PEFT saves it), \
             so P-tuning cannot continue from it; continue it as finetuning_type: prompt_tuning, or resume a \
             checkpoint (resume_from_checkpoint), which keeps the encoder"
        );
    }
    if config.method.prefix_projection {
        bail!(
            "adapter_name_or_path: a prefix-tuning adapter holds the projection's output, not the projection (as \
             PEFT saves it), so a run with prefix_projection: true cannot continue from it; continue it without \
             prefix_projection, or resume a checkpoint (resume_from_checkpoint), which keeps the projection"
        );
    }
    let prompt = adapter.prompt.as_deref().unwrap_or_default();
    if adapter.prompt_width() != Some(width) || prompt.len() != n * width {
        let what = match method {
            PromptMethod::PrefixTuning => "every layer's keys and values",
            _ => "the model's hidden size",
        };
        bail!("adapter_name_or_path: its prompt_embeddings are not [{n}, {width}] (num_virtual_tokens, {what})");
    }
    Ok(prompt.to_vec())
}

/// PEFT's start: N(0, 1) (an encoder's input too), a text's token embeddings tiled or cut to `n`
/// rows, or `n` rows of the embedding matrix drawn uniformly; prefix tuning's table at zero with
/// `init_weights: zero`.
fn initial(
    config: &SftConfig,
    model: &TrainModel,
    tokenizer: &Tokenizer,
    (n, width): (usize, usize),
) -> Result<Vec<f32>> {
    let m = &config.method;
    let mut rng = StdRng::seed_from_u64(config.train.seed ^ 0x7669_7274);
    if m.finetuning_type == FinetuningType::Prefix
        && m.init_weights.is_some()
        && !m.prefix_projection
    {
        return Ok(vec![0.0; n * width]);
    }
    let ids: Vec<u32> = match m.prompt_tuning_init {
        PromptTuningInit::Random => return Ok(normal(n * width, &mut rng)),
        PromptTuningInit::Text => {
            let text = m.prompt_tuning_init_text.as_deref().unwrap_or_default();
            let ids = tokenizer.encode(text, true)?;
            if ids.is_empty() {
                bail!("prompt_tuning_init_text: {text:?} has no tokens");
            }
            ids.iter().copied().cycle().take(n).collect()
        }
        PromptTuningInit::SampleVocab => {
            let vocab = model.config().vocab_size as u32;
            (0..n).map(|_| rng.random_range(0..vocab)).collect()
        }
    };
    Ok(model.token_embeddings(&ids))
}
