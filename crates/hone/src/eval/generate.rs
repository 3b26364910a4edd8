//! Generation-based evaluation: answer every row of an evaluation dataset with the model and keep
//! the answers beside the references, as LLaMA-Factory's `do_predict` does
//! (`generated_predictions.jsonl`: one `{"prompt", "predict", "label"}` object per line).
//!
//! A row's last assistant turn is its reference; the turns before it, rendered through the chat
//! template with the generation prompt, are the prompt. Rows are generated in batches
//! (`generate::generate_batch`).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::chat::{ChatTemplate, Message};
use crate::data::Conversation;
use crate::generate::{generate_batch, GenerateConfig};
use crate::io::atomic;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

use super::metrics::{self, Lang, Pair, ScoreOptions};

/// One row of `generated_predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Prediction {
    /// The rendered prompt text, special tokens included.
    pub prompt: String,
    pub predict: String,
    pub label: String,
}

impl Prediction {
    pub fn pair(&self) -> Pair {
        Pair {
            prediction: self.predict.clone(),
            reference: self.label.clone(),
        }
    }
}

/// The prompt messages and the reference answer of a conversation: everything before its last
/// assistant turn, and that turn's content. A prompt without a reference (a conversation that ends
/// with the user's turn, see [`crate::data::load_prompts`]) is all prompt.
pub fn split_reference(conversation: &Conversation) -> (&[Message], Option<&str>) {
    match conversation.messages.split_last() {
        Some((last, before)) if last.role == "assistant" => (before, Some(&last.content)),
        _ => (&conversation.messages, None),
    }
}

/// Generates an answer for each conversation, `batch_size` rows at a time; `on_rows(done)` is
/// called after each batch. Rows are batched in order of prompt length, so a batch pads little.
/// A row without a reference gets an empty `label`, as in LLaMA-Factory's predictions.
pub fn predict(
    model: &Llama,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    conversations: &[Conversation],
    config: &GenerateConfig,
    batch_size: usize,
    mut on_rows: impl FnMut(usize),
) -> Result<Vec<Prediction>> {
    let mut predictions = Vec::with_capacity(conversations.len());
    let mut prompt_ids = Vec::with_capacity(conversations.len());
    for conversation in conversations {
        let (messages, label) = split_reference(conversation);
        let at = || conversation.origin.to_string();
        let prompt = template
            .render_with(messages, true, &conversation.template_vars())
            .with_context(at)?;
        prompt_ids.push(tokenizer.encode(&prompt, false).with_context(at)?);
        predictions.push(Prediction {
            prompt,
            predict: String::new(),
            label: label.unwrap_or_default().to_string(),
        });
    }
    let mut order: Vec<usize> = (0..prompt_ids.len()).collect();
    order.sort_by_key(|&i| prompt_ids[i].len());
    let mut done = 0;
    for batch in order.chunks(batch_size.max(1)) {
        let ids: Vec<Vec<u32>> = batch.iter().map(|&i| prompt_ids[i].clone()).collect();
        let generations = generate_batch(model, tokenizer, &ids, config).with_context(|| {
            let origins: Vec<String> = batch
                .iter()
                .map(|&i| conversations[i].origin.to_string())
                .collect();
            origins.join(", ")
        })?;
        for (&i, generation) in batch.iter().zip(generations) {
            predictions[i].predict = generation.text;
        }
        done += batch.len();
        on_rows(done);
    }
    Ok(predictions)
}

/// LLaMA-Factory's `predict_results.json` for `predictions` made in `seconds` over `batches`
/// batches: the mean per-row `predict_bleu-4` and `predict_rouge-1/2/l` of its
/// `ComputeSimilarity` (jieba words, ×100), and transformers' speed metrics.
pub fn predict_results(
    predictions: &[Prediction],
    seconds: f64,
    batches: usize,
) -> Result<serde_json::Value> {
    let pairs: Vec<Pair> = predictions.iter().map(Prediction::pair).collect();
    let options = ScoreOptions {
        lang: Lang::Zh,
        ..ScoreOptions::default()
    };
    let scores = metrics::score(&pairs, options)?;
    let round = |x: f64, digits: i32| (x * 10f64.powi(digits)).round() / 10f64.powi(digits);
    Ok(serde_json::json!({
        "predict_bleu-4": scores.bleu4_sentence_avg,
        "predict_rouge-1": scores.rouge1,
        "predict_rouge-2": scores.rouge2,
        "predict_rouge-l": scores.rouge_l,
        "predict_runtime": round(seconds, 4),
        "predict_samples_per_second": round(predictions.len() as f64 / seconds, 3),
        "predict_steps_per_second": round(batches as f64 / seconds, 3),
    }))
}

/// Writes the predictions as JSON Lines at `path`, atomically (a failure leaves no partial file).
pub fn write_predictions(path: &Path, predictions: &[Prediction]) -> Result<()> {
    atomic::write_file(path, |out| {
        for prediction in predictions {
            serde_json::to_writer(&mut *out, prediction)?;
            out.write_all(b"\n")?;
        }
        Ok(())
    })
    .with_context(|| format!("{}: cannot write", path.display()))
}
