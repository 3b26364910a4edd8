//! Instruction datasets: LLaMA-Factory-style files in, training rows (token ids and labels) out.
//!
//! The path a dataset takes:
//! 1. [`load_dataset`] reads the files (`dataset_info.json` names or direct `.json`/`.jsonl` paths),
//!    converts each row from its format (Alpaca, ShareGPT, OpenAI `messages`) into a
//!    [`Conversation`] and validates it strictly (see `convert.rs`);
//! 2. [`encode`] renders a conversation through the model's chat template, tokenizes it and labels
//!    the assistant tokens, truncating to `cutoff_len` (see `encode.rs`);
//! 3. [`split`] holds out a validation set, [`pack`] optionally packs examples into rows of up to
//!    `cutoff_len` tokens, and [`collate`] pads rows into a [`Batch`].
//!
//! Continued pre-training reads plain text instead: [`load_documents`] and
//! [`pretraining_examples`] (see `documents.rs`); preference training reads chosen/rejected pairs:
//! [`load_pairs`] and [`encode_pair`] (see `preference.rs`); KTO reads tagged responses:
//! [`load_feedback`] and [`encode_feedback`] (see `feedback.rs`).
//!
//! Several datasets are mixed by [`mix`] (`mix_strategy`, `interleave_probs`).
//!
//! [`record`] keeps what a run read: each file's SHA-256, size and rows used.
//!
//! [`load_prompts`] reads the same files (and plain text, a prompt a line) as prompts for a model to
//! answer, where a row's response is an optional reference.

mod convert;
mod documents;
mod encode;
mod feedback;
mod info;
mod load;
mod mix;
mod pack;
mod preference;
mod prompts;
pub mod record;
mod rows;
mod split;

use std::fmt;
use std::path::PathBuf;

pub use convert::{RowError, SkipReason};
pub use documents::{load_documents, pretraining_examples, Document, LoadedDocuments};
pub use encode::{encode, encode_measured, EncodeOptions, Example};
pub use feedback::{encode_feedback, load_feedback, FeedbackRow, LoadedFeedback};
pub use load::{for_each_conversation, load_dataset, LoadedDataset, SkipSummary};
pub use mix::{mix, MixStrategy, Mixed};
pub use pack::{collate, flatten, pack, Batch, Row};
pub use preference::{encode_pair, load_pairs, LoadedPairs, PreferencePair};
pub use prompts::load_prompts;
pub use split::split;

use crate::chat::Message;

/// One conversation as read from a dataset row, with where it came from (for error messages).
/// A system turn, when present, comes first; then user (or tool) and assistant turns alternate,
/// ending with an assistant turn — or, in a prompt from [`load_prompts`] that has no reference
/// answer, with the user's turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub messages: Vec<Message>,
    /// The functions the assistant may call (OpenAI's `{"type": "function", "function": …}`
    /// objects), given to the chat template as `tools`; empty when the row has none.
    pub tools: Vec<serde_json::Value>,
    pub origin: RowOrigin,
}

impl Conversation {
    /// The template variables the conversation is rendered with besides its messages: `tools`
    /// when it has any.
    pub fn template_vars(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut vars = serde_json::Map::new();
        if !self.tools.is_empty() {
            vars.insert("tools".into(), serde_json::Value::from(self.tools.clone()));
        }
        vars
    }
}

/// Where a row is: its file and the 1-based line it starts on (for a JSON array file, the line
/// where the element's opening brace stands).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowOrigin {
    pub file: PathBuf,
    pub line: usize,
}

impl fmt::Display for RowOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}
