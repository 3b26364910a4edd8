//! Tokenizers of checkpoints that ship a SentencePiece `tokenizer.model` and a tokenizer class of
//! their own instead of a `tokenizer.json`: ChatGLM3's `ChatGLMTokenizer` and Baichuan 2's
//! `BaichuanTokenizer` (remote code). The model file's protobuf is read here (a few fields of
//! `sentencepiece_model.proto`; no protobuf crate needed for them) and the vocabulary built as the
//! GGUF `llama` one is — BPE with byte fallback, merges recovered from the scores, control and
//! user-defined pieces matched whole — with what each class adds: ChatGLM's role and mask tokens
//! after the pieces and its `[gMASK] sop` prefix, Baichuan's BOS as its config says.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokenizers::AddedToken;

use super::gguf::{add_typed_tokens, merges_from_scores, sentencepiece_bpe, Spaces};
use super::{Built, SpecialTokens};

/// What Hone reads of a SentencePiece model.
#[derive(Debug, Default)]
pub(super) struct SpmModel {
    pub pieces: Vec<String>,
    pub scores: Vec<f64>,
    /// `SentencePiece.Type`, the numbering llama.cpp's token types share (1 normal, 2 unknown,
    /// 3 control, 4 user-defined, 5 unused, 6 byte).
    pub types: Vec<i64>,
    /// `TrainerSpec.model_type` (1 unigram, 2 BPE, 3 word, 4 char).
    pub model_type: u64,
    pub byte_fallback: bool,
    /// `NormalizerSpec.add_dummy_prefix`: a space before the text (true unless the file says).
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    /// `NormalizerSpec.name`; Hone builds the `identity` normalization only.
    pub normalizer: String,
}

/// ChatGLM3's tokens after the SentencePiece pieces (tokenization_chatglm.py's
/// `special_tokens`), in id order.
const CHATGLM_TOKENS: [&str; 9] = [
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "sop",
    "eop",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
];

/// The tokenizer of `dir`'s `tokenizer.model` for the class `tokenizer_config.json` names.
pub(super) fn build(dir: &Path, config: &Value) -> Result<Built> {
    let path = dir.join("tokenizer.model");
    let class = config
        .get("tokenizer_class")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !matches!(class, "ChatGLMTokenizer" | "BaichuanTokenizer") {
        bail!(
            "{}: no tokenizer.json, and tokenizer class {class:?} is not one Hone builds from \
             tokenizer.model (ChatGLMTokenizer, BaichuanTokenizer); save the tokenizer with \
             transformers as tokenizer.json",
            dir.display()
        );
    }
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let model = parse(&bytes).with_context(|| format!("{}", path.display()))?;
    let mut inner = model
        .tokenizer()
        .with_context(|| format!("{}", path.display()))?;
    let piece = |id: usize| model.pieces.get(id).cloned();
    if class == "ChatGLMTokenizer" {
        // Added as special tokens, so a chat template's role tokens in text become them.
        let tokens = CHATGLM_TOKENS.map(|t| AddedToken::from(t, true).normalized(false));
        inner
            .add_special_tokens(tokens)
            .map_err(|e| anyhow::anyhow!("adding ChatGLM's tokens: {e}"))?;
        let specials = SpecialTokens {
            bos: None,
            eos: piece(2),
            unk: piece(0),
            pad: piece(0),
        };
        let prefix = chatglm_prefix(&inner)?;
        inner.with_post_processor(Some(prefix));
        return Ok(Built {
            inner,
            specials,
            post: None,
            chat_format: include_str!("templates/chatglm3.jinja"),
        });
    }
    let named = |key: &str, default: Option<String>| {
        config
            .get(key)
            .and_then(crate::chat::token_text)
            .map(str::to_owned)
            .or(default)
    };
    let specials = SpecialTokens {
        bos: named("bos_token", piece(1)),
        eos: named("eos_token", piece(2)),
        unk: named("unk_token", piece(0)),
        pad: named("pad_token", None),
    };
    // BaichuanTokenizer's defaults: BOS added, EOS not.
    let flag =
        |key: &str, default: bool| config.get(key).and_then(Value::as_bool).unwrap_or(default);
    let post = (flag("add_bos_token", true), flag("add_eos_token", false));
    Ok(Built {
        inner,
        specials,
        post: Some(post),
        chat_format: include_str!("templates/baichuan2.jinja"),
    })
}

/// ChatGLM's `build_inputs_with_special_tokens`: `[gMASK] sop` before the text.
fn chatglm_prefix(
    inner: &tokenizers::Tokenizer,
) -> Result<tokenizers::processors::template::TemplateProcessing> {
    let id = |t: &str| {
        inner
            .token_to_id(t)
            .context("ChatGLM's prefix tokens were just added")
    };
    let special = vec![
        ("[gMASK]".to_string(), id("[gMASK]")?),
        ("sop".to_string(), id("sop")?),
    ];
    tokenizers::processors::template::TemplateProcessing::builder()
        .try_single("[gMASK]:0 sop:0 $A:0")
        .and_then(|b| b.try_pair("[gMASK]:0 sop:0 $A:0 $B:1"))
        .map_err(|e| anyhow::anyhow!("ChatGLM's prefix template: {e}"))?
        .special_tokens(special)
        .build()
        .context("building ChatGLM's prefix")
}

impl SpmModel {
    /// The BPE tokenizer of the pieces, as transformers builds a Llama SentencePiece vocabulary.
    fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        if self.model_type != 2 {
            bail!(
                "SentencePiece model type {} is not supported (Hone builds BPE models, type 2)",
                self.model_type
            );
        }
        if !self.byte_fallback || self.remove_extra_whitespaces || self.normalizer != "identity" {
            bail!(
                "Hone builds SentencePiece BPE models with byte fallback, the identity \
                 normalization and whitespace kept (this one: byte_fallback {}, normalization {:?}, \
                 remove_extra_whitespaces {})",
                self.byte_fallback,
                self.normalizer,
                self.remove_extra_whitespaces
            );
        }
        let merges = merges_from_scores(&self.pieces, &self.scores)?;
        let spaces = Spaces::SentencePiece {
            dummy_prefix: self.add_dummy_prefix,
        };
        let mut inner = sentencepiece_bpe(&self.pieces, merges, spaces)?;
        add_typed_tokens(&mut inner, &self.pieces, &self.types, false)?;
        Ok(inner)
    }
}

/// The fields of a serialized `ModelProto` Hone reads; the others are skipped.
pub(super) fn parse(bytes: &[u8]) -> Result<SpmModel> {
    let mut model = SpmModel {
        add_dummy_prefix: true,
        remove_extra_whitespaces: true,
        normalizer: "nmt_nfkc".into(),
        model_type: 1,
        ..SpmModel::default()
    };
    for field in Fields::new(bytes) {
        match field? {
            (1, Wire::Bytes(piece)) => {
                let (text, score, kind) = parse_piece(piece)?;
                model.pieces.push(text);
                model.scores.push(score);
                model.types.push(kind);
            }
            (2, Wire::Bytes(trainer)) => {
                for field in Fields::new(trainer) {
                    match field? {
                        (3, Wire::Varint(v)) => model.model_type = v,
                        (35, Wire::Varint(v)) => model.byte_fallback = v != 0,
                        _ => {}
                    }
                }
            }
            (3, Wire::Bytes(normalizer)) => {
                for field in Fields::new(normalizer) {
                    match field? {
                        (1, Wire::Bytes(name)) => {
                            model.normalizer = String::from_utf8_lossy(name).into_owned()
                        }
                        (3, Wire::Varint(v)) => model.add_dummy_prefix = v != 0,
                        (4, Wire::Varint(v)) => model.remove_extra_whitespaces = v != 0,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if model.pieces.is_empty() {
        bail!("not a SentencePiece model: no pieces");
    }
    Ok(model)
}

/// A `SentencePiece` message: its text, score (default 0) and type (default 1, normal).
fn parse_piece(bytes: &[u8]) -> Result<(String, f64, i64)> {
    let (mut text, mut score, mut kind) = (None, 0.0, 1);
    for field in Fields::new(bytes) {
        match field? {
            (1, Wire::Bytes(t)) => {
                text = Some(String::from_utf8(t.to_vec()).context("a piece is not UTF-8")?)
            }
            (2, Wire::Fixed32(bits)) => score = f64::from(f32::from_bits(bits)),
            (3, Wire::Varint(v)) => kind = v as i64,
            _ => {}
        }
    }
    Ok((text.context("a piece without text")?, score, kind))
}

/// A protobuf field's value by wire type.
enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The (field number, value) pairs of one serialized message.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { rest: bytes }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.rest.split_first().context("truncated varint")?;
            self.rest = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("varint longer than 10 bytes")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.rest.len() {
            bail!("a field of {n} bytes runs past the end of its message");
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn field(&mut self) -> Result<(u64, Wire<'a>)> {
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).context("field length")?;
                Wire::Bytes(self.take(len)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(self.take(4)?.try_into()?)),
            other => bail!("protobuf wire type {other} is not supported"),
        };
        Ok((key >> 3, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let field = self.field();
        if field.is_err() {
            self.rest = &[];
        }
        Some(field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-encoded model: two pieces, a trainer spec (BPE, byte fallback) and a normalizer
    /// without the dummy prefix; unknown fields of every wire type are skipped.
    #[test]
    fn reads_the_fields_hone_uses() {
        let piece = |text: &str, score: f32, kind: u8| {
            let mut p = vec![0x0a, text.len() as u8];
            p.extend(text.as_bytes());
            p.push(0x15);
            p.extend(score.to_le_bytes());
            p.extend([0x18, kind]);
            let mut field = vec![0x0a, p.len() as u8];
            field.extend(p);
            field
        };
        let mut bytes = piece("<unk>", 0.0, 2);
        bytes.extend(piece("▁a", -1.5, 1));
        // trainer_spec { model_type: 2, byte_fallback (35): true, an unknown fixed64 }
        bytes.extend([
            0x12, 14, 0x18, 2, 0x98, 0x02, 1, 0x09, 1, 2, 3, 4, 5, 6, 7, 8,
        ]);
        // normalizer_spec { name: "identity", add_dummy_prefix: false }
        bytes.extend([0x1a, 12, 0x0a, 8]);
        bytes.extend(b"identity");
        bytes.extend([0x18, 0]);
        let model = parse(&bytes).unwrap();
        assert_eq!(model.pieces, ["<unk>", "▁a"]);
        assert_eq!(model.scores, [0.0, -1.5]);
        assert_eq!(model.types, [2, 1]);
        assert_eq!((model.model_type, model.byte_fallback), (2, true));
        assert_eq!(
            (model.add_dummy_prefix, model.normalizer.as_str()),
            (false, "identity")
        );
    }

    #[test]
    fn truncated_input_is_an_error() {
        assert!(parse(&[0x0a, 5, 0x0a]).is_err());
        assert!(parse(&[0x08, 0xff]).is_err());
        assert!(parse(&[]).is_err());
    }
}
