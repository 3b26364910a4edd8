//! Qwen (v1)'s tokenizer, which ships as a tiktoken rank file (`qwen.tiktoken`: each line a
//! token's bytes in base64 and its rank) and the `QWenTokenizer` class (remote code) instead of a
//! tokenizer.json: built as the byte-level BPE transformers converts tiktoken vocabularies to
//! (`TikTokenConverter`: the merges recovered from the ranks), split by Qwen's regex, with the
//! class's special tokens right after the ranks.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use base64::Engine;
use tokenizers::AddedToken;

use super::gguf::{byte_alphabet, byte_level_bpe};
use super::{Built, SpecialTokens};

/// `QWenTokenizer`'s special tokens, in id order: end of text, the ChatML markers and 205 extras.
fn special_tokens() -> Vec<String> {
    let named = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"].map(String::from);
    let extras = (0..205).map(|i| format!("<|extra_{i}|>"));
    named.into_iter().chain(extras).collect()
}

/// The tokenizer of `dir`'s `qwen.tiktoken`.
pub(super) fn build(dir: &Path) -> Result<Built> {
    let path = dir.join("qwen.tiktoken");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let ranked = read_ranks(&text).with_context(|| format!("{}", path.display()))?;
    let alphabet = byte_alphabet();
    let spell = |bytes: &[u8]| -> String { bytes.iter().map(|&b| alphabet[b as usize]).collect() };
    let tokens: Vec<String> = ranked.iter().map(|t| spell(t)).collect();
    let merges: Vec<String> = merges_from_ranks(&ranked)
        .into_iter()
        .map(|(left, right)| format!("{} {}", spell(&left), spell(&right)))
        .collect();
    // Qwen's PAT_STR is Qwen2's split regex.
    let mut inner = byte_level_bpe(&tokens, &merges, Some("qwen2"))
        .with_context(|| format!("{}", path.display()))?;
    let specials: Vec<AddedToken> = special_tokens()
        .iter()
        .map(|t| AddedToken::from(t.as_str(), true).normalized(false))
        .collect();
    inner
        .add_special_tokens(specials)
        .map_err(|e| anyhow::anyhow!("adding Qwen's special tokens: {e}"))?;
    // The class names none; Qwen's generation config ends and pads with <|endoftext|>.
    let end = Some("<|endoftext|>".to_string());
    let specials = SpecialTokens {
        bos: None,
        eos: end.clone(),
        unk: None,
        pad: end,
    };
    Ok(Built {
        inner,
        specials,
        post: None,
        chat_format: include_str!("templates/qwen.jinja"),
    })
}

/// The tokens in rank order; the ranks must be 0, 1, … without gaps.
fn read_ranks(text: &str) -> Result<Vec<Vec<u8>>> {
    let mut ranked: Vec<Option<Vec<u8>>> = Vec::new();
    // Ranks are 0..count, each once: a rank past the count is an error before any allocation
    // for it (a single line claiming rank 10¹⁸ asked for exabytes, found by fuzzing).
    let count = text.lines().filter(|l| !l.is_empty()).count();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
        let row = || format!("line {}", n + 1);
        let (token, rank) = line
            .split_once(' ')
            .with_context(|| format!("{}: not `BASE64 RANK`", row()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(token)
            .with_context(|| format!("{}: the token is not base64", row()))?;
        let rank: usize = rank
            .trim()
            .parse()
            .with_context(|| format!("{}: the rank is not a number", row()))?;
        if rank >= count {
            bail!("{}: rank {rank}, but the file ranks {count} tokens", row());
        }
        if rank >= ranked.len() {
            ranked.resize(rank + 1, None);
        }
        if ranked[rank].replace(bytes).is_some() {
            bail!("{}: rank {rank} given twice", row());
        }
    }
    ranked
        .into_iter()
        .enumerate()
        .map(|(rank, t)| t.with_context(|| format!("rank {rank} is missing")))
        .collect()
}

/// The merge that makes each multi-byte token: the two parts tiktoken's merging of its bytes
/// reaches using only lower ranks (transformers' `bpe(..., max_rank=rank)`).
fn merges_from_ranks(ranked: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let rank_of: HashMap<&[u8], usize> = ranked
        .iter()
        .enumerate()
        .map(|(r, t)| (t.as_slice(), r))
        .collect();
    let mut merges = Vec::new();
    for (rank, token) in ranked.iter().enumerate().filter(|(_, t)| t.len() > 1) {
        let mut parts: Vec<Vec<u8>> = token.iter().map(|&b| vec![b]).collect();
        loop {
            let best = (0..parts.len() - 1)
                .filter_map(|i| {
                    let pair = [parts[i].as_slice(), parts[i + 1].as_slice()].concat();
                    rank_of.get(pair.as_slice()).map(|&r| (r, i))
                })
                .filter(|&(r, _)| r < rank)
                .min();
            let Some((_, i)) = best else { break };
            let right = parts.remove(i + 1);
            parts[i].extend(right);
        }
        if let [left, right] = &parts[..] {
            merges.push((left.clone(), right.clone()));
        }
    }
    merges
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ab` then `abc` from `ab` + `c`; `bc` (rank 5) would split `abc` otherwise, but `ab` ranks
    /// lower and merges first.
    #[test]
    fn merges_follow_the_ranks() {
        let ranked: Vec<Vec<u8>> = ["a", "b", "c", "ab", "abc", "bc"]
            .iter()
            .map(|t| t.as_bytes().to_vec())
            .collect();
        let merges = merges_from_ranks(&ranked);
        let pair = |l: &str, r: &str| (l.as_bytes().to_vec(), r.as_bytes().to_vec());
        assert_eq!(merges, [pair("a", "b"), pair("ab", "c"), pair("b", "c")]);
    }

    #[test]
    fn rank_files_are_checked() {
        assert!(read_ranks("YQ== 0\nYg== 1\n").is_ok());
        assert!(read_ranks("YQ== 0\nYg== 2\n")
            .unwrap_err()
            .to_string()
            .contains("line 2: rank 2, but the file ranks 2 tokens"));
        // Found by fuzzing: a huge rank was an allocation of that many slots.
        assert!(read_ranks("YQ== 1000000000000000000\n")
            .unwrap_err()
            .to_string()
            .contains("the file ranks 1 tokens"));
        assert!(read_ranks("YQ==0\n")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(read_ranks("YQ== 0\nYg== 0\n").is_err());
    }
}
