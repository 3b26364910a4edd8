//! Perplexity over a text corpus.
//!
//! Definition (the one transformers' causal-LM loss gives when rows are scored one by one and the
//! losses combined token-weighted): each document is tokenized with the tokenizer's default special
//! tokens (BOS when its config says so) and truncated to `max_length`; every token after the first is
//! predicted from the ones before it. mean NLL = Σ −log p(token | prefix) / number of predicted tokens,
//! summed over all documents; perplexity = exp(mean NLL).

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::Serialize;

use super::json_kind;
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
        total_nll += sequence_nll(model, &ids)?;
        n_tokens += ids.len() - 1;
    }
    if n_tokens == 0 {
        bail!("no document has two or more tokens: nothing to predict");
    }
    let mean_nll = total_nll / n_tokens as f64;
    Ok(PerplexityReport {
        perplexity: mean_nll.exp(),
        mean_nll,
        n_tokens,
        n_documents: documents.len(),
        n_documents_too_short: too_short,
    })
}

/// Σ −log p(ids[t+1] | ids[..=t]) over the sequence.
pub fn sequence_nll(model: &Llama, ids: &[u32]) -> Result<f64> {
    let input = Tensor::new(ids, model.device())?.unsqueeze(0)?;
    Ok(model.next_token_nll(&input)?.0)
}
