//! What each of Hone's fuzz targets does with the bytes it is given.
//!
//! Every parser of outside input has a target here: GGUF files, safetensors files, HF
//! `config.json`, tokenizer files, chat templates, datasets with their `dataset_info.json`, YAML
//! train configs, PEFT adapter directories and the HTTP bodies of `hone serve`. A target feeds its
//! input through the parser and on through what Hone does next with the result (a loaded model runs
//! a step, a tokenizer encodes, a template renders), so a value the parser lets through but the
//! next stage chokes on is found too. Errors are the expected outcome of most inputs; a panic, an
//! abort, a hang or a runaway allocation is a finding.
//!
//! The libFuzzer binaries in `fuzz/` are one line each over these functions, and this crate's
//! tests replay every committed seed and every past finding (`fuzz/seeds`, `fuzz/regressions`)
//! on each `cargo test`, so the bodies stay exercised without a fuzzing toolchain.

mod adapter;
mod chat_template;
mod dataset;
mod gguf;
mod hf_config;
mod run;
mod safetensors;
mod scratch;
mod serve;
mod tokenizer;
mod train_config;

pub use adapter::adapter;
pub use chat_template::chat_template;
pub use dataset::dataset;
pub use gguf::gguf;
pub use hf_config::hf_config;
pub use safetensors::safetensors;
pub use serve::serve;
pub use tokenizer::tokenizer;
pub use train_config::train_config;

/// A target: takes any bytes, and panics only on a finding.
pub type Target = fn(&[u8]);

/// Every target by name, as the fuzz binaries and the corpus folders are named.
pub const TARGETS: &[(&str, Target)] = &[
    ("adapter", adapter),
    ("chat_template", chat_template),
    ("dataset", dataset),
    ("gguf", gguf),
    ("hf_config", hf_config),
    ("safetensors", safetensors),
    ("serve", serve),
    ("tokenizer", tokenizer),
    ("train_config", train_config),
];

/// Separates the files of a target whose input is several files (an adapter's config and its
/// tensors, a dataset and its `dataset_info.json`). The fuzz dictionaries carry it, so libFuzzer
/// inserts and keeps it.
pub const SEPARATOR: &[u8] = b"\n--8<--\n";

/// The first `n` parts of `data` split at [`SEPARATOR`]; missing ones are empty, and the last
/// holds the rest (separators included).
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out.resize(n, &[]);
    out
}

/// The first byte chooses among `n` variants of a target (a file format, a route); the rest is
/// the input proper.
pub fn choice(data: &[u8], n: usize) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (usize::from(first) % n, rest),
        None => (0, data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_split_at_the_separator_and_pad_with_empty_ones() {
        let data = b"a\n--8<--\nb\n--8<--\nc";
        assert_eq!(parts(data, 2), vec![&b"a"[..], &b"b\n--8<--\nc"[..]]);
        assert_eq!(parts(data, 4), vec![&b"a"[..], b"b", b"c", b""]);
        assert_eq!(parts(b"", 2), vec![&b""[..], b""]);
    }

    #[test]
    fn the_first_byte_chooses() {
        assert_eq!(choice(&[7, 1, 2], 3), (1, &[1u8, 2][..]));
        assert_eq!(choice(&[], 3), (0, &[][..]));
    }
}
