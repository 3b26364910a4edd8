//! [`load_dataset`]: every file a `dataset` argument names, read and converted into
//! conversations, failing on the first bad row or, when asked, skipping bad rows and counting why.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{bail, Result};

use super::convert::{convert, Answer, RowError, SkipReason};
use super::info::{self, Format, Source};
use super::record::FileUse;
use super::rows::{for_each_row, RawRow};
use super::Conversation;

/// The conversations of a dataset, in file and row order, and the rows left out.
#[derive(Debug, Clone)]
pub struct LoadedDataset {
    pub conversations: Vec<Conversation>,
    pub skipped: SkipSummary,
    /// Each file read, with its rows read and used (`role` "dataset").
    pub files: Vec<FileUse>,
}

/// Rows skipped, counted by reason, each reason with its first occurrence as an example.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipSummary {
    by_reason: BTreeMap<SkipReason, (usize, RowError)>,
}

impl SkipSummary {
    pub fn add(&mut self, error: RowError) {
        self.by_reason
            .entry(error.reason)
            .and_modify(|(count, _)| *count += 1)
            .or_insert((1, error));
    }

    pub fn merge(&mut self, other: SkipSummary) {
        for (reason, (count, first)) in other.by_reason {
            self.by_reason
                .entry(reason)
                .and_modify(|(n, _)| *n += count)
                .or_insert((count, first));
        }
    }

    /// Rows skipped for `reason`.
    pub fn count(&self, reason: SkipReason) -> usize {
        self.by_reason.get(&reason).map_or(0, |(n, _)| *n)
    }

    /// Rows skipped in all.
    pub fn total(&self) -> usize {
        self.by_reason.values().map(|(n, _)| n).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_reason.is_empty()
    }
}

impl fmt::Display for SkipSummary {
    /// `no rows skipped`, or e.g. `3 rows skipped: 2 missing field (first: a.jsonl:4: output:
    /// missing); 1 roles out of order (first: ...)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        match total {
            0 => return f.write_str("no rows skipped"),
            1 => f.write_str("1 row skipped: ")?,
            n => write!(f, "{n} rows skipped: ")?,
        }
        for (i, (reason, (count, first))) in self.by_reason.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{count} {reason} (first: {first})")?;
        }
        Ok(())
    }
}

/// Loads a dataset. `dataset`: comma-separated names looked up in `dataset_dir/dataset_info.json`,
/// or direct `.json`/`.jsonl` paths, whose format is told from the keys of their rows.
///
/// A bad row is an error `file:line: field: problem` unless `skip_invalid_rows`, in which case it
/// is left out and counted. Either way, a file with no usable rows is an error, and so is a JSON
/// array file that does not parse (nothing after the fault can be trusted; a bad JSON Lines row
/// is only that row).
pub fn load_dataset(
    dataset: &str,
    dataset_dir: &Path,
    skip_invalid_rows: bool,
) -> Result<LoadedDataset> {
    let mut conversations = Vec::new();
    let (skipped, files) = for_each_conversation(dataset, dataset_dir, skip_invalid_rows, |c| {
        conversations.push(c);
        Ok(())
    })?;
    Ok(LoadedDataset {
        conversations,
        skipped,
        files,
    })
}

/// [`load_dataset`], each conversation handed to `take` as its row is read (training encodes it
/// there and then, so a large dataset is never held as text); the rows skipped and the files read.
pub fn for_each_conversation(
    dataset: &str,
    dataset_dir: &Path,
    skip_invalid_rows: bool,
    mut take: impl FnMut(Conversation) -> Result<()>,
) -> Result<(SkipSummary, Vec<FileUse>)> {
    let mut skipped = SkipSummary::default();
    let mut files = Vec::new();
    for source in info::resolve(dataset, dataset_dir)? {
        source.refuse_ranking("supervised fine-tuning learns one response per prompt")?;
        let mut used = 0;
        let file_skipped = each_conversation(
            &source,
            skip_invalid_rows,
            Answer::Required,
            |conversation| {
                used += 1;
                take(conversation)
            },
        )?;
        if used == 0 {
            bail!("{}: no usable rows ({file_skipped})", source.path.display());
        }
        files.push(FileUse {
            path: source.path.clone(),
            role: "dataset",
            rows: used + file_skipped.total(),
            used,
        });
        skipped.merge(file_skipped);
    }
    Ok((skipped, files))
}

/// The conversations of one file and the rows skipped (only when `skip_invalid_rows`).
pub(super) fn load_file(
    source: &Source,
    skip_invalid_rows: bool,
    answer: Answer,
) -> Result<(Vec<Conversation>, SkipSummary)> {
    let mut conversations = Vec::new();
    let skipped = each_conversation(source, skip_invalid_rows, answer, |c| {
        conversations.push(c);
        Ok(())
    })?;
    Ok((conversations, skipped))
}

/// [`load_file`], each conversation handed to `take` as its row is read. A file named directly
/// has its format told from its first row that is a JSON object (rows before it wait for it).
fn each_conversation(
    source: &Source,
    skip_invalid_rows: bool,
    answer: Answer,
    mut take: impl FnMut(Conversation) -> Result<()>,
) -> Result<SkipSummary> {
    let path = &source.path;
    let mut skipped = SkipSummary::default();
    let mut format = source.format.clone();
    let mut waiting = Vec::new();
    let mut convert_row = |row: RawRow, format: &Format| match convert(row, format, path, answer) {
        Ok(conversation) => take(conversation),
        Err(error) if skip_invalid_rows => {
            skipped.add(error);
            Ok(())
        }
        Err(error) => Err(error.into()),
    };
    for_each_row(path, |row| {
        if format.is_none() {
            if !matches!(row.value, Ok(serde_json::Value::Object(_))) {
                waiting.push(row);
                return Ok(());
            }
            let told = detect_format(path, std::slice::from_ref(&row))?;
            for earlier in waiting.drain(..) {
                convert_row(earlier, &told)?;
            }
            format = Some(told);
        }
        convert_row(row, format.as_ref().expect("told above"))
    })?;
    if format.is_none() {
        detect_format(path, &waiting)?;
    }
    Ok(skipped)
}

/// Each of a file's rows through `convert`, in order: the items, and the rows skipped by reason —
/// when `skip_invalid_rows`; otherwise the first bad row is the error.
pub(super) fn convert_rows<T>(
    rows: Vec<RawRow>,
    skip_invalid_rows: bool,
    mut convert: impl FnMut(RawRow) -> Result<T, RowError>,
) -> Result<(Vec<T>, SkipSummary)> {
    let mut items = Vec::with_capacity(rows.len());
    let mut skipped = SkipSummary::default();
    for row in rows {
        match convert(row) {
            Ok(item) => items.push(item),
            Err(error) if skip_invalid_rows => skipped.add(error),
            Err(error) => return Err(error.into()),
        }
    }
    Ok((items, skipped))
}

/// The format of a file named directly, from the keys of its first row that is an object.
pub(super) fn detect_format(path: &Path, rows: &[RawRow]) -> Result<Format> {
    let first = rows.iter().find_map(|row| match &row.value {
        Ok(serde_json::Value::Object(object)) => Some((row.line, object)),
        _ => None,
    });
    let Some((line, object)) = first else {
        bail!("{}: no rows that are JSON objects", path.display());
    };
    match Format::detect(object) {
        Some(format) => Ok(format),
        None => {
            let keys: Vec<&str> = object.keys().map(String::as_str).collect();
            bail!(
                "{}:{line}: cannot tell the dataset format from the keys ({}): expected \
                 instruction/input/output (alpaca), conversations (sharegpt) or messages (openai); \
                 or describe the file in dataset_info.json",
                path.display(),
                keys.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests;
