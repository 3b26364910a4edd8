//! Tokenizer files: `tokenizer.json` (the tokenizers crate's format), SentencePiece's
//! `tokenizer.model` and Qwen's `qwen.tiktoken` (Hone's own readers), each with a
//! `tokenizer_config.json` (special tokens, chat template); then encoded, decoded and rendered.
//! GGUF tokenizer metadata is the `gguf` target's.

use hone::tokenizer::Tokenizer;

use crate::{choice, parts, run, scratch};

/// The tokenizer file a variant writes.
const FILES: [&str; 3] = ["tokenizer.json", "tokenizer.model", "qwen.tiktoken"];

pub fn tokenizer(data: &[u8]) {
    let (variant, data) = choice(data, FILES.len());
    let [file, config] = parts(data, 2)[..] else {
        unreachable!("parts gives two")
    };
    let dir = scratch::fresh_dir("tokenizer");
    scratch::write(&dir, FILES[variant], file);
    if !config.is_empty() {
        scratch::write(&dir, "tokenizer_config.json", config);
    }
    if let Ok(tokenizer) = Tokenizer::from_hf_dir(&dir) {
        run::use_tokenizer(&tokenizer);
    }
}
