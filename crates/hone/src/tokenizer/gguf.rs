//! Rebuilds the tokenizer a GGUF file describes, the way transformers' GGUF converter does
//! (`integrations/gguf/gguf_tokenizer_mapping.py`), so ids match `AutoTokenizer.from_pretrained(.., gguf_file=..)`.
//!
//! Two vocabularies cover the Llama family:
//! - `gpt2`: byte-level BPE from tokens + merges, split by the regex `tokenizer.ggml.pre` names;
//! - `llama`: SentencePiece-style BPE with byte fallback, merges recovered from token scores.
//!
//! One deliberate difference: transformers' GPT2Tokenizer/LlamaTokenizer first add their class default
//! special tokens ("<|endoftext|>", or "<unk>"/"<s>"/"</s>") when the vocabulary lacks them, creating
//! ids past the model's embedding table; Hone adds only the tokens the file names.

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use super::split_regex::split_regex;
use super::{SpecialTokens, Tokenizer};
use crate::io::gguf::{GgufFile, GgufValue};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Architectures whose SentencePiece vocabulary transformers builds differently (Gemma, Phi-3).
const OTHER_SENTENCEPIECE: &[&str] = &["gemma", "gemma2", "gemma3", "phi3"];

pub(super) fn build(file: &GgufFile) -> Result<Tokenizer> {
    let path = file.path.display();
    let meta = Meta { file };
    let model = meta
        .string("tokenizer.ggml.model")?
        .context("no tokenizer.ggml.model")?;
    let arch = meta.string("general.architecture")?.unwrap_or_default();
    let tokens = meta
        .strings("tokenizer.ggml.tokens")?
        .context("no tokenizer.ggml.tokens")?;
    let types = meta.ints("tokenizer.ggml.token_type")?;
    let merges = meta.strings("tokenizer.ggml.merges")?;
    let (mut inner, kind, add_bos_default) = match model.as_str() {
        "gpt2" => {
            let merges = merges.context("a gpt2 tokenizer needs tokenizer.ggml.merges")?;
            let pre = meta.string("tokenizer.ggml.pre")?;
            (byte_level_bpe(&tokens, &merges, pre.as_deref())?, "gpt2-bpe", false)
        }
        "llama" if OTHER_SENTENCEPIECE.contains(&arch.as_str()) => bail!(
            "{path}: architecture {arch:?} uses a SentencePiece variant Hone does not build (Llama-family files only)"
        ),
        "llama" => {
            let merges = match merges {
                Some(merges) => parse_merges(&merges)?,
                None => {
                    let scores = meta.floats("tokenizer.ggml.scores")?;
                    merges_from_scores(&tokens, &scores.context("no tokenizer.ggml.merges nor scores")?)?
                }
            };
            (sentencepiece_bpe(&tokens, merges, Spaces::Metaspace)?, "llama-spm", true)
        }
        other => bail!(
            "{path}: tokenizer.ggml.model is {other:?}; Hone builds \"gpt2\" (byte-level BPE) and \"llama\" (SentencePiece BPE) tokenizers"
        ),
    };
    if let Some(types) = &types {
        add_typed_tokens(&mut inner, &tokens, types, kind == "gpt2-bpe")?;
    }
    let token_at = |key: &str| -> Result<Option<String>> {
        let Some(id) = meta.u32(key)? else {
            return Ok(None);
        };
        let token = tokens.get(id as usize).with_context(|| {
            format!(
                "{key} = {id} is past the end of the vocabulary ({} tokens)",
                tokens.len()
            )
        })?;
        Ok(Some(token.clone()))
    };
    let specials = SpecialTokens {
        bos: token_at("tokenizer.ggml.bos_token_id")?,
        eos: token_at("tokenizer.ggml.eos_token_id")?,
        unk: token_at("tokenizer.ggml.unknown_token_id")?,
        pad: token_at("tokenizer.ggml.padding_token_id")?,
    };
    // Older SentencePiece files carry no flag; llama.cpp (and transformers) then add BOS.
    let add_bos = meta
        .bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(add_bos_default);
    let add_eos = meta.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let chat_template = meta.string("tokenizer.chat_template")?;
    let extra_stop_ids = ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"]
        .into_iter()
        .filter_map(|key| meta.u32(key).transpose())
        .collect::<Result<Vec<u32>>>()?;
    Tokenizer::assemble(
        inner,
        kind,
        specials,
        chat_template,
        extra_stop_ids,
        Some((add_bos, add_eos)),
    )
    .with_context(|| format!("{path}: building the tokenizer"))
}

/// Typed access to the metadata, with errors naming the file and key.
struct Meta<'a> {
    file: &'a GgufFile,
}

impl Meta<'_> {
    fn get<T>(
        &self,
        key: &str,
        what: &str,
        f: impl Fn(&GgufValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.file.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).with_context(|| {
                format!(
                    "{}: {key} should be {what}, found {}",
                    self.file.path.display(),
                    v.type_name()
                )
            }),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        self.get(key, "a string", |v| v.as_str().map(str::to_owned))
    }

    fn u32(&self, key: &str) -> Result<Option<u32>> {
        self.get(key, "a token id", |v| {
            v.as_u64().and_then(|n| u32::try_from(n).ok())
        })
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key, "a bool", GgufValue::as_bool)
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        self.get(key, "an array of strings", |v| {
            v.as_array()?
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.get(key, "an array of integers", |v| {
            v.as_array()?.iter().map(GgufValue::as_i64).collect()
        })
    }

    fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.get(key, "an array of numbers", |v| {
            v.as_array()?.iter().map(GgufValue::as_f64).collect()
        })
    }
}

/// GPT-2's reversible byte → printable character table (`bytes_to_unicode`).
pub(super) fn byte_alphabet() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (byte, slot) in table.iter_mut().enumerate() {
        let printable = matches!(byte, 33..=126 | 161..=172 | 174..=255);
        let code = if printable {
            byte as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).expect("codes below 512 are valid chars");
    }
    table
}

pub(super) fn byte_level_bpe(
    tokens: &[String],
    merges: &[String],
    pre: Option<&str>,
) -> Result<tokenizers::Tokenizer> {
    let table = byte_alphabet();
    let alphabet: HashSet<char> = table.iter().copied().collect();
    // Tokens already spelled in the byte alphabet stay; others (raw UTF-8 in some files) are respelled.
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let spelled = if t.chars().all(|c| alphabet.contains(&c)) {
                t.clone()
            } else {
                t.bytes().map(|b| table[b as usize]).collect()
            };
            (spelled, id as u32)
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, parse_merges(merges)?)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| anyhow!("invalid byte-level BPE vocabulary: {e}"))?;
    let pre_tokenizer: PreTokenizerWrapper = match pre.and_then(split_regex) {
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow!("pre-tokenizer regex: {e}"))?;
            PreSequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        None => ByteLevel::new(false, true, true).into(),
    };
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer));
    inner.with_decoder(Some(ByteLevel::new(true, true, true)));
    Ok(inner)
}

/// How a SentencePiece-style tokenizer turns spaces into `▁` and adds the dummy prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Spaces {
    /// transformers' converter for GGUF llama vocabularies: a Metaspace pre-tokenizer, which
    /// prepends `▁` unless the text already starts with a space.
    Metaspace,
    /// SentencePiece itself (the remote-code classes run it): `▁` prepended to every text when
    /// `dummy_prefix` (`add_dummy_prefix`), even one starting with a space, as transformers'
    /// legacy Llama normalizer does; spaces replaced.
    SentencePiece { dummy_prefix: bool },
}

/// The SentencePiece BPE of `tokens` and `merges` with byte fallback, spaces kept as `▁` the way
/// `spaces` says; its decoder strips the dummy prefix again when one is added.
pub(super) fn sentencepiece_bpe(
    tokens: &[String],
    merges: Vec<(String, String)>,
    spaces: Spaces,
) -> Result<tokenizers::Tokenizer> {
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| anyhow!("invalid SentencePiece BPE vocabulary: {e}"))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let dummy_prefix = match spaces {
        Spaces::Metaspace => {
            inner.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::First, false)));
            true
        }
        Spaces::SentencePiece { dummy_prefix } => {
            let mut steps: Vec<NormalizerWrapper> = Vec::new();
            if dummy_prefix {
                steps.push(Prepend::new("▁".into()).into());
            }
            let replace = Replace::new(" ", "▁").map_err(|e| anyhow!("normalizer: {e}"))?;
            steps.push(replace.into());
            inner
                .with_normalizer(Some(NormalizerSequence::new(steps)))
                .map_err(|e| anyhow!("normalizer: {e}"))?;
            dummy_prefix
        }
    };
    let replace = Replace::new("▁", " ").map_err(|e| anyhow!("decoder: {e}"))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        replace.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if dummy_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    inner.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
}

fn parse_merges(merges: &[String]) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .map(|m| match m.split(' ').collect::<Vec<_>>()[..] {
            [left, right] => Ok((left.to_owned(), right.to_owned())),
            _ => {
                bail!("tokenizer.ggml.merges entry {m:?} is not two tokens separated by one space")
            }
        })
        .collect()
}

/// Merges implied by a SentencePiece vocabulary (transformers' `generate_merges` with scores): every
/// split of a token into two tokens, best-scored first; ties keep vocabulary order.
pub(super) fn merges_from_scores(
    tokens: &[String],
    scores: &[f64],
) -> Result<Vec<(String, String)>> {
    if scores.len() != tokens.len() {
        bail!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            scores.len(),
            tokens.len()
        );
    }
    // Python dicts: a repeated token keeps its first position, with the last id and score.
    let mut id: HashMap<&str, usize> = HashMap::new();
    let mut score: HashMap<&str, f64> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (i, (token, &s)) in tokens.iter().zip(scores).enumerate() {
        // Merges are ranked by score: a NaN ranks nowhere (and broke the sort's total order,
        // found by fuzzing).
        if s.is_nan() {
            bail!("tokenizer.ggml.scores[{i}] is NaN: a merge cannot be ranked by it");
        }
        if id.insert(token, i).is_none() {
            order.push(token);
        }
        score.insert(token, s);
    }
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for piece in order {
        let mut local: Vec<(&str, &str, f64)> = piece
            .char_indices()
            .skip(1)
            .map(|(at, _)| piece.split_at(at))
            .filter(|(l, r)| id.contains_key(l) && id.contains_key(r))
            .map(|(l, r)| (l, r, score[piece]))
            .collect();
        local.sort_by_key(|&(l, r, _)| (id[l], id[r]));
        merges.extend(local);
    }
    let key = |&(l, r, s): &(&str, &str, f64)| (s, l.chars().count(), r.chars().count());
    // Descending and stable, like Python's `sorted(..., reverse=True)`.
    merges.sort_by(|a, b| {
        key(b)
            .partial_cmp(&key(a))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok(merges
        .into_iter()
        .map(|(l, r, _)| (l.to_owned(), r.to_owned()))
        .collect())
}

/// Control tokens become special added tokens and user-defined ones plain added tokens, so both
/// match whole in text. In a byte-level vocabulary a "control" token outside the byte alphabet is a
/// llama.cpp mislabel and is skipped, as transformers does.
pub(super) fn add_typed_tokens(
    inner: &mut tokenizers::Tokenizer,
    tokens: &[String],
    types: &[i64],
    byte_level: bool,
) -> Result<()> {
    let alphabet: HashSet<char> = byte_alphabet().into_iter().collect();
    let typed = |kind: i64| {
        tokens
            .iter()
            .zip(types)
            .filter(move |&(_, &t)| t == kind)
            .map(|(s, _)| s)
    };
    let control: Vec<AddedToken> = typed(CONTROL)
        .filter(|t| !byte_level || t.chars().all(|c| alphabet.contains(&c)))
        .map(|t| AddedToken::from(t.as_str(), true).normalized(false))
        .collect();
    inner
        .add_special_tokens(control)
        .map_err(|e| anyhow!("adding control tokens: {e}"))?;
    let vocab = inner.get_vocab(true);
    let user: Vec<AddedToken> = typed(USER_DEFINED)
        .filter(|t| vocab.contains_key(t.as_str()))
        .map(|t| AddedToken::from(t.as_str(), false).normalized(false))
        .collect();
    inner
        .add_tokens(user)
        .map_err(|e| anyhow!("adding user-defined tokens: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_matches_gpt2() {
        let table = byte_alphabet();
        assert_eq!(table[b'A' as usize], 'A');
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[0], 'Ā');
        assert_eq!(table.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn merges_from_scores_order() {
        let tokens: Vec<String> = ["a", "b", "ab", "ba", "abb", "bb"].map(String::from).into();
        let scores = [0.0, 0.0, -1.0, -2.0, -3.0, -1.0];
        let merges = merges_from_scores(&tokens, &scores).unwrap();
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(l, r)| (l.as_str(), r.as_str()))
            .collect();
        // Score -1 first ("ab" before "bb": vocabulary order), then -2, then abb's two splits.
        assert_eq!(
            pairs,
            [("a", "b"), ("b", "b"), ("b", "a"), ("ab", "b"), ("a", "bb")]
        );
    }

    /// Found by fuzzing: NaN scores broke the ranking sort's total order (a panic).
    #[test]
    fn a_nan_score_is_refused() {
        let tokens: Vec<String> = ["a", "b", "ab", "ba"].map(String::from).into();
        let scores = [0.0, 0.0, f64::NAN, -2.0];
        let err = merges_from_scores(&tokens, &scores).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tokenizer.ggml.scores[2] is NaN: a merge cannot be ranked by it"
        );
    }

    #[test]
    fn parse_merges_rejects_malformed() {
        assert_eq!(
            parse_merges(&["a b".into()]).unwrap(),
            [("a".into(), "b".into())]
        );
        assert!(parse_merges(&["ab".into()]).is_err());
        assert!(parse_merges(&["a b c".into()]).is_err());
    }
}
