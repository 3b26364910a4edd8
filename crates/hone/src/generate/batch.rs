//! Batched generation: several prompts decoded together, one forward pass per step for all of
//! them. On a CPU a decoding step is bound by reading the weights, so a step for eight rows costs
//! little more than a step for one.
//!
//! Prompts are left-padded to a common width and the cache masks each row's padding keys.
//! Positions count from the padded start: RoPE makes attention depend only on the distance between
//! tokens, so a row's real tokens get the scores they would get alone (up to float rounding).
//! A row that finishes leaves the batch — its cache rows are dropped — so the others run on at the
//! smaller size.

use anyhow::{Context, Result};

use super::{last_logits, new_token_budget, GenerateConfig, Generation, Sequence};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

/// Any id in the vocabulary: padding positions are masked out of every attention.
const PAD_ID: u32 = 0;

/// Generate a completion for each prompt, all in one batch; results are in prompt order.
///
/// Every row may generate up to `max_new_tokens`, or fewer when the longest prompt plus that
/// would overflow the model's context.
pub fn generate_batch(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompts: &[Vec<u32>],
    cfg: &GenerateConfig,
) -> Result<Vec<Generation>> {
    for (i, prompt) in prompts.iter().enumerate() {
        new_token_budget(model, prompt.len(), cfg).with_context(|| format!("prompt {i}"))?;
    }
    let Some(width) = prompts.iter().map(Vec::len).max() else {
        return Ok(Vec::new());
    };
    let max_new_tokens = new_token_budget(model, width, cfg)?;
    let left_pad: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
    let mut input: Vec<u32> = prompts
        .iter()
        .zip(&left_pad)
        .flat_map(|(prompt, &pad)| std::iter::repeat_n(PAD_ID, pad).chain(prompt.iter().copied()))
        .collect();
    let mut cache = model.new_batch_cache(left_pad);
    let mut sequences: Vec<Sequence> = prompts.iter().map(|p| Sequence::new(p, cfg)).collect();
    // Indices into `sequences` of the rows still in the batch, in cache-row order.
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    let stop_ids = cfg.stop_ids(tokenizer);
    let vocab = model.config().vocab_size;
    for _ in 0..max_new_tokens {
        let logits = last_logits(model, &input, active.len(), &mut cache)?;
        let mut kept_rows = Vec::with_capacity(active.len());
        input.clear();
        for (row, &i) in active.iter().enumerate() {
            let row_logits = &logits[row * vocab..(row + 1) * vocab];
            let (next, _) = sequences[i].step(row_logits, tokenizer, &stop_ids)?;
            if !sequences[i].is_finished() {
                kept_rows.push(row);
                input.push(next);
            }
        }
        if kept_rows.is_empty() {
            break;
        }
        if kept_rows.len() < active.len() {
            cache.retain_rows(&kept_rows);
            active = kept_rows.iter().map(|&row| active[row]).collect();
        }
    }
    Ok(sequences
        .into_iter()
        .map(|mut sequence| {
            sequence.finish();
            sequence.into_generation()
        })
        .collect())
}
