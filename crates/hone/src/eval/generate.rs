//! Generation-based evaluation: answer every row of an evaluation dataset with the model and keep
//! the answers beside the references, as LLaMA-Factory's `do_predict` does
//! (`generated_predictions.jsonl`: one `{"prompt", "predict", "label"}` object per line).
//!
//! A row's last assistant turn is its reference; the turns before it, rendered through the chat
//! template with the generation prompt, are the prompt. Rows are generated one at a time (no
//! batching).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::chat::{ChatTemplate, Message};
use crate::data::Conversation;
use crate::generate::{generate, GenerateConfig};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

use super::metrics::Pair;

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

/// Generates an answer for each conversation; `on_row(done)` is called after each row. A row
/// without a reference gets an empty `label`, as in LLaMA-Factory's predictions.
pub fn predict(
    model: &Llama,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    conversations: &[Conversation],
    config: &GenerateConfig,
    mut on_row: impl FnMut(usize),
) -> Result<Vec<Prediction>> {
    let mut predictions = Vec::with_capacity(conversations.len());
    for (i, conversation) in conversations.iter().enumerate() {
        let (messages, label) = split_reference(conversation);
        let at = || conversation.origin.to_string();
        let prompt = template.render(messages, true).with_context(at)?;
        let ids = tokenizer.encode(&prompt, false).with_context(at)?;
        let generation = generate(model, tokenizer, &ids, config, |_| {}).with_context(at)?;
        predictions.push(Prediction {
            prompt,
            predict: generation.text,
            label: label.unwrap_or_default().to_string(),
        });
        on_row(i + 1);
    }
    Ok(predictions)
}

/// Writes the predictions as JSON Lines at `path`, through a temporary file renamed into place so
/// a failure leaves no partial file.
pub fn write_predictions(path: &Path, predictions: &[Prediction]) -> Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let write = || -> Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        for prediction in predictions {
            serde_json::to_writer(&mut out, prediction)?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        e.context(format!("{}: cannot write", path.display()))
    })
}
