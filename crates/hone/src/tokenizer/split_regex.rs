//! The pre-tokenizer regexes transformers' GGUF converter picks by `tokenizer.ggml.pre`, to split
//! text the way a byte-level vocabulary's merges were learned (`GGUF_PRE_TOKENIZER_SPLITS`).

/// The split regex transformers uses for a `tokenizer.ggml.pre` value; None keeps GPT-2's own.
pub(crate) fn split_regex(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2,
        "qwen35" => QWEN35,
        "tekken" => TEKKEN,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O,
        _ => return None,
    })
}

/// The `tokenizer.ggml.pre` name for a split regex, for writing GGUF: the first name of each
/// regex's group above, which llama.cpp reads as that pre-tokenizer.
pub(crate) fn pre_name(regex: &str) -> Option<&'static str> {
    ["llama-bpe", "qwen2", "qwen35", "tekken", "gpt-4o"]
        .into_iter()
        .find(|name| split_regex(name) == Some(regex))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_share_regexes() {
        assert_eq!(split_regex("llama-bpe"), split_regex("llama3"));
        assert_eq!(split_regex("deepseek-r1-qwen"), split_regex("qwen2"));
        assert_ne!(split_regex("qwen2"), split_regex("llama3"));
        assert_eq!(split_regex("smollm"), None);
        assert_eq!(pre_name(split_regex("llama3").unwrap()), Some("llama-bpe"));
        assert_eq!(pre_name(split_regex("kormo").unwrap()), Some("qwen2"));
        assert_eq!(pre_name("x"), None);
    }
}
