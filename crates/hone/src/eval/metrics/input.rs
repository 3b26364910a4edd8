//! The files `hone eval score` reads: two plain-text files with one item per line (predictions
//! and references), or one JSON Lines file with `predict` and `label` fields per row
//! (LLaMA-Factory's `generated_predictions.jsonl`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::eval::json_kind;

/// One prediction and its reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub prediction: String,
    pub reference: String,
}

/// Reads (prediction, reference) pairs: line by line from `predictions` and `references`, which
/// must have as many lines; or, without `references`, from the `predict` and `label` fields of the
/// JSON Lines file `predictions` (blank lines skipped).
pub fn read_pairs(predictions: &Path, references: Option<&Path>) -> Result<Vec<Pair>> {
    match references {
        Some(references) => read_line_pairs(predictions, references),
        None => read_jsonl_pairs(predictions),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))
}

/// The lines of a text file: a final newline does not start another line, and a line's "\r"
/// before its "\n" is not part of it. Empty lines are items (an empty prediction is one).
fn lines(text: &str) -> Vec<String> {
    if text.is_empty() {
        return vec![];
    }
    let text = text.strip_suffix('\n').unwrap_or(text);
    text.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line).to_string())
        .collect()
}

fn read_line_pairs(predictions: &Path, references: &Path) -> Result<Vec<Pair>> {
    let hyps = lines(&read(predictions)?);
    let refs = lines(&read(references)?);
    if hyps.len() != refs.len() {
        bail!(
            "{} has {} lines but {} has {}: one reference line per prediction line",
            predictions.display(),
            hyps.len(),
            references.display(),
            refs.len()
        );
    }
    Ok(hyps
        .into_iter()
        .zip(refs)
        .map(|(prediction, reference)| Pair {
            prediction,
            reference,
        })
        .collect())
}

fn read_jsonl_pairs(path: &Path) -> Result<Vec<Pair>> {
    let text = read(path)?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let row: Value = serde_json::from_str(line).with_context(|| {
            format!("{at}: not valid JSON (without --references the predictions file is JSON Lines with `predict` and `label` fields)")
        })?;
        let Value::Object(row) = row else {
            bail!("{at}: expected a JSON object, found {}", json_kind(&row));
        };
        let field = |name: &str| -> Result<String> {
            match row.get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => bail!(
                    "{at}: field `{name}`: expected a string, found {}",
                    json_kind(other)
                ),
                None => bail!("{at}: field `{name}`: missing"),
            }
        };
        pairs.push(Pair {
            prediction: field("predict")?,
            reference: field("label")?,
        });
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_empty_items_but_not_the_final_newline() {
        assert_eq!(lines("a\n\nb\r\n"), ["a", "", "b"]);
        assert_eq!(lines("a\n\n"), ["a", ""]);
        assert_eq!(lines("\n"), [""]);
        assert!(lines("").is_empty());
    }
}
