//! One sequence's decoding state: its sampler, the tokens so far and the stop scanner. Single and
//! batched generation drive it the same way — feed the last position's logits, get the newly
//! final text — so both decode, stop and report identically.

use anyhow::Result;

use super::sampling::Sampler;
use super::stop::StopScanner;
use super::{FinishReason, GenerateConfig, Generation};
use crate::tokenizer::Tokenizer;

pub struct Sequence {
    sampler: Sampler,
    /// Prompt and generated ids: what the repetition penalty looks at.
    context: Vec<u32>,
    ids: Vec<u32>,
    scanner: StopScanner,
    prompt_tokens: usize,
    finish_reason: Option<FinishReason>,
}

impl Sequence {
    pub fn new(prompt_ids: &[u32], cfg: &GenerateConfig) -> Self {
        Sequence {
            sampler: Sampler::new(cfg.sampling.clone()),
            context: prompt_ids.to_vec(),
            ids: Vec::new(),
            scanner: StopScanner::new(&cfg.stop_strings),
            prompt_tokens: prompt_ids.len(),
            finish_reason: None,
        }
    }

    /// Choose the next token from the last position's logits and return it with the newly final
    /// text. After an end-of-turn token or a stop string the sequence is finished.
    pub fn step(
        &mut self,
        logits: &[f32],
        tokenizer: &Tokenizer,
        stop_ids: &[u32],
    ) -> Result<(u32, &str)> {
        let next = self.sampler.next(logits, &self.context, &self.ids);
        self.ids.push(next);
        self.context.push(next);
        if stop_ids.contains(&next) {
            self.finish_reason = Some(FinishReason::Eos);
            return Ok((next, ""));
        }
        // Decoding the whole completion each step keeps multi-byte characters and SentencePiece
        // spacing right; it costs microseconds against a forward pass of milliseconds.
        let text = tokenizer.decode(&self.ids, true)?;
        let (fresh, stopped) = self.scanner.push(&text);
        if stopped {
            self.finish_reason = Some(FinishReason::StopString);
        }
        Ok((next, fresh))
    }

    pub fn is_finished(&self) -> bool {
        self.finish_reason.is_some()
    }

    pub fn generated(&self) -> usize {
        self.ids.len()
    }

    /// Why the sequence ended (None while it runs).
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish_reason
    }

    /// End the sequence (at the token limit if nothing stopped it) and return the text still held
    /// back, which a stop string would have cut.
    pub fn finish(&mut self) -> &str {
        match self.finish_reason {
            Some(FinishReason::StopString) => "",
            None => {
                self.finish_reason = Some(FinishReason::Length);
                self.scanner.flush()
            }
            Some(_) => self.scanner.flush(),
        }
    }

    /// The result; call after `finish`.
    pub fn into_generation(self) -> Generation {
        Generation {
            text: self.scanner.text().to_string(),
            finish_reason: self.finish_reason.unwrap_or(FinishReason::Length),
            prompt_tokens: self.prompt_tokens,
            ids: self.ids,
            prompt_seconds: 0.0,
            decode_seconds: 0.0,
        }
    }
}
