//! Setting up a prompt-tuning or P-tuning run: the PEFT config it saves, and where its virtual
//! tokens start — PEFT's `prompt_tuning_init` (random, a text's token embeddings, or sampled
//! vocabulary rows), or the prompt a run continues (`adapter_name_or_path`).

use anyhow::{bail, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::{json, Map, Value};

use crate::adapters::{Adapter, PromptConfig, PromptMethod};
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
        _ => None,
    }
}

/// The encoder's hidden width: `encoder_hidden_size`, else the model's (PEFT's default).
fn encoder_hidden(config: &SftConfig, model: &ModelConfig) -> usize {
    config
        .method
        .encoder_hidden_size
        .map_or(model.hidden_size, |h| h as usize)
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
            "encoder_hidden_size": encoder_hidden(config, model),
            "encoder_num_layers": 2,
            "encoder_dropout": 0.0,
        }),
    };
    let fields: Map<String, Value> = match fields {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    };
    let mut peft = PromptConfig::new(method, m.num_virtual_tokens as usize, model, fields);
    peft.base_model_name_or_path = Some(config.model.model_name_or_path.clone());
    peft
}

/// Gives `model` its virtual tokens: those of `start` (a prompt-tuning adapter the run continues)
/// or PEFT's `prompt_tuning_init`; P-tuning's encoder starts as `nn.Linear` layers do.
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
    let (n, hidden) = (config.method.num_virtual_tokens as usize, cfg.hidden_size);
    let seed = config.train.seed;
    let values = match start {
        Some(adapter) => continued(adapter, method, (n, hidden))?,
        None => initial(config, model, tokenizer, (n, hidden))?,
    };
    let encoder = encoder_hidden(config, &cfg);
    model.prompt = Some(VirtualPrompt::new(
        method,
        values,
        (n, hidden),
        encoder,
        seed,
    ));
    Ok(())
}

/// The virtual tokens of an adapter a run continues.
fn continued(
    adapter: &Adapter,
    method: PromptMethod,
    (n, hidden): (usize, usize),
) -> Result<Vec<f32>> {
    if method == PromptMethod::PTuning {
        bail!(
            "adapter_name_or_path: a P-tuning adapter holds its encoder's output, not the encoder (as PEFT saves it), \
             so P-tuning cannot continue from it; continue it as finetuning_type: prompt_tuning, or resume a \
             checkpoint (resume_from_checkpoint), which keeps the encoder"
        );
    }
    let prompt = adapter.prompt.as_deref().unwrap_or_default();
    if adapter.prompt_width() != Some(hidden) || prompt.len() != n * hidden {
        bail!(
            "adapter_name_or_path: its prompt_embeddings are not [{n}, {hidden}] (num_virtual_tokens, the model's \
             hidden size)"
        );
    }
    Ok(prompt.to_vec())
}

/// PEFT's start: N(0, 1) (P-tuning's encoder input too), a text's token embeddings tiled or cut
/// to `n` rows, or `n` rows of the embedding matrix drawn uniformly.
fn initial(
    config: &SftConfig,
    model: &TrainModel,
    tokenizer: &Tokenizer,
    (n, hidden): (usize, usize),
) -> Result<Vec<f32>> {
    let m = &config.method;
    let mut rng = StdRng::seed_from_u64(config.train.seed ^ 0x7669_7274);
    let ids: Vec<u32> = match m.prompt_tuning_init {
        PromptTuningInit::Random => return Ok(normal(n * hidden, &mut rng)),
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
