//! Datasets: a data file in each format Hone reads (JSON, JSON Lines, text, CSV, parquet, Arrow)
//! with or without a `dataset_info.json`, through each stage's loader (SFT conversations,
//! preference pairs, KTO rows, pre-training documents, evaluation prompts), then encoded with the
//! tiny model's tokenizer and chat template as training would.
//!
//! The first byte chooses the loader and the file's extension; the rest is `dataset_info.json`,
//! then the data file. With a `dataset_info.json` the dataset is its entry `fuzz` (whose
//! `file_name` should name `data.EXT`); without, the file is named directly.

use std::path::Path;
use std::sync::OnceLock;

use hone::chat::ChatTemplate;
use hone::data::{
    encode, encode_feedback, encode_pair, load_dataset, load_documents, load_feedback, load_pairs,
    load_prompts, pretraining_examples, Conversation, EncodeOptions,
};
use hone::tokenizer::Tokenizer;

use crate::{choice, parts, scratch};

const EXTENSIONS: [&str; 6] = ["json", "jsonl", "txt", "csv", "parquet", "arrow"];
const STAGES: usize = 4;
const CUTOFF_LEN: usize = 64;

pub fn dataset(data: &[u8]) {
    let (variant, data) = choice(data, STAGES * EXTENSIONS.len());
    let [info, file] = parts(data, 2)[..] else {
        unreachable!("parts gives two")
    };
    let dir = scratch::fresh_dir("dataset");
    let extension = EXTENSIONS[variant % EXTENSIONS.len()];
    let file_path = scratch::write(&dir, &format!("data.{extension}"), file);
    let name = if info.is_empty() {
        file_path.to_string_lossy().into_owned()
    } else {
        scratch::write(&dir, "dataset_info.json", info);
        "fuzz".to_string()
    };
    let (tokenizer, template) = tiny_tokenizer();
    for skip_invalid_rows in [false, true] {
        load_and_encode(
            variant / EXTENSIONS.len(),
            &name,
            &dir,
            skip_invalid_rows,
            tokenizer,
            template,
        );
    }
    if let Ok(prompts) = load_prompts(Path::new(&name), &dir) {
        encode_all(&prompts, tokenizer, template);
    }
}

/// One stage's loader over the dataset, and its encoding of what loaded.
fn load_and_encode(
    stage: usize,
    name: &str,
    dir: &Path,
    skip: bool,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
) {
    match stage {
        0 => {
            if let Ok(loaded) = load_dataset(name, dir, skip) {
                encode_all(&loaded.conversations, tokenizer, template);
            }
        }
        1 => {
            if let Ok(loaded) = load_pairs(name, dir, skip) {
                for pair in &loaded.pairs {
                    let _ = encode_pair(tokenizer, template, pair, CUTOFF_LEN);
                }
            }
        }
        2 => {
            if let Ok(loaded) = load_feedback(name, dir, skip) {
                let _ = encode_feedback(tokenizer, template, &loaded.rows, CUTOFF_LEN);
            }
        }
        _ => {
            if let Ok(loaded) = load_documents(name, dir, skip) {
                for packing in [false, true] {
                    let _ = pretraining_examples(tokenizer, &loaded.documents, CUTOFF_LEN, packing);
                }
            }
        }
    }
}

/// Encodes each conversation with and without labels on the prompt.
fn encode_all(conversations: &[Conversation], tokenizer: &Tokenizer, template: &ChatTemplate) {
    for train_on_prompt in [false, true] {
        let options = EncodeOptions {
            cutoff_len: CUTOFF_LEN,
            train_on_prompt,
        };
        for conversation in conversations {
            let _ = encode(tokenizer, template, conversation, &options);
        }
    }
}

/// The tiny model's tokenizer and chat template, loaded once.
fn tiny_tokenizer() -> (&'static Tokenizer, &'static ChatTemplate) {
    static LOADED: OnceLock<(Tokenizer, ChatTemplate)> = OnceLock::new();
    let (tokenizer, template) = LOADED.get_or_init(|| {
        let dir = scratch::tiny_model("dataset-tokenizer", &["model.safetensors"]);
        let tokenizer = Tokenizer::from_hf_dir(&dir).expect("the tiny tokenizer loads");
        let template = ChatTemplate::for_tokenizer(&tokenizer).expect("the tiny chat template");
        (tokenizer, template)
    });
    (tokenizer, template)
}
