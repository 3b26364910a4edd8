//! The training and validation rows of a run: the datasets read (`dataset`, and `eval_dataset`
//! or a `val_size` split), then encoded for the stage — conversations through the chat template
//! for `sft`, raw text into blocks for `pt`, each response of a preference pair after its prompt
//! for `dpo`, each tagged response and a mismatched one for `kto` — and packed when `packing` is
//! on.

use std::path::Path;

use anyhow::{bail, Result};

use super::setup;
use crate::data::record::{self, FileUse};
use crate::data::{self, EncodeOptions, Row, SkipSummary};
use crate::tokenizer::Tokenizer;
use crate::train::config::{CommaList, SftConfig, Stage};

/// Training and validation rows, and what was skipped.
pub struct Rows {
    pub train: Vec<Row>,
    pub val: Vec<Row>,
    pub skipped: SkipSummary,
    /// Training items before encoding: conversations (sft), documents (pt) or pairs (dpo, rm).
    pub train_examples: usize,
    /// The files read, for the run's `dataset_record.json`.
    pub files: Vec<FileUse>,
    /// Lines worth showing once: what `template:` resolved to (see `setup::chat_template`), what
    /// each dataset gave to a mix.
    pub notes: Vec<String>,
    /// Items of two rows: for `stage: dpo` and `rm` rows `2k` and `2k + 1` are pair k's chosen and
    /// rejected; for `stage: kto` item k's response and its mismatched (KL) response.
    pub paired: bool,
    /// `stage: kto`: whether each training (validation) item's response is desirable.
    pub desirable: Vec<bool>,
    pub val_desirable: Vec<bool>,
}

/// A dataset's items (conversations or documents) as read, before the split.
struct Loaded<T> {
    items: Vec<T>,
    skipped: SkipSummary,
    files: Vec<FileUse>,
}

/// Loads the run's datasets and encodes them as its stage trains on them (raw text needs no chat
/// template, so a base model without one can be pre-trained further).
pub fn load_rows(config: &SftConfig, tokenizer: &Tokenizer) -> Result<Rows> {
    let d = &config.data;
    let dir = Path::new(&d.dataset_dir);
    let cutoff_len = d.cutoff_len as usize;
    match config.method.stage {
        Stage::Sft => {
            let (template, template_note) = setup::chat_template(config, tokenizer)?;
            let options = EncodeOptions {
                cutoff_len,
                train_on_prompt: d.train_on_prompt,
            };
            // Each conversation is encoded as its row is read: the dataset is never held as text.
            let load = |name: &str| {
                let mut rows = Vec::new();
                let (skipped, files) =
                    data::for_each_conversation(name, dir, d.skip_invalid_rows, |conversation| {
                        let example = data::encode(tokenizer, &template, &conversation, &options)?;
                        rows.push(Row::from(example));
                        Ok(())
                    })?;
                Ok(Loaded {
                    items: rows,
                    skipped,
                    files,
                })
            };
            let rows = build_rows(config, load, Ok, config.packs())?;
            Ok(Rows {
                notes: template_note.into_iter().chain(rows.notes).collect(),
                ..rows
            })
        }
        Stage::Pt => {
            let load = |name: &str| {
                let loaded = data::load_documents(name, dir, d.skip_invalid_rows)?;
                Ok(Loaded {
                    items: loaded.documents,
                    skipped: loaded.skipped,
                    files: loaded.files,
                })
            };
            let packing = config.packs();
            let encode = |documents: Vec<data::Document>| {
                let examples =
                    data::pretraining_examples(tokenizer, &documents, cutoff_len, packing)?;
                Ok(examples.into_iter().map(Row::from).collect())
            };
            // Packed blocks are full rows already.
            build_rows(config, load, encode, false)
        }
        Stage::Dpo | Stage::Rm => {
            let (template, template_note) = setup::chat_template(config, tokenizer)?;
            let load = |name: &str| {
                let loaded = data::load_pairs(name, dir, d.skip_invalid_rows)?;
                Ok(Loaded {
                    items: loaded.pairs,
                    skipped: loaded.skipped,
                    files: loaded.files,
                })
            };
            let encode = |pairs: Vec<data::PreferencePair>| {
                let mut rows = Vec::with_capacity(2 * pairs.len());
                for pair in &pairs {
                    let (chosen, rejected) =
                        data::encode_pair(tokenizer, &template, pair, cutoff_len)?;
                    rows.extend([Row::from(chosen), Row::from(rejected)]);
                }
                Ok(rows)
            };
            let rows = build_rows(config, load, encode, false)?;
            Ok(Rows {
                notes: template_note.into_iter().chain(rows.notes).collect(),
                paired: true,
                ..rows
            })
        }
        Stage::Kto => {
            let (template, template_note) = setup::chat_template(config, tokenizer)?;
            let load = |name: &str| {
                let loaded = data::load_feedback(name, dir, d.skip_invalid_rows)?;
                Ok(Loaded {
                    items: loaded.rows,
                    skipped: loaded.skipped,
                    files: loaded.files,
                })
            };
            let split = split_datasets(config, load)?;
            let tags = |rows: &[data::FeedbackRow]| rows.iter().map(|r| r.desirable).collect();
            let (desirable, val_desirable) = (tags(&split.train), tags(&split.val));
            let encode = |rows: &[data::FeedbackRow]| -> Result<Vec<Row>> {
                let examples = data::encode_feedback(tokenizer, &template, rows, cutoff_len)?;
                Ok(examples.into_iter().map(Row::from).collect())
            };
            Ok(Rows {
                train: encode(&split.train)?,
                val: encode(&split.val)?,
                skipped: split.skipped,
                train_examples: split.train.len(),
                files: split.files,
                notes: template_note.into_iter().chain(split.notes).collect(),
                paired: true,
                desirable,
                val_desirable,
            })
        }
    }
}

/// Each dataset of `names` read with `load` and cut to `max_samples` (per dataset, as
/// LLaMA-Factory), then mixed by `mix_strategy`; with more than one dataset, a note of what each
/// gave.
fn load_mixed<T: Clone>(
    config: &SftConfig,
    names: &CommaList,
    load: &impl Fn(&str) -> Result<Loaded<T>>,
) -> Result<(Loaded<T>, Option<String>)> {
    let d = &config.data;
    let mut parts = Vec::new();
    let mut all = Loaded {
        items: Vec::new(),
        skipped: SkipSummary::default(),
        files: Vec::new(),
    };
    let mut available = Vec::new();
    for name in names.items() {
        let mut loaded = load(name)?;
        available.push(loaded.items.len());
        if let Some(max) = d.max_samples {
            loaded.items.truncate(max as usize);
        }
        all.skipped.merge(loaded.skipped);
        parts.push((name, loaded.items, loaded.files));
    }
    let lengths: Vec<usize> = parts.iter().map(|(_, items, _)| items.len()).collect();
    let probs = config.interleave_probs()?;
    let mixed = data::mix(
        parts
            .iter_mut()
            .map(|(_, items, _)| std::mem::take(items))
            .collect(),
        d.mix_strategy,
        probs.as_deref(),
        config.train.seed,
    )?;
    let mut contributions = Vec::new();
    for (((name, _, mut files), &taken), (&len, &rows)) in parts
        .into_iter()
        .zip(&mixed.taken)
        .zip(lengths.iter().zip(&available))
    {
        record::keep_first(&mut files, taken.min(len));
        all.files.extend(files);
        contributions.push(format!("{name} {taken} of {rows}"));
    }
    all.items = mixed.items;
    let note = (lengths.len() > 1).then(|| {
        format!(
            "datasets mixed ({}): {} rows taken ({})",
            d.mix_strategy,
            all.items.len(),
            contributions.join(", ")
        )
    });
    Ok((all, note))
}

/// A run's items split into training and validation, with what reading them left.
struct Split<T> {
    train: Vec<T>,
    val: Vec<T>,
    skipped: SkipSummary,
    files: Vec<FileUse>,
    notes: Vec<String>,
}

/// Reads `dataset` and `eval_dataset` with `load`, each mixed (see [`load_mixed`]), or holds out
/// a `val_size` split of `dataset` (seeded by `seed`).
fn split_datasets<T: Clone>(
    config: &SftConfig,
    load: impl Fn(&str) -> Result<Loaded<T>>,
) -> Result<Split<T>> {
    let d = &config.data;
    let Some(dataset) = &d.dataset else {
        bail!("dataset: no training data given (a name in dataset_dir/dataset_info.json or a file path)");
    };
    let (loaded, mix_note) = load_mixed(config, dataset, &load)?;
    let mut skipped = loaded.skipped;
    let mut files = loaded.files;
    let mut notes: Vec<String> = mix_note.into_iter().collect();
    let (train, val) = match &d.eval_dataset {
        Some(eval) => {
            // As LLaMA-Factory: max_samples and the mix strategy apply to eval_dataset too.
            let (eval, eval_note) = load_mixed(config, eval, &load)?;
            notes.extend(eval_note.map(|n| format!("eval_dataset: {n}")));
            skipped.merge(eval.skipped);
            files.extend(eval.files.into_iter().map(|f| FileUse {
                role: "eval_dataset",
                ..f
            }));
            (loaded.items, eval.items)
        }
        None => {
            let held_out = config.val_rows(loaded.items.len())?;
            data::split(loaded.items, held_out as f64, config.train.seed)?
        }
    };
    Ok(Split {
        train,
        val,
        skipped,
        files,
        notes,
    })
}

/// Splits the datasets (see [`split_datasets`]), encodes each side with `encode` and, with
/// `pack`, packs the rows into `cutoff_len` rows.
fn build_rows<T: Clone>(
    config: &SftConfig,
    load: impl Fn(&str) -> Result<Loaded<T>>,
    encode: impl Fn(Vec<T>) -> Result<Vec<Row>>,
    pack: bool,
) -> Result<Rows> {
    let split = split_datasets(config, load)?;
    let train_examples = split.train.len();
    let (train, val) = (encode(split.train)?, encode(split.val)?);
    let rows = |rows: Vec<Row>| -> Vec<Row> {
        match pack {
            true => data::pack(rows, config.data.cutoff_len as usize),
            false => rows,
        }
    };
    Ok(Rows {
        train: rows(train),
        val: rows(val),
        skipped: split.skipped,
        train_examples,
        files: split.files,
        notes: split.notes,
        paired: false,
        desirable: Vec::new(),
        val_desirable: Vec::new(),
    })
}

/// The conversations an SFT run evaluates on (`eval_dataset`, or its `val_size` split), as
/// conversations to answer: what `do_predict` generates for.
pub fn evaluation_conversations(config: &SftConfig) -> Result<Vec<data::Conversation>> {
    Ok(split_datasets(config, |name| conversations(config, name))?.val)
}

/// The conversations of the datasets `name` names.
fn conversations(config: &SftConfig, name: &str) -> Result<Loaded<data::Conversation>> {
    let d = &config.data;
    let loaded = data::load_dataset(name, Path::new(&d.dataset_dir), d.skip_invalid_rows)?;
    Ok(Loaded {
        items: loaded.conversations,
        skipped: loaded.skipped,
        files: loaded.files,
    })
}
