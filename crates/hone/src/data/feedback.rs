//! KTO data (`stage: kto`): single responses tagged desirable or not (`kto_tag`), and the
//! mismatched responses its reference point is measured on.
//!
//! **Rows**: a conversation ending with the assistant's response and a boolean in the column
//! `dataset_info.json` names as `kto_tag` (LLaMA-Factory's `kto_en_demo`: `"label": true`).
//!
//! **Encoding**, as LLaMA-Factory's feedback processor: each row gives its own example (the
//! response after its prompt, labelled on the response only) and a KL example: its prompt with
//! the previous row's response (rotated within blocks of 1000 rows, LLaMA-Factory's
//! preprocessing batches: row 0 of a block takes the block's last response). Each is cut to
//! `cutoff_len` on its own, the prompt keeping its end and the response its start.

use std::path::Path;

use anyhow::{bail, Result};

use super::convert::convert_feedback;
use super::encode::encode_last_response;
use super::info;
use super::load::{convert_rows, SkipSummary};
use super::preference::cut_one;
use super::record::FileUse;
use super::rows::read_rows;
use super::{Conversation, Example};
use crate::chat::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;

/// One KTO row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedbackRow {
    /// The conversation, ending with the response.
    pub conversation: Conversation,
    pub desirable: bool,
}

/// The rows of a dataset, in file and row order, and the rows left out.
#[derive(Debug, Clone)]
pub struct LoadedFeedback {
    pub rows: Vec<FeedbackRow>,
    pub skipped: SkipSummary,
    pub files: Vec<FileUse>,
}

/// LLaMA-Factory's `preprocessing_batch_size`: the KL responses rotate within blocks this long.
const ROTATION_BLOCK: usize = 1000;

/// Loads the KTO rows of `dataset` (names in `dataset_dir/dataset_info.json`, or `.json`/`.jsonl`
/// paths whose rows have a `kto_tag` column).
pub fn load_feedback(
    dataset: &str,
    dataset_dir: &Path,
    skip_invalid_rows: bool,
) -> Result<LoadedFeedback> {
    let mut loaded = LoadedFeedback {
        rows: Vec::new(),
        skipped: SkipSummary::default(),
        files: Vec::new(),
    };
    for source in info::resolve(dataset, dataset_dir)? {
        source.refuse_ranking("KTO learns from single responses tagged kto_tag")?;
        let raw = read_rows(&source.path)?;
        let format = match &source.format {
            Some(format) => format.clone(),
            None => super::load::detect_format(&source.path, &raw)?,
        };
        let total = raw.len();
        let (rows, skipped) = convert_rows(raw, skip_invalid_rows, |row| {
            let (conversation, desirable) = convert_feedback(row, &format, &source.path)?;
            Ok(FeedbackRow {
                conversation,
                desirable,
            })
        })?;
        if rows.is_empty() {
            bail!("{}: no usable KTO rows ({skipped})", source.path.display());
        }
        loaded.files.push(FileUse {
            path: source.path.clone(),
            role: "dataset",
            rows: total,
            used: rows.len(),
        });
        loaded.rows.extend(rows);
        loaded.skipped.merge(skipped);
    }
    Ok(loaded)
}

/// Each row's example and KL example, in turn (see the module comment).
pub fn encode_feedback(
    tok: &Tokenizer,
    template: &ChatTemplate,
    rows: &[FeedbackRow],
    cutoff_len: usize,
) -> Result<Vec<Example>> {
    let pin_first = |e: &Example| {
        tok.bos_id()
            .is_some_and(|bos| e.input_ids.first() == Some(&bos))
    };
    let mut examples = Vec::with_capacity(2 * rows.len());
    for block in rows.chunks(ROTATION_BLOCK) {
        for (i, row) in block.iter().enumerate() {
            let previous = &block[(i + block.len() - 1) % block.len()];
            let target = encode_last_response(tok, template, &row.conversation)?;
            let kl = encode_last_response(tok, template, &with_response(row, previous))?;
            for example in [target, kl] {
                let pin = pin_first(&example);
                examples.push(cut_one(example, cutoff_len, pin));
            }
        }
    }
    Ok(examples)
}

/// `row`'s prompt followed by `other`'s response.
fn with_response(row: &FeedbackRow, other: &FeedbackRow) -> Conversation {
    let messages = &row.conversation.messages;
    let response = other.conversation.messages.last().cloned();
    let mut prompt: Vec<Message> = messages[..messages.len() - 1].to_vec();
    prompt.push(response.unwrap_or_else(|| Message::new("assistant", "")));
    Conversation {
        messages: prompt,
        tools: row.conversation.tools.clone(),
        origin: row.conversation.origin.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_with_their_tags_and_bad_tags_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("dataset_info.json"),
            r#"{"k": {"file_name": "k.json", "formatting": "sharegpt",
                "columns": {"messages": "messages", "kto_tag": "label"},
                "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}"#,
        )
        .unwrap();
        let row = |label: &str| {
            format!(
                r#"{{"messages": [{{"role": "user", "content": "q"}}, {{"role": "assistant", "content": "a"}}], "label": {label}}}"#
            )
        };
        let path = dir.path().join("k.json");
        std::fs::write(&path, format!("[\n{},\n{}\n]", row("true"), row("false"))).unwrap();
        let loaded = load_feedback("k", dir.path(), false).unwrap();
        let tags: Vec<bool> = loaded.rows.iter().map(|r| r.desirable).collect();
        assert_eq!(tags, [true, false]);
        std::fs::write(&path, format!("[\n{}\n]", row("\"yes\""))).unwrap();
        let error = load_feedback("k", dir.path(), false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "{}:2: label: expected true or false, found a string",
                path.display()
            )
        );
    }
}
