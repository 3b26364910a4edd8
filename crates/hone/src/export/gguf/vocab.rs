//! The `tokenizer.*` metadata of an exported GGUF: copied from a GGUF source, or written from an HF
//! `tokenizer.json` the way `convert_hf_to_gguf.py` does, so llama.cpp tokenizes as transformers does.
//!
//! Two BPE vocabularies are written: byte-level BPE as `gpt2` (tokens, merges, and the
//! `tokenizer.ggml.pre` name of its split rule), and SentencePiece-style BPE with byte fallback as
//! `llama` (tokens and scores; llama.cpp merges by the score of the merged token, so a token's score
//! is minus the rank of the first merge that makes it). Token types are llama.cpp's.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::io::gguf::{GgufFile, GgufValue};
use crate::tokenizer::{pre_name, Tokenizer, END_OF_TURN};

/// llama.cpp's `llama_token_type` values.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// Every `tokenizer.*` entry of a GGUF source, unchanged.
pub(super) fn copied_from(file: &GgufFile) -> Vec<(String, GgufValue)> {
    file.metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `tokenizer.*` metadata for `tok`, padded to the model's `n_vocab` embedding rows.
pub(super) fn written_from(tok: &Tokenizer, n_vocab: usize) -> Result<Vec<(String, GgufValue)>> {
    let json: Value = serde_json::from_str(
        &tok.inner()
            .to_string(false)
            .map_err(|e| anyhow!("cannot serialise the tokenizer: {e}"))?,
    )?;
    let model = &json["model"];
    let kind = model["type"].as_str().unwrap_or("?");
    if kind != "BPE" {
        bail!("a {kind} tokenizer cannot be written to GGUF (Hone writes BPE vocabularies: byte-level or SentencePiece-style)");
    }
    let vocab = Vocab::read(&json, n_vocab)?;
    let merges = merges(&model["merges"])?;
    let sentencepiece = model["byte_fallback"].as_bool().unwrap_or(false);
    let str_array =
        |items: Vec<String>| GgufValue::Array(items.into_iter().map(GgufValue::String).collect());
    let mut meta: Vec<(String, GgufValue)> = Vec::new();
    let mut set = |k: &str, v: GgufValue| meta.push((k.to_string(), v));
    let unk = tok.unk_token();
    let types = vocab.types(sentencepiece, unk);
    if sentencepiece {
        set("tokenizer.ggml.model", GgufValue::String("llama".into()));
        set("tokenizer.ggml.pre", GgufValue::String("default".into()));
    } else {
        set("tokenizer.ggml.model", GgufValue::String("gpt2".into()));
        set(
            "tokenizer.ggml.pre",
            GgufValue::String(pre_tokenizer_name(&json)?.into()),
        );
    }
    let scores = sentencepiece.then(|| merge_scores(&vocab.tokens, &merges));
    set("tokenizer.ggml.tokens", str_array(vocab.tokens.clone()));
    if let Some(scores) = scores {
        set(
            "tokenizer.ggml.scores",
            GgufValue::Array(scores.into_iter().map(GgufValue::F32).collect()),
        );
        set(
            "tokenizer.ggml.add_space_prefix",
            GgufValue::Bool(adds_space_prefix(&json)),
        );
    }
    set(
        "tokenizer.ggml.token_type",
        GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
    );
    if !merges.is_empty() {
        set(
            "tokenizer.ggml.merges",
            str_array(merges.iter().map(|(l, r)| format!("{l} {r}")).collect()),
        );
    }
    let id_of = |t: Option<&str>| t.and_then(|t| tok.inner().token_to_id(t));
    let eos = tok.eos_id();
    let eot = END_OF_TURN
        .iter()
        .filter_map(|t| tok.inner().token_to_id(t))
        .find(|&id| Some(id) != eos && vocab.is_special(id));
    for (key, id) in [
        ("bos_token_id", tok.bos_id()),
        ("eos_token_id", eos),
        ("eot_token_id", eot),
        ("unknown_token_id", id_of(unk)),
        ("padding_token_id", id_of(tok.pad_token())),
    ] {
        if let Some(id) = id {
            set(&format!("tokenizer.ggml.{key}"), GgufValue::U32(id));
        }
    }
    set(
        "tokenizer.ggml.add_bos_token",
        GgufValue::Bool(tok.add_bos_token()?),
    );
    set(
        "tokenizer.ggml.add_eos_token",
        GgufValue::Bool(tok.add_eos_token()?),
    );
    if let Some(template) = tok.chat_template() {
        set(
            "tokenizer.chat_template",
            GgufValue::String(template.into()),
        );
    }
    Ok(meta)
}

/// Tokens by id, with which of them are added tokens and which special.
struct Vocab {
    tokens: Vec<String>,
    /// Per id: None for a model token, Some(special) for an added token.
    added: Vec<Option<bool>>,
    /// Per id: a placeholder for an id the tokenizer does not have.
    padded: Vec<bool>,
}

impl Vocab {
    fn read(json: &Value, n_vocab: usize) -> Result<Vocab> {
        let mut by_id: HashMap<usize, (String, Option<bool>)> = HashMap::new();
        let model_vocab = json["model"]["vocab"]
            .as_object()
            .context("tokenizer.json: model.vocab is not an object")?;
        for (token, id) in model_vocab {
            let id = id
                .as_u64()
                .context("tokenizer.json: a model.vocab id is not a number")?;
            by_id.insert(id as usize, (token.clone(), None));
        }
        for added in json["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str())
            else {
                bail!("tokenizer.json: added token {added} has no id or content");
            };
            let special = added["special"].as_bool().unwrap_or(false);
            by_id.insert(id as usize, (content.to_string(), Some(special)));
        }
        let n = by_id.keys().max().map_or(0, |m| m + 1);
        if n > n_vocab {
            bail!(
                "the tokenizer has ids up to {} but the model's embedding has only {n_vocab} rows",
                n - 1
            );
        }
        let mut vocab = Vocab {
            tokens: Vec::with_capacity(n_vocab),
            added: Vec::with_capacity(n_vocab),
            padded: Vec::with_capacity(n_vocab),
        };
        for id in 0..n_vocab {
            // Unfilled ids get convert_hf_to_gguf.py's placeholder names.
            let found = by_id.remove(&id);
            vocab.padded.push(found.is_none());
            let (token, added) = found.unwrap_or((format!("[PAD{id}]"), None));
            vocab.tokens.push(token);
            vocab.added.push(added);
        }
        Ok(vocab)
    }

    fn types(&self, sentencepiece: bool, unk: Option<&str>) -> Vec<i32> {
        (0..self.tokens.len())
            .map(|id| {
                let token = &self.tokens[id];
                match self.added[id] {
                    _ if self.padded[id] => UNUSED,
                    _ if Some(token.as_str()) == unk => UNKNOWN,
                    Some(true) => CONTROL,
                    Some(false) => USER_DEFINED,
                    None if sentencepiece && is_byte_token(token) => BYTE,
                    None => NORMAL,
                }
            })
            .collect()
    }

    fn is_special(&self, id: u32) -> bool {
        self.added.get(id as usize) == Some(&Some(true))
    }
}

/// SentencePiece byte pieces, `<0x0A>`.
fn is_byte_token(token: &str) -> bool {
    token.len() == 6
        && token.starts_with("<0x")
        && token.ends_with('>')
        && token[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// tokenizer.json merges: `"a b"` strings (older files) or `["a", "b"]` pairs.
fn merges(value: &Value) -> Result<Vec<(String, String)>> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let pair = match m {
                Value::String(s) => s
                    .split_once(' ')
                    .map(|(l, r)| (l.to_string(), r.to_string())),
                Value::Array(p) if p.len() == 2 => p[0]
                    .as_str()
                    .zip(p[1].as_str())
                    .map(|(l, r)| (l.to_string(), r.to_string())),
                _ => None,
            };
            pair.with_context(|| format!("tokenizer.json: merge {m} is not two tokens"))
        })
        .collect()
}

/// Minus the rank of the first merge producing each token; 0 for tokens no merge produces.
fn merge_scores(tokens: &[String], merges: &[(String, String)]) -> Vec<f32> {
    let mut rank: HashMap<String, usize> = HashMap::new();
    for (i, (l, r)) in merges.iter().enumerate() {
        rank.entry(format!("{l}{r}")).or_insert(i);
    }
    tokens
        .iter()
        .map(|t| rank.get(t).map_or(0.0, |&r| -(r as f32)))
        .collect()
}

/// Whether a SentencePiece tokenizer puts `▁` before the first word (llama.cpp's default is yes).
fn adds_space_prefix(json: &Value) -> bool {
    let pre = &json["pre_tokenizer"];
    if pre["type"] == "Metaspace" {
        return pre["prepend_scheme"] != "never";
    }
    let normalizers: Vec<&Value> = match json["normalizer"]["type"].as_str() {
        Some("Sequence") => json["normalizer"]["normalizers"]
            .as_array()
            .into_iter()
            .flatten()
            .collect(),
        Some(_) => vec![&json["normalizer"]],
        None => vec![],
    };
    normalizers.iter().any(|n| n["type"] == "Prepend")
}

/// The llama.cpp pre-tokenizer that splits text as this byte-level tokenizer's pre-tokenizer does.
fn pre_tokenizer_name(json: &Value) -> Result<&'static str> {
    let pre = &json["pre_tokenizer"];
    let parts: Vec<&Value> = match pre["type"].as_str() {
        Some("Sequence") => pre["pretokenizers"]
            .as_array()
            .into_iter()
            .flatten()
            .collect(),
        Some(_) => vec![pre],
        None => vec![],
    };
    let is = |v: &Value, t: &str| v["type"] == t;
    let name = match parts[..] {
        [b] if is(b, "ByteLevel") && b["use_regex"] != false => Some("gpt-2"),
        [d, b]
            if is(d, "Digits")
                && d["individual_digits"] == true
                && is(b, "ByteLevel")
                && b["use_regex"] != false =>
        {
            Some("smollm")
        }
        [s, b, ..] if is(s, "Split") && is(b, "ByteLevel") => {
            s["pattern"]["Regex"].as_str().and_then(pre_name)
        }
        _ => None,
    };
    name.with_context(|| {
        format!("the tokenizer's pre-tokenizer {pre} matches no llama.cpp pre-tokenizer Hone knows, so llama.cpp would split text differently")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn byte_tokens_and_scores() {
        assert!(is_byte_token("<0x0A>") && !is_byte_token("<0xZZ>") && !is_byte_token("<s>"));
        let tokens: Vec<String> = ["a", "b", "ab", "abb", "x"].map(String::from).into();
        let merges = vec![
            ("a".into(), "b".into()),
            ("ab".into(), "b".into()),
            ("a".into(), "b".into()),
        ];
        assert_eq!(merge_scores(&tokens, &merges), [0.0, 0.0, 0.0, -1.0, 0.0]);
    }

    #[test]
    fn pre_tokenizer_names() {
        let byte_level = json!({"type": "ByteLevel", "use_regex": true});
        let smollm = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level]}});
        assert_eq!(pre_tokenizer_name(&smollm).unwrap(), "smollm");
        assert_eq!(
            pre_tokenizer_name(&json!({"pre_tokenizer": byte_level})).unwrap(),
            "gpt-2"
        );
        let regex = crate::tokenizer::split_regex::split_regex("llama3").unwrap();
        let llama3 = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}}, {"type": "ByteLevel", "use_regex": false}]}});
        assert_eq!(pre_tokenizer_name(&llama3).unwrap(), "llama-bpe");
        let err =
            pre_tokenizer_name(&json!({"pre_tokenizer": {"type": "Whitespace"}})).unwrap_err();
        assert!(err.to_string().contains("Whitespace"), "{err}");
    }
}
