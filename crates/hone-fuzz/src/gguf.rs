//! GGUF files: the reader, then everything Hone takes from one — the model config, the tokenizer
//! in its metadata, each tensor dequantized, and the model loaded and run.

use hone::io::gguf::GgufFile;
use hone::model::ModelConfig;
use hone::tokenizer::Tokenizer;

use crate::{run, scratch};

/// Tensors up to this many elements are dequantized on their own (bigger ones only as part of a
/// model load, which checks them against the config first).
const MAX_DEQUANTIZED: u64 = 1 << 20;

pub fn gguf(data: &[u8]) {
    let dir = scratch::fresh_dir("gguf");
    let path = scratch::write(&dir, "model.gguf", data);
    let Ok(file) = GgufFile::open(&path) else {
        return;
    };
    if let Ok(tokenizer) = Tokenizer::from_gguf(&file) {
        run::use_tokenizer(&tokenizer);
    }
    for info in &file.tensors {
        if info.n_elements() <= MAX_DEQUANTIZED {
            let _ = file.tensor_f32(&info.name);
        }
    }
    if ModelConfig::from_gguf(&file).is_ok() {
        run::load_and_step(&path, None);
    }
}
