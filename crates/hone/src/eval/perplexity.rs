//! Perplexity over a text corpus.
//!
//! Definition (the one transformers' causal-LM loss gives when rows are scored one by one and the
//! losses combined token-weighted): each document is tokenized with the tokenizer's default special
//! tokens (BOS when its config says so) and truncated to `max_length`; every token after the first is
//! predicted from the ones before it. mean NLL = Σ −log p(token | prefix) / number of predicted tokens,
//! summed over all documents; perplexity = exp(mean NLL).
//!
//! [`text_perplexities`] gives the per-text figures Hugging Face `evaluate` reports, by its rules.
//!
//! [`answer_perplexity`] scores reference answers given their prompts instead: only the answer's
//! tokens count, so it says how likely a model finds the answers it was (or was not) tuned to give.

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};
use candle_core::Tensor;
use serde::Serialize;

use super::generate::split_reference;
use super::json_kind;
use crate::chat::{ChatTemplate, Message};
use crate::data::Conversation;
use crate::kernels::cross_entropy::IGNORE_INDEX;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Serialize)]
pub struct PerplexityReport {
    pub perplexity: f64,
    pub mean_nll: f64,
    /// Tokens that were predicted (each document's length minus one).
    pub n_tokens: usize,
    pub n_documents: usize,
    /// Documents of a single token, which predict nothing.
    pub n_documents_too_short: usize,
}

impl PerplexityReport {
    /// The report for an NLL summed over `n_tokens` (at least one) predicted tokens.
    fn from_sums(
        total_nll: f64,
        n_tokens: usize,
        n_documents: usize,
        n_documents_too_short: usize,
    ) -> PerplexityReport {
        let mean_nll = total_nll / n_tokens as f64;
        PerplexityReport {
            perplexity: mean_nll.exp(),
            mean_nll,
            n_tokens,
            n_documents,
            n_documents_too_short,
        }
    }
}

/// Read documents: JSONL rows with a string `text` field, or plain text with one document per line.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let content = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let is_jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json")
        || content.trim_start().starts_with('{');
    let mut docs = Vec::new();
    for (i, line) in content.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if !is_jsonl {
            docs.push(line.to_string());
            continue;
        }
        let at = || format!("{}:{}", path.display(), i + 1);
        let row: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", at()))?;
        match row.get("text") {
            Some(serde_json::Value::String(s)) => docs.push(s.clone()),
            Some(other) => bail!(
                "{}: field `text`: expected a string, found {}",
                at(),
                json_kind(other)
            ),
            None => bail!("{}: field `text`: missing", at()),
        }
    }
    if docs.is_empty() {
        bail!("{}: no documents", path.display());
    }
    Ok(docs)
}

/// Score `documents` under `model`.
pub fn perplexity(
    model: &Llama,
    tokenizer: &Tokenizer,
    documents: &[String],
    max_length: usize,
) -> Result<PerplexityReport> {
    let mut total_nll = 0f64;
    let mut n_tokens = 0usize;
    let mut too_short = 0usize;
    for doc in documents {
        let mut ids = tokenizer.encode(doc, true)?;
        ids.truncate(max_length);
        if ids.len() < 2 {
            too_short += 1;
            continue;
        }
        let (nll, predicted) = sequence_nll(model, &ids)?;
        total_nll += nll;
        n_tokens += predicted;
    }
    if n_tokens == 0 {
        bail!("no document has two or more tokens: nothing to predict");
    }
    Ok(PerplexityReport::from_sums(
        total_nll,
        n_tokens,
        documents.len(),
        too_short,
    ))
}

/// Per-text perplexities and their mean, as Hugging Face `evaluate`'s `perplexity` metric reports
/// them (the guide's `load("perplexity").compute(predictions=texts, model_id=...)`).
#[derive(Debug, Clone, Serialize)]
pub struct TextPerplexities {
    pub perplexities: Vec<f64>,
    pub mean_perplexity: f64,
}

/// [`TextPerplexities`] of `documents` by `evaluate`'s rules, which differ from [`perplexity`]'s:
/// each text is tokenized without special tokens, cut to `max_length - 1` tokens, and the BOS
/// token is put before it whatever the tokenizer's config says; every text token is predicted (the
/// first from BOS alone); a text's perplexity is exp of its mean NLL, and `mean_perplexity` the
/// plain mean of those, so short texts weigh as much as long ones.
pub fn text_perplexities(
    model: &Llama,
    tokenizer: &Tokenizer,
    documents: &[String],
    max_length: usize,
) -> Result<TextPerplexities> {
    let bos = tokenizer.bos_id().context(
        "evaluate's perplexity puts a BOS token before each text, and this tokenizer has none",
    )?;
    let mut perplexities = Vec::with_capacity(documents.len());
    for (i, doc) in documents.iter().enumerate() {
        let mut ids = vec![bos];
        ids.extend(tokenizer.encode(doc, false)?);
        ids.truncate(max_length.max(2));
        ensure!(
            ids.len() >= 2,
            "document {}: no tokens (evaluate requires at least one per text)",
            i + 1
        );
        let (nll, predicted) = sequence_nll(model, &ids)?;
        perplexities.push((nll / predicted as f64).exp());
    }
    let mean_perplexity = perplexities.iter().sum::<f64>() / perplexities.len().max(1) as f64;
    Ok(TextPerplexities {
        perplexities,
        mean_perplexity,
    })
}

/// Perplexity of each conversation's reference answer (its last assistant turn) given the turns
/// before it; conversations without one are left out (`n_documents` counts those scored).
///
/// The prompt is rendered through `template` with the generation prompt, the conversation through
/// it without; the tokens of the conversation that reach past the prompt are scored: the answer and
/// whatever the template closes the turn with (`<|im_end|>\n` in ChatML), the tokens training takes
/// its loss on. A conversation longer than `max_length` tokens loses the start of its prompt; one
/// whose answer then has no predicted token counts as too short.
pub fn answer_perplexity(
    model: &Llama,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    conversations: &[Conversation],
    max_length: usize,
) -> Result<PerplexityReport> {
    let (mut total_nll, mut n_tokens) = (0f64, 0usize);
    let (mut n_documents, mut too_short) = (0usize, 0usize);
    for conversation in conversations {
        let (messages, Some(answer)) = split_reference(conversation) else {
            continue;
        };
        n_documents += 1;
        let at = || conversation.origin.to_string();
        let (ids, labels) =
            answer_tokens(tokenizer, template, messages, answer).with_context(at)?;
        let cut = ids.len().saturating_sub(max_length);
        let input = Tensor::new(&ids[cut..], model.device())?.unsqueeze(0)?;
        let (nll, n) = model
            .labelled_nll(&input, &labels[cut..])
            .with_context(at)?;
        if n == 0 {
            too_short += 1;
        }
        total_nll += nll;
        n_tokens += n;
    }
    if n_documents == 0 {
        bail!("no conversation has a reference answer to score");
    }
    if n_tokens == 0 {
        bail!("no reference answer has a token left to predict");
    }
    Ok(PerplexityReport::from_sums(
        total_nll,
        n_tokens,
        n_documents,
        too_short,
    ))
}

/// The token ids of the conversation `messages` + `answer` and their labels: each token's own id
/// where it reaches past the rendered prompt, else [`IGNORE_INDEX`].
pub fn answer_tokens(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    messages: &[Message],
    answer: &str,
) -> Result<(Vec<u32>, Vec<i64>)> {
    let prompt = template.render(messages, true)?;
    let mut conversation = messages.to_vec();
    conversation.push(Message::new("assistant", answer));
    let text = template.render(&conversation, false)?;
    ensure!(
        text.starts_with(&prompt),
        "the chat template is not prefix-consistent: the conversation rendered with its answer \
         does not start with the prompt rendered with the generation prompt, so the answer's \
         tokens cannot be located"
    );
    let encoding = tokenizer
        .inner()
        .encode(text.as_str(), false)
        .map_err(|e| anyhow!("cannot tokenize the rendered conversation: {e}"))?;
    let ids = encoding.get_ids().to_vec();
    let labels = ids
        .iter()
        .zip(encoding.get_offsets())
        // A zero-width token (a trimmed lone space) counts where it stands.
        .map(|(&id, &(start, end))| {
            if end > prompt.len() || start >= prompt.len() {
                i64::from(id)
            } else {
                IGNORE_INDEX
            }
        })
        .collect();
    Ok((ids, labels))
}

/// Σ −log p(ids[t+1] | ids[..=t]) over the sequence, and the number of predictions: one per
/// token but the first, or one per token when a prompt-learning adapter's virtual tokens come
/// before it (the last of them predicts the first, as PEFT's loss counts it).
pub fn sequence_nll(model: &Llama, ids: &[u32]) -> Result<(f64, usize)> {
    let input = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    model.next_token_nll(&input)
}

#[cfg(test)]
mod tests;
