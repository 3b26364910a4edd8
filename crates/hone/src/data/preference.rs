//! Preference data for `stage: dpo`: a prompt with a chosen and a rejected response.
//!
//! **Rows** are LLaMA-Factory's `ranking: true` datasets: Alpaca rows with `chosen`/`rejected`
//! strings, or ShareGPT rows whose conversation ends with the user's turn and whose
//! `chosen`/`rejected` are assistant turns (see `convert.rs`). A file named directly is preference
//! data when its first row has both columns.
//!
//! **Encoding.** Each response is rendered after the prompt through the chat template, as an SFT
//! example whose labels cover only that last response (and the template's end of turn). The two
//! examples of a pair share one length budget, as LLaMA-Factory's pairwise processor does: the
//! prompt and the longer response share `cutoff_len` (`infer_seqlen`), the prompt keeps its end
//! (and a leading BOS) and each response its start — so both are scored after the same prompt.

use std::path::Path;

use anyhow::{bail, Result};
use serde_json::Value;

use super::convert::convert_pair;
use super::encode::{encode_last_response, infer_seqlen};
use super::info::{self, Format, Source};
use super::load::{convert_rows, SkipSummary};
use super::record::FileUse;
use super::rows::{read_rows, RawRow};
use super::{Conversation, Example};
use crate::chat::{ChatTemplate, Message};
use crate::kernels::cross_entropy::IGNORE_INDEX;
use crate::tokenizer::Tokenizer;

/// One preference row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferencePair {
    /// The conversation up to and including the user's last turn.
    pub prompt: Conversation,
    pub chosen: String,
    pub rejected: String,
}

/// The pairs of a dataset, in file and row order, and the rows left out.
#[derive(Debug, Clone)]
pub struct LoadedPairs {
    pub pairs: Vec<PreferencePair>,
    pub skipped: SkipSummary,
    pub files: Vec<FileUse>,
}

/// Loads the preference pairs of `dataset` (comma-separated names in
/// `dataset_dir/dataset_info.json` with `ranking: true`, or `.json`/`.jsonl` paths). A bad row is
/// an error `file:line: field: problem` unless `skip_invalid_rows`.
pub fn load_pairs(
    dataset: &str,
    dataset_dir: &Path,
    skip_invalid_rows: bool,
) -> Result<LoadedPairs> {
    let mut loaded = LoadedPairs {
        pairs: Vec::new(),
        skipped: SkipSummary::default(),
        files: Vec::new(),
    };
    for source in info::resolve(dataset, dataset_dir)? {
        let rows = read_rows(&source.path)?;
        let format = pair_format(&source, &rows)?;
        let total = rows.len();
        let (pairs, skipped) = convert_rows(rows, skip_invalid_rows, |row| {
            let (prompt, chosen, rejected) = convert_pair(row, &format, &source.path)?;
            Ok(PreferencePair {
                prompt,
                chosen,
                rejected,
            })
        })?;
        if pairs.is_empty() {
            bail!(
                "{}: no usable preference rows ({skipped})",
                source.path.display()
            );
        }
        loaded.files.push(FileUse {
            path: source.path.clone(),
            role: "dataset",
            rows: total,
            used: pairs.len(),
        });
        loaded.pairs.extend(pairs);
        loaded.skipped.merge(skipped);
    }
    Ok(loaded)
}

/// The layout of a preference file: from `dataset_info.json` (which must say `ranking: true`), or
/// told from the first row of a file named directly.
fn pair_format(source: &Source, rows: &[RawRow]) -> Result<Format> {
    let path = source.path.display();
    if let Some(format) = &source.format {
        if !source.ranking {
            bail!(
                "{path}: not preference data: stage: dpo needs a dataset_info.json entry with \
                 ranking: true and chosen/rejected columns"
            );
        }
        return Ok(format.clone());
    }
    let first = rows.iter().find_map(|row| match &row.value {
        Ok(Value::Object(object)) => Some((row.line, object)),
        _ => None,
    });
    let Some((line, object)) = first else {
        bail!("{path}: no rows that are JSON objects");
    };
    let format = Format::detect(object)
        .filter(|_| object.contains_key("chosen") && object.contains_key("rejected"));
    match format {
        Some(format) => Ok(format),
        None => bail!(
            "{path}:{line}: not preference data: expected chosen and rejected beside \
             instruction/input (alpaca) or conversations (sharegpt)"
        ),
    }
}

/// The chosen and rejected examples of a pair, within `cutoff_len` tokens each (see the module
/// comment).
pub fn encode_pair(
    tok: &Tokenizer,
    template: &ChatTemplate,
    pair: &PreferencePair,
    cutoff_len: usize,
) -> Result<(Example, Example)> {
    let with = |response: &str| -> Result<Example> {
        let mut messages = pair.prompt.messages.clone();
        messages.push(Message::new("assistant", response));
        let conversation = Conversation {
            messages,
            tools: pair.prompt.tools.clone(),
            origin: pair.prompt.origin.clone(),
        };
        encode_last_response(tok, template, &conversation)
    };
    let (chosen, rejected) = (with(&pair.chosen)?, with(&pair.rejected)?);
    let pin_first = tok
        .bos_id()
        .is_some_and(|bos| chosen.input_ids.first() == Some(&bos));
    Ok(cut_pair(chosen, rejected, cutoff_len, pin_first))
}

/// One example cut to `cutoff_len` on its own, as a pair of it with itself would be.
pub(super) fn cut_one(example: Example, cutoff_len: usize, pin_first: bool) -> Example {
    cut_pair(example.clone(), example, cutoff_len, pin_first).0
}

/// Cuts both examples with one budget: the longer prompt and the longer response share
/// `cutoff_len`; each keeps its prompt's end (and token 0 when `pin_first`) and its response's
/// start.
fn cut_pair(
    chosen: Example,
    rejected: Example,
    cutoff_len: usize,
    pin_first: bool,
) -> (Example, Example) {
    let prompt_len = |e: &Example| e.labels.iter().take_while(|&&l| l == IGNORE_INDEX).count();
    let (pc, pr) = (prompt_len(&chosen), prompt_len(&rejected));
    let pin = usize::from(pin_first);
    let longest_prompt = pc.max(pr) - pin;
    let longest_response = (chosen.input_ids.len() - pc).max(rejected.input_ids.len() - pr);
    let (source, target) = infer_seqlen(longest_prompt, longest_response, cutoff_len - pin);
    let cut = |e: Example, prompt: usize| -> Example {
        let start = prompt - source.min(prompt - pin);
        let end = (prompt + target).min(e.input_ids.len());
        let keep = (0..pin).chain(start..end);
        Example {
            input_ids: keep.clone().map(|i| e.input_ids[i]).collect(),
            labels: keep.map(|i| e.labels[i]).collect(),
        }
    };
    (cut(chosen, pc), cut(rejected, pr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn sharegpt_info(dir: &Path) {
        write(
            dir,
            "dataset_info.json",
            r#"{"p": {"file_name": "p.json", "ranking": true, "formatting": "sharegpt",
                "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}}"#,
        );
    }

    #[test]
    fn sharegpt_and_alpaca_pairs_read_as_llamafactory_lays_them_out() {
        let dir = tempfile::tempdir().unwrap();
        sharegpt_info(dir.path());
        write(
            dir.path(),
            "p.json",
            r#"[{"conversations": [{"from": "human", "value": "hi"}],
                 "chosen": {"from": "gpt", "value": "good"},
                 "rejected": {"from": "gpt", "value": "bad"}}]"#,
        );
        let loaded = load_pairs("p", dir.path(), false).unwrap();
        let pair = &loaded.pairs[0];
        assert_eq!(pair.prompt.messages, vec![Message::new("user", "hi")]);
        assert_eq!(
            (pair.chosen.as_str(), pair.rejected.as_str()),
            ("good", "bad")
        );

        let direct = write(
            dir.path(),
            "a.jsonl",
            "{\"instruction\": \"q\", \"input\": \"x\", \"chosen\": \"c\", \"rejected\": \"r\", \"system\": \"s\"}\n",
        );
        let loaded = load_pairs(direct.to_str().unwrap(), dir.path(), false).unwrap();
        let pair = &loaded.pairs[0];
        assert_eq!(
            pair.prompt.messages,
            vec![Message::new("system", "s"), Message::new("user", "q\nx")]
        );
        assert_eq!((pair.chosen.as_str(), pair.rejected.as_str()), ("c", "r"));
    }

    #[test]
    fn bad_pairs_name_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        sharegpt_info(dir.path());
        let cases = [
            (
                r#"{"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "human", "value": "x"}, "rejected": {"from": "gpt", "value": "y"}}"#,
                "chosen.from: \"human\" is out of order",
            ),
            (
                r#"{"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "gpt", "value": "x"}}"#,
                "rejected: missing",
            ),
            (
                r#"{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "a"}], "chosen": {"from": "gpt", "value": "x"}, "rejected": {"from": "gpt", "value": "y"}}"#,
                "conversations: a preference row's conversation ends with the user's turn",
            ),
            (
                r#"{"conversations": [{"from": "human", "value": "hi"}], "chosen": {"from": "gpt", "value": " "}, "rejected": {"from": "gpt", "value": "y"}}"#,
                "chosen: empty",
            ),
        ];
        for (row, expected) in cases {
            let path = write(dir.path(), "p.json", &format!("[\n{row}\n]"));
            let error = load_pairs("p", dir.path(), false).unwrap_err().to_string();
            let want = format!("{}:2: {expected}", path.display());
            assert!(error.starts_with(&want), "{error}\nwanted: {want}");
        }
    }

    #[test]
    fn sft_data_is_not_preference_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "s.jsonl",
            "{\"instruction\": \"q\", \"output\": \"a\"}\n",
        );
        let error = load_pairs(path.to_str().unwrap(), dir.path(), false).unwrap_err();
        assert!(
            error.to_string().contains(":1: not preference data"),
            "{error}"
        );
    }

    fn example(prompt: usize, response: usize) -> Example {
        let input_ids: Vec<u32> = (0..(prompt + response) as u32).collect();
        let labels = input_ids
            .iter()
            .map(|&i| {
                if (i as usize) < prompt {
                    IGNORE_INDEX
                } else {
                    i64::from(i)
                }
            })
            .collect();
        Example { input_ids, labels }
    }

    #[test]
    fn a_pair_is_cut_with_one_budget_keeping_the_prompt_end_and_bos() {
        // Prompt 10 (BOS first), responses 6 and 3, cutoff 12: the prompt is shared half by
        // budget (infer_seqlen on 9 + 6 in 11): response 4... both keep the same prompt tokens.
        let (c, r) = cut_pair(example(10, 6), example(10, 3), 12, true);
        assert_eq!(c.input_ids.len(), 12);
        assert_eq!(c.input_ids[0], 0, "BOS kept");
        let prompt = |e: &Example| -> Vec<u32> {
            e.input_ids
                .iter()
                .zip(&e.labels)
                .filter(|(_, &l)| l == IGNORE_INDEX)
                .map(|(&i, _)| i)
                .collect()
        };
        assert_eq!(
            prompt(&c),
            prompt(&r),
            "both responses follow the same prompt"
        );
        assert_eq!(*prompt(&c).last().unwrap(), 9, "the prompt keeps its end");
        assert_eq!(
            r.input_ids.len() - prompt(&r).len(),
            3,
            "a short response is whole"
        );
        let (c, r) = cut_pair(example(4, 2), example(4, 3), 64, false);
        assert_eq!(
            (c, r),
            (example(4, 2), example(4, 3)),
            "what fits is untouched"
        );
    }
}
