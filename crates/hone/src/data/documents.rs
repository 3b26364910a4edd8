//! Raw text for continued pre-training (`stage: pt`): documents in, blocks of tokens out.
//!
//! **Documents.** A `.txt` file holds a document a line (blank lines are skipped), as `datasets`'
//! text builder reads it; a JSON or JSON Lines file holds a document a row, in the column
//! `dataset_info.json` names as `prompt` (LLaMA-Factory's `columns: {prompt: text}`), or `text` in
//! a file named directly.
//!
//! **Tokens.** Each document is its text's tokens, with the tokenizer's BOS in front when it adds
//! one (`add_bos_token`) and EOS behind, and every token is learnt, EOS included (LLaMA-Factory
//! pads with EOS and its collator then masks every EOS out of the loss, so its models never learn
//! where a document ends).
//!
//! **Blocks.** With packing (the default for pt, as in LLaMA-Factory) the documents' tokens are
//! laid end to end and cut into `cutoff_len` blocks, attention running across documents within a
//! block as in LLaMA-Factory and transformers' `run_clm`. LLaMA-Factory drops the tail of every
//! 1000 documents that does not fill a block and overwrites each block's first token with BOS;
//! Hone keeps the tail as a shorter last block and overwrites nothing (BOS stands at document
//! starts). Without packing each document is a row of its own, cut to `cutoff_len` tokens.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::convert::{kind, RowError, SkipReason};
use super::info::{self, Source};
use super::load::{convert_rows, SkipSummary};
use super::record::FileUse;
use super::rows::{read_rows, text_lines};
use super::{Example, RowOrigin};
use crate::tokenizer::Tokenizer;

/// One document's text and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub text: String,
    pub origin: RowOrigin,
}

/// The documents of a dataset, in file and row order, and the rows left out.
#[derive(Debug, Clone)]
pub struct LoadedDocuments {
    pub documents: Vec<Document>,
    pub skipped: SkipSummary,
    pub files: Vec<FileUse>,
}

/// The column a JSON file named directly (not through `dataset_info.json`) keeps its text in.
const DIRECT_TEXT_COLUMN: &str = "text";

/// Loads the documents of `dataset` (comma-separated names in `dataset_dir/dataset_info.json`, or
/// `.txt`/`.json`/`.jsonl` paths). A bad row is an error `file:line: field: problem` unless
/// `skip_invalid_rows`; a file without documents is an error either way.
pub fn load_documents(
    dataset: &str,
    dataset_dir: &Path,
    skip_invalid_rows: bool,
) -> Result<LoadedDocuments> {
    let mut loaded = LoadedDocuments {
        documents: Vec::new(),
        skipped: SkipSummary::default(),
        files: Vec::new(),
    };
    for source in info::resolve(dataset, dataset_dir)? {
        source.refuse_ranking("continued pre-training (stage: pt) reads plain text")?;
        let (documents, skipped, rows) = if is_text_file(&source.path) {
            let documents = text_documents(&source.path)?;
            let rows = documents.len();
            (documents, SkipSummary::default(), rows)
        } else {
            json_documents(&source, skip_invalid_rows)?
        };
        if documents.is_empty() {
            bail!("{}: no documents ({skipped})", source.path.display());
        }
        loaded.files.push(FileUse {
            path: source.path.clone(),
            role: "dataset",
            rows,
            used: documents.len(),
        });
        loaded.documents.extend(documents);
        loaded.skipped.merge(skipped);
    }
    Ok(loaded)
}

fn is_text_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "txt")
}

/// A document per non-blank line.
fn text_documents(path: &Path) -> Result<Vec<Document>> {
    Ok(text_lines(path)?
        .into_iter()
        .map(|(line, text)| Document {
            text,
            origin: RowOrigin {
                file: path.to_owned(),
                line,
            },
        })
        .collect())
}

/// A document per JSON row, from its text column; returns the documents, the rows skipped and
/// the rows read.
fn json_documents(
    source: &Source,
    skip_invalid_rows: bool,
) -> Result<(Vec<Document>, SkipSummary, usize)> {
    let column = source
        .format
        .as_ref()
        .map_or(DIRECT_TEXT_COLUMN, |f| f.columns.prompt.as_str());
    let rows = read_rows(&source.path)?;
    let total = rows.len();
    let (documents, skipped) = convert_rows(rows, skip_invalid_rows, |row| {
        let origin = RowOrigin {
            file: source.path.clone(),
            line: row.line,
        };
        match document(row.value, column) {
            Ok(text) => Ok(Document { text, origin }),
            Err((field, problem, reason)) => Err(RowError {
                origin,
                field,
                problem,
                reason,
            }),
        }
    })?;
    Ok((documents, skipped, total))
}

type Fault = (Option<String>, String, SkipReason);

/// The text of a row, or what is wrong with it.
fn document(value: Result<Value, String>, column: &str) -> Result<String, Fault> {
    let value = value.map_err(|e| (None, e, SkipReason::InvalidJson))?;
    let Value::Object(object) = value else {
        return Err((None, "not a JSON object".into(), SkipReason::NotAnObject));
    };
    let field = || Some(column.to_owned());
    match object.get(column) {
        None | Some(Value::Null) => Err((field(), "missing".into(), SkipReason::MissingField)),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err((field(), "empty text".into(), SkipReason::EmptyMessage))
        }
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err((
            field(),
            format!("expected a string, found {}", kind(other)),
            SkipReason::WrongType,
        )),
    }
}

/// The training examples of `documents`: with `packing`, the documents' tokens end to end in
/// blocks of `cutoff_len` (the last one shorter, left out if it is a single token, which nothing
/// could predict); without, a document each, cut to `cutoff_len`. Every token is labelled.
pub fn pretraining_examples(
    tokenizer: &Tokenizer,
    documents: &[Document],
    cutoff_len: usize,
    packing: bool,
) -> Result<Vec<Example>> {
    let eos = tokenizer.eos_id().ok_or_else(|| {
        anyhow!("the tokenizer has no EOS token, which continued pre-training ends documents with")
    })?;
    let bos = match tokenizer.add_bos_token()? {
        true => tokenizer.bos_id(),
        false => None,
    };
    let tokens = |document: &Document| -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = bos.into_iter().collect();
        ids.extend(
            tokenizer
                .encode(&document.text, false)
                .with_context(|| document.origin.to_string())?,
        );
        ids.push(eos);
        Ok(ids)
    };
    let labelled = |input_ids: Vec<u32>| Example {
        labels: input_ids.iter().map(|&id| i64::from(id)).collect(),
        input_ids,
    };
    if !packing {
        return documents
            .iter()
            .map(|d| {
                let mut ids = tokens(d)?;
                ids.truncate(cutoff_len);
                Ok(labelled(ids))
            })
            .collect();
    }
    let mut stream = Vec::new();
    for document in documents {
        stream.extend(tokens(document)?);
    }
    Ok(stream
        .chunks(cutoff_len)
        .filter(|block| block.len() >= 2)
        .map(|block| labelled(block.to_vec()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn texts(loaded: &LoadedDocuments) -> Vec<&str> {
        loaded.documents.iter().map(|d| d.text.as_str()).collect()
    }

    #[test]
    fn a_text_file_is_a_document_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "w.txt", "first doc\n\n  \nsecond doc\n");
        let loaded = load_documents(path.to_str().unwrap(), dir.path(), false).unwrap();
        assert_eq!(texts(&loaded), ["first doc", "second doc"]);
        assert_eq!(loaded.documents[1].origin.line, 4);
        assert_eq!((loaded.files[0].rows, loaded.files[0].used), (2, 2));
    }

    #[test]
    fn dataset_info_names_the_text_column() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "c4.jsonl",
            "{\"content\": \"a\"}\n{\"content\": \"b\"}\n",
        );
        write(
            dir.path(),
            "dataset_info.json",
            r#"{"c4": {"file_name": "c4.jsonl", "columns": {"prompt": "content"}}}"#,
        );
        let loaded = load_documents("c4", dir.path(), false).unwrap();
        assert_eq!(texts(&loaded), ["a", "b"]);
    }

    #[test]
    fn bad_rows_name_file_line_and_field_or_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "d.jsonl",
            "{\"text\": \"ok\"}\n{\"text\": 3}\n{\"body\": \"x\"}\n{\"text\": \" \"}\nnot json\n",
        );
        let name = path.to_str().unwrap();
        let error = load_documents(name, dir.path(), false).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("{name}:2: text: expected a string, found a number")
        );
        let loaded = load_documents(name, dir.path(), true).unwrap();
        assert_eq!(texts(&loaded), ["ok"]);
        assert_eq!(loaded.skipped.total(), 4);
        assert_eq!((loaded.files[0].rows, loaded.files[0].used), (5, 1));
    }

    fn tiny_tokenizer() -> Tokenizer {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tokenizer/tiny-spm.gguf");
        let gguf = crate::io::gguf::GgufFile::open(&path).unwrap();
        Tokenizer::from_gguf(&gguf).unwrap()
    }

    fn documents(texts: &[&str]) -> Vec<Document> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Document {
                text: t.to_string(),
                origin: RowOrigin {
                    file: "d.txt".into(),
                    line: i + 1,
                },
            })
            .collect()
    }

    /// Each document as trained: BOS when the tokenizer adds one, its tokens, EOS.
    fn document_tokens(tok: &Tokenizer, text: &str) -> Vec<u32> {
        let bos = tok.bos_id().filter(|_| tok.add_bos_token().unwrap());
        let mut ids: Vec<u32> = bos.into_iter().collect();
        ids.extend(tok.encode(text, false).unwrap());
        ids.push(tok.eos_id().unwrap());
        ids
    }

    #[test]
    fn packed_blocks_hold_every_token_in_order_and_label_them_all() {
        let tok = tiny_tokenizer();
        let texts = [
            "the first document",
            "a second one, a little longer",
            "third",
        ];
        let docs = documents(&texts);
        let stream: Vec<u32> = texts
            .iter()
            .flat_map(|t| document_tokens(&tok, t))
            .collect();
        let cutoff = 7;
        let blocks = pretraining_examples(&tok, &docs, cutoff, true).unwrap();
        let joined: Vec<u32> = blocks.iter().flat_map(|b| b.input_ids.clone()).collect();
        // A last block of one token is left out: nothing in it could predict it.
        let kept = stream.len() - usize::from(stream.len() % cutoff == 1);
        assert_eq!(stream.len() % cutoff, 1, "the case worth testing");
        assert_eq!(
            joined,
            stream[..kept],
            "tokens were dropped, added or moved"
        );
        assert_eq!(blocks.len(), kept.div_ceil(cutoff));
        for block in &blocks[..blocks.len() - 1] {
            assert_eq!(block.input_ids.len(), cutoff);
        }
        for block in &blocks {
            let ids: Vec<i64> = block.input_ids.iter().map(|&i| i64::from(i)).collect();
            assert_eq!(block.labels, ids, "every token is learnt");
        }
    }

    #[test]
    fn unpacked_documents_are_rows_cut_to_cutoff_len() {
        let tok = tiny_tokenizer();
        let texts = [
            "short",
            "a much longer document that will not fit in the cutoff",
        ];
        let rows = pretraining_examples(&tok, &documents(&texts), 6, false).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].input_ids, document_tokens(&tok, texts[0]));
        assert_eq!(rows[1].input_ids, document_tokens(&tok, texts[1])[..6]);
    }

    #[test]
    fn preference_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "p.json", "[]");
        write(
            dir.path(),
            "dataset_info.json",
            r#"{"p": {"file_name": "p.json", "ranking": true}}"#,
        );
        let error = load_documents("p", dir.path(), false).unwrap_err();
        assert!(format!("{error:#}").contains("ranking"), "{error:#}");
    }
}
