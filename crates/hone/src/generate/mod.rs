//! Text generation: prefill the prompt, then one token at a time through the KV cache, streaming
//! text as it becomes final and stopping at end-of-turn tokens or stop strings.

pub mod sampling;
mod stop;

use anyhow::{bail, Result};
use candle_core::{IndexOp, Tensor};

pub use sampling::{Sampler, SamplingConfig};
use stop::StopScanner;

use crate::model::Llama;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Generation ends when the text contains one of these; the stop string is not returned.
    pub stop_strings: Vec<String>,
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            max_new_tokens: 256,
            sampling: SamplingConfig::default(),
            stop_strings: vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence / end-of-turn token (OpenAI's "stop").
    Eos,
    /// A user stop string.
    StopString,
    /// `max_new_tokens` reached, or the model's context is full (OpenAI's "length").
    Length,
}

#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids, including the final end-of-turn token when there was one.
    pub ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
}

/// Generate a completion of `prompt_ids`, calling `on_text` with each new piece of final text.
pub fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    cfg: &GenerateConfig,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    let context_size = model.config().max_position_embeddings;
    if prompt_ids.is_empty() {
        bail!("the prompt is empty (no text, and the tokenizer adds no BOS token): nothing to continue");
    }
    if prompt_ids.len() > context_size {
        bail!(
            "the prompt has {} tokens, more than the model's context of {context_size}",
            prompt_ids.len()
        );
    }
    // The model sees at most `context_size` positions; a full window ends generation like the limit.
    let max_new_tokens = cfg.max_new_tokens.min(context_size - prompt_ids.len());
    let stop_ids = tokenizer.stop_ids();
    let mut sampler = Sampler::new(cfg.sampling.clone());
    let mut cache = model.new_cache();
    let mut context = prompt_ids.to_vec();
    let mut ids = Vec::new();
    let mut scanner = StopScanner::new(&cfg.stop_strings);
    let mut input = prompt_ids.to_vec();
    let mut finish_reason = FinishReason::Length;
    while ids.len() < max_new_tokens {
        let logits = last_logits(model, &input, &mut cache)?;
        let next = sampler.next(&logits, &context);
        ids.push(next);
        context.push(next);
        if stop_ids.contains(&next) {
            finish_reason = FinishReason::Eos;
            break;
        }
        // Decoding the whole completion each step keeps multi-byte characters and SentencePiece
        // spacing right; it costs microseconds against a forward pass of milliseconds.
        let text = tokenizer.decode(&ids, true)?;
        let (fresh, stopped) = scanner.push(&text);
        on_text(fresh);
        if stopped {
            finish_reason = FinishReason::StopString;
            break;
        }
        input = vec![next];
    }
    if finish_reason != FinishReason::StopString {
        on_text(scanner.flush());
    }
    Ok(Generation {
        ids,
        text: scanner.text().to_string(),
        finish_reason,
        prompt_tokens: prompt_ids.len(),
    })
}

/// Feed `input` through the model (continuing `cache`) and return the last position's logits.
/// Only that position goes through the LM head: a long prompt's other positions need none.
pub fn last_logits(
    model: &Llama,
    input: &[u32],
    cache: &mut crate::model::Cache,
) -> Result<Vec<f32>> {
    let ids = Tensor::new(input, model.device())?.unsqueeze(0)?;
    let hidden = model.hidden_states(&ids, Some(cache))?;
    let last = hidden.i((0, input.len() - 1))?.unsqueeze(0)?;
    Ok(model.logits(&last)?.squeeze(0)?.to_vec1::<f32>()?)
}
