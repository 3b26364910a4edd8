//! Text ⇄ token ids, exactly as transformers computes them, for HF checkpoints and GGUF files.
//!
//! A [`Tokenizer`] wraps a `tokenizers::Tokenizer` (the same Rust engine transformers runs) together
//! with what lives beside it: the named special tokens, the chat template and the ids that end
//! generation. For an HF directory the engine comes from `tokenizer.json`; for a GGUF file it is
//! rebuilt from `tokenizer.ggml.*` metadata the way transformers' GGUF converter does (see `gguf.rs`).

mod gguf;
mod sentencepiece;
pub(crate) mod split_regex;
mod stream;
mod tiktoken;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};
use tokenizers::models::ModelWrapper;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::AddedToken;

pub(crate) use split_regex::pre_name;
pub use stream::TokenStream;

use crate::chat::token_text;
use crate::io::gguf::GgufFile;
use crate::io::json;
use crate::io::untrusted::catching_panics;

/// Tokens that end a turn in the common chat formats. llama.cpp stops generation on these too,
/// whatever the file names as eos, so a chat model that closes its turn is not run past it.
pub(crate) const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|end|>",
];

/// The named special tokens, as text (transformers' `special_tokens_map`).
#[derive(Debug, Clone, Default)]
struct SpecialTokens {
    bos: Option<String>,
    eos: Option<String>,
    unk: Option<String>,
    pad: Option<String>,
}

impl SpecialTokens {
    fn iter(&self) -> impl Iterator<Item = &str> {
        [&self.bos, &self.eos, &self.unk, &self.pad]
            .into_iter()
            .filter_map(|t| t.as_deref())
    }
}

/// A remote-code tokenizer class's engine, named special tokens, when the class decides it
/// whether encoding adds BOS and EOS, and the family's chat format as a template (`templates/`).
struct Built {
    inner: tokenizers::Tokenizer,
    specials: SpecialTokens,
    post: Option<(bool, bool)>,
    chat_format: &'static str,
}

/// A tokenizer with its special tokens, chat template and stop ids.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    kind: String,
    specials: SpecialTokens,
    chat_template: Option<String>,
    /// Stop ids named outside the vocabulary's own tokens (generation_config.json, GGUF eot/eom ids).
    extra_stop_ids: Vec<u32>,
}

impl Tokenizer {
    /// Loads an HF checkpoint directory: `tokenizer.json`, plus `tokenizer_config.json` (special tokens,
    /// chat template), `chat_template.jinja` and `generation_config.json` when present.
    ///
    /// Like transformers 5, `add_bos_token`/`add_eos_token` in the config are ignored when
    /// `tokenizer.json` exists: its post-processor alone decides what `encode(.., true)` adds.
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer> {
        let path = dir.join("tokenizer.json");
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?.unwrap_or(Value::Null);
        if !path.exists() && dir.join("tokenizer.model").exists() {
            let built = sentencepiece::build(dir, &config)?;
            return Self::from_remote_code_dir(dir, &config, built, "spm-bpe");
        }
        if !path.exists() && dir.join("qwen.tiktoken").exists() {
            let built = tiktoken::build(dir)?;
            return Self::from_remote_code_dir(dir, &config, built, "tiktoken-bpe");
        }
        // The tokenizers crate panics on some malformed files (a decoder that is not JSON the
        // crate expects, found by fuzzing): see `io::untrusted`.
        let unreadable = format!("{}: cannot load the tokenizer", path.display());
        let inner = catching_panics(&unreadable, || {
            tokenizers::Tokenizer::from_file(&path).map_err(|e| anyhow!("{unreadable}: {e}"))
        })?;
        let special = |key: &str| -> Result<Option<String>> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => token_text(v).map(|t| Some(t.to_owned())).with_context(|| {
                    format!(
                        "{}: {key} is neither a string nor an object with \"content\"",
                        config_path.display()
                    )
                }),
            }
        };
        let specials = SpecialTokens {
            bos: special("bos_token")?,
            eos: special("eos_token")?,
            unk: special("unk_token")?,
            pad: special("pad_token")?,
        };
        let chat_template = hf_chat_template(dir, &config)?;
        let extra_stop_ids = generation_eos_ids(dir)?;
        let kind = match inner.get_model() {
            ModelWrapper::BPE(_) => "BPE",
            ModelWrapper::WordPiece(_) => "WordPiece",
            ModelWrapper::WordLevel(_) => "WordLevel",
            ModelWrapper::Unigram(_) => "Unigram",
        };
        Tokenizer::assemble(inner, kind, specials, chat_template, extra_stop_ids, None)
    }

    /// A remote-code checkpoint's tokenizer (no tokenizer.json) as its class builds it from its
    /// own files: ChatGLM3's and Baichuan 2's `tokenizer.model` ([`sentencepiece`]), Qwen v1's
    /// `qwen.tiktoken` ([`tiktoken`]); stop ids as for any directory, and the chat template the
    /// directory gives, else the family's own chat format (these checkpoints ship none: their
    /// code builds chat prompts itself, which the `templates/` files render id for id).
    fn from_remote_code_dir(
        dir: &Path,
        config: &Value,
        built: Built,
        kind: &str,
    ) -> Result<Tokenizer> {
        let chat_template = hf_chat_template(dir, config)?.or(Some(built.chat_format.to_owned()));
        let extra_stop_ids = generation_eos_ids(dir)?;
        Tokenizer::assemble(
            built.inner,
            kind,
            built.specials,
            chat_template,
            extra_stop_ids,
            built.post,
        )
    }

    /// Builds the tokenizer a GGUF file describes in its `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer> {
        gguf::build(gguf)
    }

    /// Finishes a tokenizer the way transformers' `TokenizersBackend.__init__` does: named special
    /// tokens the added vocabulary lacks are added as special tokens (so they match whole in text),
    /// and, when `post` gives `(add_bos, add_eos)`, the post-processor is rebuilt from them.
    fn assemble(
        mut inner: tokenizers::Tokenizer,
        kind: &str,
        specials: SpecialTokens,
        chat_template: Option<String>,
        extra_stop_ids: Vec<u32>,
        post: Option<(bool, bool)>,
    ) -> Result<Tokenizer> {
        let added: BTreeSet<String> = inner
            .get_added_tokens_decoder()
            .into_values()
            .map(|t| t.content)
            .collect();
        let missing: Vec<AddedToken> = specials
            .iter()
            .filter(|t| !added.contains(*t))
            .map(|t| AddedToken::from(t, true).normalized(false))
            .collect();
        inner
            .add_tokens(missing)
            .map_err(|e| anyhow!("cannot add the special tokens: {e}"))?;
        let tokenizer = Tokenizer {
            inner,
            kind: kind.to_owned(),
            specials,
            chat_template,
            extra_stop_ids,
        };
        match post {
            Some((add_bos, add_eos)) => tokenizer.with_post_processor(add_bos, add_eos),
            None => Ok(tokenizer),
        }
    }

    /// transformers' `update_post_processor`: `bos $A eos` with each end present only when asked for
    /// and the token exists.
    fn with_post_processor(mut self, add_bos: bool, add_eos: bool) -> Result<Tokenizer> {
        let bos = self.bos_token().zip(self.bos_id()).filter(|_| add_bos);
        let eos = self.eos_token().zip(self.eos_id()).filter(|_| add_eos);
        let piece = |t: Option<(&str, u32)>, seq: u8| t.map(|(text, _)| format!("{text}:{seq}"));
        let single: Vec<String> = [piece(bos, 0), Some("$A:0".into()), piece(eos, 0)]
            .into_iter()
            .flatten()
            .collect();
        let pair: Vec<String> = single
            .iter()
            .cloned()
            .chain(
                [piece(bos, 1), Some("$B:1".into()), piece(eos, 1)]
                    .into_iter()
                    .flatten(),
            )
            .collect();
        let special: Vec<(String, u32)> = bos
            .into_iter()
            .chain(eos)
            .map(|(t, id)| (t.to_owned(), id))
            .collect();
        let processor = TemplateProcessing::builder()
            .try_single(single)
            .and_then(|b| b.try_pair(pair))
            .map_err(|e| anyhow!("bos/eos tokens do not form a post-processor template: {e}"))?
            .special_tokens(special)
            .build()
            .context("building the bos/eos post-processor")?;
        self.inner.with_post_processor(Some(processor));
        Ok(self)
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("cannot encode text: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow!("cannot decode token ids: {e}"))
    }

    /// An incremental decoder for streaming generation.
    pub fn stream(&self, skip_special_tokens: bool) -> TokenStream<'_> {
        TokenStream::new(self, skip_special_tokens)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.specials.bos.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.specials.eos.as_deref()
    }

    pub fn unk_token(&self) -> Option<&str> {
        self.specials.unk.as_deref()
    }

    pub fn pad_token(&self) -> Option<&str> {
        self.specials.pad.as_deref()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token().and_then(|t| self.inner.token_to_id(t))
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_token().and_then(|t| self.inner.token_to_id(t))
    }

    /// Whether `encode(.., true)` puts the bos token first (the post-processor decides, as in transformers).
    pub fn add_bos_token(&self) -> Result<bool> {
        Ok(self
            .encode("", true)?
            .first()
            .is_some_and(|&id| Some(id) == self.bos_id()))
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.specials
            .pad
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t))
    }

    /// Whether `encode(.., true)` puts the eos token last.
    pub fn add_eos_token(&self) -> Result<bool> {
        let ids = self.encode("", true)?;
        let after_bos = usize::from(self.add_bos_token()?);
        Ok(ids.len() > after_bos && ids.last().copied() == self.eos_id())
    }

    /// Ids that end generation: eos, the end-of-turn tokens the vocabulary has, and any extra eos ids
    /// the checkpoint names. Sorted, without duplicates.
    pub fn stop_ids(&self) -> Vec<u32> {
        let named = END_OF_TURN.iter().filter_map(|t| self.inner.token_to_id(t));
        let ids: BTreeSet<u32> = self
            .eos_id()
            .into_iter()
            .chain(named)
            .chain(self.extra_stop_ids.iter().copied())
            .collect();
        ids.into_iter().collect()
    }

    /// Vocabulary size including added tokens (Python's `len(tokenizer)`).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// "gpt2-bpe" or "llama-spm" for GGUF tokenizers, else the tokenizer.json model type ("BPE", ...).
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The added tokens marked special, sorted by id.
    pub fn special_tokens(&self) -> Vec<(String, u32)> {
        let mut tokens: Vec<(String, u32)> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (t.content, id))
            .collect();
        tokens.sort_by_key(|&(_, id)| id);
        tokens
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Writes `tokenizer.json` and `tokenizer_config.json` (plus `chat_template.jinja` when there is a
    /// template) so that transformers, and [`Tokenizer::from_hf_dir`], load this tokenizer back unchanged.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create directory", dir.display()))?;
        let path = dir.join("tokenizer.json");
        self.inner
            .save(&path, false)
            .map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))?;
        let mut config = Map::new();
        config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
        for (key, token) in [
            ("bos_token", &self.specials.bos),
            ("eos_token", &self.specials.eos),
            ("unk_token", &self.specials.unk),
            ("pad_token", &self.specials.pad),
        ] {
            config.insert(key.into(), json!(token));
        }
        // Informational for transformers 5 (tokenizer.json's post-processor rules), read by older versions.
        config.insert("add_bos_token".into(), json!(self.add_bos_token()?));
        config.insert("add_eos_token".into(), json!(self.add_eos_token()?));
        config.insert("clean_up_tokenization_spaces".into(), json!(false));
        let path = dir.join("tokenizer_config.json");
        let text = json::sorted_pretty(&Value::Object(config))? + "\n";
        fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
        if let Some(template) = &self.chat_template {
            let path = dir.join("chat_template.jinja");
            fs::write(&path, template)
                .with_context(|| format!("{}: cannot write", path.display()))?;
        }
        Ok(())
    }
}

/// A JSON file's contents, or None when the file does not exist.
/// An HF directory's chat template: `chat_template.jinja`, else `tokenizer_config.json`'s.
fn hf_chat_template(dir: &Path, config: &Value) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let text = fs::read_to_string(&jinja)
            .with_context(|| format!("{}: cannot read", jinja.display()))?;
        return Ok(Some(text));
    }
    let config_path = dir.join("tokenizer_config.json");
    config_chat_template(config)
        .with_context(|| format!("{}: chat_template", config_path.display()))
}

/// The eos ids of an HF directory's `generation_config.json` (none without one).
fn generation_eos_ids(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    match read_json(&path)? {
        Some(generation) => eos_ids(generation.get("eos_token_id"))
            .with_context(|| format!("{}: eos_token_id", path.display())),
        None => Ok(Vec::new()),
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    Ok(Some(value))
}

/// tokenizer_config.json's `chat_template`: a string, or a list of `{name, template}` of which
/// transformers uses the one named "default".
fn config_chat_template(config: &Value) -> Result<Option<String>> {
    match config.get("chat_template") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(named)) => Ok(named
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Value::as_str))
            .map(str::to_owned)),
        Some(other) => bail!("expected a string or a list of named templates, found {other}"),
    }
}

/// generation_config.json's `eos_token_id`: absent, one id, or a list of ids.
fn eos_ids(value: Option<&Value>) -> Result<Vec<u32>> {
    let as_id = |v: &Value| v.as_u64().and_then(|id| u32::try_from(id).ok());
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| as_id(v).with_context(|| format!("{v} is not a token id")))
            .collect(),
        Some(v) => Ok(vec![
            as_id(v).with_context(|| format!("{v} is not a token id"))?
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_chat_template_forms() {
        assert_eq!(config_chat_template(&json!({})).unwrap(), None);
        assert_eq!(
            config_chat_template(&json!({"chat_template": "x"}))
                .unwrap()
                .as_deref(),
            Some("x")
        );
        let named = json!({"chat_template": [{"name": "tool_use", "template": "t"}, {"name": "default", "template": "d"}]});
        assert_eq!(config_chat_template(&named).unwrap().as_deref(), Some("d"));
        assert!(config_chat_template(&json!({"chat_template": 3})).is_err());
    }

    /// Found by fuzzing: a decoder the tokenizers crate cannot read made it panic.
    #[test]
    fn a_malformed_tokenizer_json_is_an_error() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tokenizer/malformed-decoder");
        let err = format!("{:#}", Tokenizer::from_hf_dir(&dir).unwrap_err());
        assert!(err.contains("cannot load the tokenizer: "), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn eos_ids_forms() {
        assert_eq!(eos_ids(None).unwrap(), Vec::<u32>::new());
        assert_eq!(eos_ids(Some(&json!(2))).unwrap(), vec![2]);
        assert_eq!(eos_ids(Some(&json!([2, 7]))).unwrap(), vec![2, 7]);
        assert!(eos_ids(Some(&json!("2"))).is_err());
        assert!(eos_ids(Some(&json!([-1]))).is_err());
    }
}
