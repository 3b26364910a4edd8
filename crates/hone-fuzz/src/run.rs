//! What a target does with a model or tokenizer its input produced: the first steps every command
//! takes with one, so a value that parses but cannot be used is found.

use candle_core::Device;
use hone::chat::{ChatTemplate, Message};
use hone::model::load::{self, Precision};
use hone::tokenizer::Tokenizer;

/// Loads the model `spec` (a directory or GGUF file) with `adapter`, on both precisions, and runs each: a prompt,
/// then one decoding step with the key/value cache.
pub fn load_and_step(spec: &std::path::Path, adapter: Option<&std::path::Path>) {
    for precision in [Precision::Stored, Precision::Exact] {
        let Some(spec) = spec.to_str() else { return };
        if let Ok(loaded) = load::load_with_adapter(spec, adapter, precision, &Device::Cpu) {
            step(&loaded.model);
            use_tokenizer(&loaded.tokenizer);
        }
    }
}

/// A prompt of three tokens, then one decoding step. Errors are allowed (a model may refuse an
/// id past a vocabulary it declares smaller); panics are not.
fn step(model: &hone::model::Llama) {
    let vocab = model.config().vocab_size as u32;
    let ids: Vec<u32> = [1, 2, 3].iter().map(|&i| i % vocab.max(1)).collect();
    let mut cache = model.new_cache();
    if let Ok(logits) = model.prefill(&ids, &mut cache, None) {
        let next = argmax(&logits);
        let _ = model.decode_step(&[next], &mut [&mut cache], &[None]);
    }
}

fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Encodes and decodes a text with special tokens and non-ASCII characters, streams the ids back,
/// and renders the tokenizer's chat template when it has one.
pub fn use_tokenizer(tokenizer: &Tokenizer) {
    let text = "<s>Hello, wörld! 你好 \u{1F600}\n\t  end</s>";
    for add_special in [false, true] {
        if let Ok(ids) = tokenizer.encode(text, add_special) {
            let _ = tokenizer.decode(&ids, true);
            let _ = tokenizer.decode(&ids, false);
            let mut stream = tokenizer.stream(true);
            for &id in &ids {
                let _ = stream.push(id);
            }
            let _ = stream.finish();
        }
    }
    let _ = tokenizer.add_bos_token();
    let _ = tokenizer.add_eos_token();
    let _ = tokenizer.stop_ids();
    let _ = tokenizer.special_tokens();
    if let Ok(template) = ChatTemplate::for_tokenizer(tokenizer) {
        let _ = template.render(&conversation(), true);
    }
}

/// A short conversation with every role a template meets.
pub fn conversation() -> Vec<Message> {
    vec![
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello!"),
        Message::new("user", "What is 2+2?"),
    ]
}
