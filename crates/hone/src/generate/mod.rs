//! Text generation: prefill the prompt, then one token at a time through the KV cache, streaming
//! text as it becomes final and stopping at end-of-turn tokens or stop strings.

mod batch;
pub mod sampling;
mod sequence;
mod stop;

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::Tensor;

pub use batch::generate_batch;
pub use sampling::{Sampler, SamplingConfig};
pub use sequence::Sequence;

use crate::model::Llama;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct GenerateConfig {
    pub max_new_tokens: usize,
    pub sampling: SamplingConfig,
    /// Generation ends when the text contains one of these; the stop string is not returned.
    pub stop_strings: Vec<String>,
    /// Keep generating past end-of-sequence / end-of-turn tokens (for benchmarks).
    pub ignore_eos: bool,
}

impl GenerateConfig {
    /// The token ids that end a generation.
    fn stop_ids(&self, tokenizer: &Tokenizer) -> Vec<u32> {
        if self.ignore_eos {
            Vec::new()
        } else {
            tokenizer.stop_ids()
        }
    }
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            max_new_tokens: 256,
            sampling: SamplingConfig::default(),
            stop_strings: vec![],
            ignore_eos: false,
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
    /// Seconds spent on the prompt's forward pass (which yields the first new token).
    pub prompt_seconds: f64,
    /// Seconds spent on the one-token steps after it.
    pub decode_seconds: f64,
}

/// Generate a completion of `prompt_ids`, calling `on_text` with each new piece of final text.
pub fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    cfg: &GenerateConfig,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    let max_new_tokens = new_token_budget(model, prompt_ids.len(), cfg)?;
    let stop_ids = cfg.stop_ids(tokenizer);
    let mut cache = model.new_cache();
    let mut sequence = Sequence::new(prompt_ids, cfg);
    let mut input = prompt_ids.to_vec();
    let (mut prompt_seconds, mut decode_seconds) = (0.0, 0.0);
    while sequence.generated() < max_new_tokens {
        let first = sequence.generated() == 0;
        let start = Instant::now();
        let logits = last_logits(model, &input, 1, &mut cache)?;
        let (next, fresh) = sequence.step(&logits, tokenizer, &stop_ids)?;
        let seconds = start.elapsed().as_secs_f64();
        if first {
            prompt_seconds = seconds;
        } else {
            decode_seconds += seconds;
        }
        on_text(fresh);
        if sequence.is_finished() {
            break;
        }
        input = vec![next];
    }
    on_text(sequence.finish());
    Ok(Generation {
        prompt_seconds,
        decode_seconds,
        ..sequence.into_generation()
    })
}

/// How many tokens a prompt of `prompt_len` tokens may be continued by: `max_new_tokens`, or fewer
/// when the model's context fills first (a full window ends generation like the limit).
fn new_token_budget(model: &Llama, prompt_len: usize, cfg: &GenerateConfig) -> Result<usize> {
    let context_size = model.config().max_position_embeddings;
    if prompt_len == 0 {
        bail!("the prompt is empty (no text, and the tokenizer adds no BOS token): nothing to continue");
    }
    if prompt_len > context_size {
        bail!(
            "the prompt has {prompt_len} tokens, more than the model's context of {context_size}"
        );
    }
    Ok(cfg.max_new_tokens.min(context_size - prompt_len))
}

/// Feed `input` — `rows` rows of equal length, row-major — through the model (continuing
/// `cache`) and return each row's last-position logits, `[rows, vocab]` flattened. Only that
/// position goes through the LM head: a long prompt's other positions need none.
pub fn last_logits(
    model: &Llama,
    input: &[u32],
    rows: usize,
    cache: &mut crate::model::Cache,
) -> Result<Vec<f32>> {
    let t = input.len() / rows;
    let ids = Tensor::from_slice(input, (rows, t), model.device())?;
    let hidden = model.hidden_states(&ids, Some(cache))?;
    let last = hidden.narrow(1, t - 1, 1)?;
    Ok(model.logits(&last)?.flatten_all()?.to_vec1::<f32>()?)
}
