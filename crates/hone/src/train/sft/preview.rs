//! `hone data`: what a run of a config will train on, seen before any weight is loaded, for every
//! stage (conversations, preference pairs as their chosen and rejected examples, raw-text blocks). Per
//! dataset: rows read and skipped (by reason), tokens per example, examples cut by `cutoff_len`,
//! the share of tokens that carry labels (those the loss is taken on) and how full `packing` would
//! fill its rows; then the first rows as the model sees them, rendered through the chat template
//! and tokenized, the trained tokens marked and special tokens shown as their text.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::setup;
use crate::chat::ChatTemplate;
use crate::data::{self, EncodeOptions, Example, SkipSummary};
use crate::kernels::cross_entropy::IGNORE_INDEX;
use crate::model;
use crate::tokenizer::Tokenizer;
use crate::train::config::{SftConfig, Stage};

/// One dataset name of the config, as training would read and encode it.
#[derive(Debug, Clone)]
pub struct DatasetStats {
    /// The name as the config gives it, and the key (`dataset` or `eval_dataset`).
    pub name: String,
    pub key: &'static str,
    pub rows: usize,
    /// Rows used: conversations (sft), pairs (dpo), documents (pt).
    pub used: usize,
    pub skipped: SkipSummary,
    /// Tokens of each example as trained (after `cutoff_len`), ascending.
    pub lengths: Vec<usize>,
    /// Rows longer than `cutoff_len` before it cut them (a pair when either response was cut).
    pub truncated: usize,
    /// Tokens with a label.
    pub labelled: usize,
    /// Rows `packing` would make of the examples (sft; pt blocks are packed already, dpo pairs
    /// never are).
    pub packed_rows: Option<usize>,
}

impl DatasetStats {
    fn tokens(&self) -> usize {
        self.lengths.iter().sum()
    }
}

/// A row as the model sees it: the rendered, tokenized text in runs of trained and untrained
/// tokens.
#[derive(Debug, Clone)]
pub struct Sample {
    /// `file:line` of the row.
    pub origin: String,
    pub pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    pub text: String,
    pub trained: bool,
}

/// Everything `hone data` shows.
#[derive(Debug, Clone)]
pub struct Preview {
    /// What `template:` resolved to, when a name was given (see `setup::chat_template`).
    pub template_note: Option<String>,
    pub cutoff_len: usize,
    pub packing: bool,
    /// `skip_invalid_rows`: without it, training stops at the first row counted as skipped here.
    pub skips_invalid_rows: bool,
    pub datasets: Vec<DatasetStats>,
    pub samples: Vec<Sample>,
}

/// How trained tokens are marked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marks {
    /// Green, for a terminal.
    Colour,
    /// `[[…]]`, for a file or a pipe.
    Brackets,
}

/// Reads and encodes every dataset of `config` as `hone train` would (the model's tokenizer and
/// chat template, no weights), keeping the first `sample_rows` rows of the first dataset to show.
pub fn preview(config: &SftConfig, sample_rows: usize) -> Result<Preview> {
    let (_, _, tokenizer) = model::inspect(&config.model.model_name_or_path)?;
    let (template, template_note) = match config.method.stage {
        Stage::Pt => (None, None),
        _ => {
            let (template, note) = setup::chat_template(config, &tokenizer)?;
            (Some(template), note)
        }
    };
    let d = &config.data;
    let cutoff_len = d.cutoff_len as usize;
    let names = [("dataset", &d.dataset), ("eval_dataset", &d.eval_dataset)];
    let mut datasets = Vec::new();
    let mut samples = Vec::new();
    for (key, list) in names {
        for name in list.iter().flat_map(|l| l.items()) {
            let read = match &template {
                Some(template) => encoded(config, &tokenizer, template, name)?,
                None => blocks(config, &tokenizer, name)?,
            };
            let room = sample_rows.saturating_sub(samples.len());
            for (origin, example) in read.examples.iter().take(room) {
                samples.push(sample(&tokenizer, origin, example)?);
            }
            let examples: Vec<Example> = read.examples.into_iter().map(|(_, e)| e).collect();
            let mut lengths: Vec<usize> = examples.iter().map(|e| e.input_ids.len()).collect();
            lengths.sort_unstable();
            let labelled = examples
                .iter()
                .flat_map(|e| &e.labels)
                .filter(|&&l| l != IGNORE_INDEX)
                .count();
            let packed_rows = match config.method.stage {
                Stage::Sft => {
                    let rows = examples.into_iter().map(data::Row::from).collect();
                    Some(data::pack(rows, cutoff_len).len())
                }
                _ => None,
            };
            datasets.push(DatasetStats {
                name: name.clone(),
                key,
                rows: read.rows,
                used: read.used,
                skipped: read.skipped,
                lengths,
                truncated: read.truncated,
                labelled,
                packed_rows,
            });
        }
    }
    Ok(Preview {
        template_note,
        cutoff_len,
        packing: config.packs(),
        skips_invalid_rows: d.skip_invalid_rows,
        datasets,
        samples,
    })
}

/// A dataset as a stage trains on it: its examples (each with where it came from), the rows
/// read and skipped, and how many rows `cutoff_len` cut.
struct Read {
    examples: Vec<(String, Example)>,
    rows: usize,
    used: usize,
    skipped: SkipSummary,
    truncated: usize,
}

/// Conversations (sft), preference pairs (dpo, rm: a chosen and a rejected example each) or KTO
/// rows (a response and its KL example each) encoded through the chat template.
fn encoded(
    config: &SftConfig,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    name: &str,
) -> Result<Read> {
    let d = &config.data;
    let dir = Path::new(&d.dataset_dir);
    let cutoff_len = d.cutoff_len as usize;
    let mut examples = Vec::new();
    let mut truncated = 0;
    if matches!(config.method.stage, Stage::Dpo | Stage::Rm) {
        let loaded = data::load_pairs(name, dir, true)?;
        for pair in &loaded.pairs {
            let (chosen, rejected) = data::encode_pair(tokenizer, template, pair, cutoff_len)?;
            let (whole_chosen, whole_rejected) =
                data::encode_pair(tokenizer, template, pair, usize::MAX / 2)?;
            let cut = chosen.input_ids.len() < whole_chosen.input_ids.len()
                || rejected.input_ids.len() < whole_rejected.input_ids.len();
            truncated += usize::from(cut);
            let origin = pair.prompt.origin.to_string();
            examples.push((format!("{origin}, chosen"), chosen));
            examples.push((format!("{origin}, rejected"), rejected));
        }
        return Ok(Read {
            examples,
            rows: loaded.files.iter().map(|f| f.rows).sum(),
            used: loaded.pairs.len(),
            skipped: loaded.skipped,
            truncated,
        });
    }
    if config.method.stage == Stage::Kto {
        return feedback(tokenizer, template, name, dir, cutoff_len);
    }
    let options = EncodeOptions {
        cutoff_len,
        train_on_prompt: d.train_on_prompt,
    };
    let loaded = data::load_dataset(name, dir, true)?;
    for conversation in &loaded.conversations {
        let (example, whole) = data::encode_measured(tokenizer, template, conversation, &options)?;
        truncated += usize::from(whole > cutoff_len);
        examples.push((conversation.origin.to_string(), example));
    }
    Ok(Read {
        examples,
        rows: loaded.files.iter().map(|f| f.rows).sum(),
        used: loaded.conversations.len(),
        skipped: loaded.skipped,
        truncated,
    })
}

/// KTO rows as the run trains on them: each response, tagged desirable or not, then its KL
/// example (the row's prompt with the previous row's response, forward only).
fn feedback(
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    name: &str,
    dir: &Path,
    cutoff_len: usize,
) -> Result<Read> {
    let loaded = data::load_feedback(name, dir, true)?;
    let examples = data::encode_feedback(tokenizer, template, &loaded.rows, cutoff_len)?;
    let whole = data::encode_feedback(tokenizer, template, &loaded.rows, usize::MAX / 2)?;
    let truncated = examples
        .chunks(2)
        .zip(whole.chunks(2))
        .filter(|(cut, whole)| {
            cut.iter()
                .zip(*whole)
                .any(|(c, w)| c.input_ids.len() < w.input_ids.len())
        })
        .count();
    let labelled = loaded
        .rows
        .iter()
        .zip(examples.chunks(2))
        .flat_map(|(row, pair)| {
            let origin = row.conversation.origin.to_string();
            let tag = if row.desirable {
                "desirable"
            } else {
                "undesirable"
            };
            [
                (format!("{origin}, {tag}"), pair[0].clone()),
                (
                    format!("{origin}, KL: the previous row's response"),
                    pair[1].clone(),
                ),
            ]
        });
    Ok(Read {
        examples: labelled.collect(),
        rows: loaded.files.iter().map(|f| f.rows).sum(),
        used: loaded.rows.len(),
        skipped: loaded.skipped,
        truncated,
    })
}

/// Raw text (pt) as training blocks (or, without packing, a row per document).
fn blocks(config: &SftConfig, tokenizer: &Tokenizer, name: &str) -> Result<Read> {
    let d = &config.data;
    let loaded = data::load_documents(name, Path::new(&d.dataset_dir), true)?;
    let cutoff_len = d.cutoff_len as usize;
    let packing = config.packs();
    let whole = data::pretraining_examples(tokenizer, &loaded.documents, usize::MAX / 2, false)?;
    let truncated = match packing {
        true => 0,
        false => whole
            .iter()
            .filter(|e| e.input_ids.len() > cutoff_len)
            .count(),
    };
    let examples = data::pretraining_examples(tokenizer, &loaded.documents, cutoff_len, packing)?;
    let origin = |i: usize| match packing {
        true => format!("block {}", i + 1),
        false => loaded.documents[i].origin.to_string(),
    };
    Ok(Read {
        examples: examples
            .into_iter()
            .enumerate()
            .map(|(i, e)| (origin(i), e))
            .collect(),
        rows: loaded.files.iter().map(|f| f.rows).sum(),
        used: loaded.documents.len(),
        skipped: loaded.skipped,
        truncated,
    })
}

/// The example's tokens decoded in runs of equal labelling, special tokens kept.
fn sample(tokenizer: &Tokenizer, origin: &str, example: &Example) -> Result<Sample> {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut start = 0;
    let trained = |i: usize| example.labels[i] != IGNORE_INDEX;
    for end in 1..=example.input_ids.len() {
        if end == example.input_ids.len() || trained(end) != trained(start) {
            pieces.push(Piece {
                text: tokenizer.decode(&example.input_ids[start..end], false)?,
                trained: trained(start),
            });
            start = end;
        }
    }
    Ok(Sample {
        origin: origin.to_string(),
        pieces,
    })
}

impl Preview {
    /// The report as text: a block per dataset, then the samples with `marks` on trained tokens.
    pub fn render(&self, marks: Marks) -> String {
        let mut out = self.stats_text();
        let legend = match marks {
            Marks::Colour => "trained tokens in green",
            Marks::Brackets => "trained tokens in [[ ]]",
        };
        for (i, s) in self.samples.iter().enumerate() {
            let _ = writeln!(out, "\nrow {} ({}; {legend}):", i + 1, s.origin);
            for piece in &s.pieces {
                out += &match (piece.trained, marks) {
                    (false, _) => piece.text.clone(),
                    (true, Marks::Colour) => format!("\x1b[32m{}\x1b[0m", piece.text),
                    (true, Marks::Brackets) => format!("[[{}]]", piece.text),
                };
            }
            out.push('\n');
        }
        out
    }

    /// The report's text before the samples: the template note and a block per dataset.
    pub fn stats_text(&self) -> String {
        let mut out = String::new();
        if let Some(note) = &self.template_note {
            let _ = writeln!(out, "note: {note}");
        }
        for d in &self.datasets {
            render_dataset(&mut out, d, self.cutoff_len, self.packing);
        }
        if !self.skips_invalid_rows && self.datasets.iter().any(|d| !d.skipped.is_empty()) {
            out += "note: skip_invalid_rows is false, so training stops at the first skipped row\n";
        }
        out
    }
}

fn render_dataset(out: &mut String, d: &DatasetStats, cutoff_len: usize, packing: bool) {
    let examples = d.lengths.len();
    let tokens = d.tokens();
    let _ = writeln!(out, "{} ({}):", d.name, d.key);
    let _ = writeln!(out, "  rows          {} read, {}", d.rows, d.skipped);
    if examples == 0 {
        return;
    }
    let (min, median, max) = (
        d.lengths[0],
        d.lengths[examples / 2],
        d.lengths[examples - 1],
    );
    let _ = writeln!(
        out,
        "  tokens        {tokens} in {examples} examples: min {min}, median {median}, max {max}"
    );
    let _ = writeln!(
        out,
        "  cutoff_len    {cutoff_len}: {} rows cut ({:.1}%)",
        d.truncated,
        percent(d.truncated, d.used)
    );
    let _ = writeln!(
        out,
        "  labelled      {} tokens ({:.1}%) carry the loss",
        d.labelled,
        percent(d.labelled, tokens)
    );
    if let Some(packed) = d.packed_rows {
        let _ = writeln!(
            out,
            "  packing       {}: {packed} rows of {cutoff_len} tokens, {:.1}% full",
            if packing { "on" } else { "off (if on)" },
            percent(tokens, packed * cutoff_len)
        );
    }
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}
