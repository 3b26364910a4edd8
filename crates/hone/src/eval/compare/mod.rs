//! A/B comparison of a base model and its adapters: every model answers the same prompts greedily,
//! and the answers, their scores against the references, perplexities and the runs' settings are
//! gathered in a [`Comparison`], which [`html`] and [`markdown`] render as a report and
//! [`summary`] as a plain-text table.
//!
//! Models are loaded one at a time (the base, then the base with each adapter merged in), so memory
//! holds one model whatever the number of adapters.

pub mod html;
pub mod markdown;
mod runs;
#[cfg(test)]
mod sample;
pub mod summary;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;

pub use runs::{model_labels, AdapterSettings};

use super::generate::{predict, split_reference};
use super::metrics::{self, diversity, Diversity, Pair, ScoreOptions, Scores};
use super::perplexity::{answer_perplexity, perplexity, read_documents, PerplexityReport};
use crate::chat::{ChatTemplate, Message};
use crate::data::{Conversation, RowOrigin};
use crate::generate::GenerateConfig;
use crate::model::{load_with_adapter, LoadedModel, Precision};
use crate::tokenizer::Tokenizer;

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct CompareSettings {
    /// The base model: HF directory, GGUF file or Hub id.
    pub base_model: String,
    /// PEFT LoRA adapter directories, each applied to the base model in turn.
    pub adapters: Vec<PathBuf>,
    /// Where the prompts came from, for the report.
    pub prompts_file: PathBuf,
    pub max_new_tokens: usize,
    /// Rows generated together.
    pub batch_size: usize,
    /// The chat template file used instead of the model's own, for the report.
    pub chat_template: Option<PathBuf>,
    pub score_options: ScoreOptions,
    /// Held-out text (`{"text"}` JSON Lines or a line a document) to measure perplexity on.
    pub perplexity_data: Option<PathBuf>,
    /// Sequences are cut to this many tokens for perplexity (and to the model's context).
    pub max_length: usize,
    /// How the weights are held (stored types, or f32 with `--exact`).
    pub precision: Precision,
}

/// Everything a comparison found, in the order the report shows it.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub settings: CompareSettings,
    /// The base model first, then one per adapter.
    pub models: Vec<ModelRun>,
    pub rows: Vec<RowReport>,
}

/// One model's run over all prompts.
#[derive(Debug, Clone)]
pub struct ModelRun {
    pub label: String,
    /// None for the base model.
    pub adapter: Option<AdapterSettings>,
    /// Corpus scores over the rows that have a reference (None when none has).
    pub scores: Option<Scores>,
    /// How varied the answers are (every row, with a reference or not).
    pub diversity: Diversity,
    /// Wall-clock seconds spent generating the answers.
    pub seconds: f64,
    pub rows_per_second: f64,
    /// Perplexity of the reference answers given the prompts (None without references).
    pub answer_perplexity: Option<PerplexityReport>,
    /// Perplexity of `--perplexity-data` (None when not asked for).
    pub data_perplexity: Option<PerplexityReport>,
}

/// One prompt, its reference and every model's answer.
#[derive(Debug, Clone)]
pub struct RowReport {
    /// Where the row is in the prompts file.
    pub origin: RowOrigin,
    /// The turns the models answer (the last is the user's).
    pub prompt: Vec<Message>,
    pub reference: Option<String>,
    /// One per model, in [`Comparison::models`] order.
    pub answers: Vec<Answer>,
}

/// One model's answer to one prompt.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    /// The answer scored against the row's reference alone (None without a reference).
    pub scores: Option<Scores>,
}

/// How far a comparison has got, for progress output.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Model `index` (1-based) of `of` is loading.
    Loading {
        index: usize,
        of: usize,
        label: &'a str,
    },
    /// `done` of `of` rows have their answer from the current model (after each batch).
    Generated { done: usize, of: usize },
    /// The current model's answers are generated, in `seconds`; perplexities are next.
    Answered { rows: usize, seconds: f64 },
}

/// Runs the comparison of `settings` on `prompts` (conversations ending with the user's turn or
/// with a reference answer, see [`crate::data::load_prompts`]). `template` gives the chat template
/// for a loaded model's tokenizer. Adapters and perplexity data are read before any model loads,
/// so bad input fails fast.
pub fn compare(
    settings: &CompareSettings,
    prompts: &[Conversation],
    template: impl Fn(&Tokenizer) -> Result<ChatTemplate>,
    mut on_progress: impl FnMut(Progress),
) -> Result<Comparison> {
    anyhow::ensure!(!prompts.is_empty(), "no prompts to compare the models on");
    let adapters = settings
        .adapters
        .iter()
        .map(|dir| AdapterSettings::read(dir))
        .collect::<Result<Vec<_>>>()?;
    let held_out = match &settings.perplexity_data {
        Some(path) => Some((path.as_path(), read_documents(path)?)),
        None => None,
    };
    let labels = model_labels(&settings.adapters);
    let of = labels.len();
    let adapters = std::iter::once(None).chain(adapters.into_iter().map(Some));
    let mut models = Vec::with_capacity(of);
    let mut answers = Vec::with_capacity(of);
    for (i, (label, adapter)) in labels.into_iter().zip(adapters).enumerate() {
        let index = i + 1;
        on_progress(Progress::Loading {
            index,
            of,
            label: &label,
        });
        let dir = adapter.as_ref().map(|a| a.dir.as_path());
        let loaded =
            load_with_adapter(&settings.base_model, dir, settings.precision, &Device::Cpu)?;
        let run = Run {
            template: template(&loaded.tokenizer)?,
            loaded,
            settings,
        };
        let (texts, seconds) = run.answer(prompts, &mut on_progress)?;
        on_progress(Progress::Answered {
            rows: prompts.len(),
            seconds,
        });
        models.push(ModelRun {
            label,
            adapter,
            scores: corpus_scores(prompts, &texts, settings.score_options)?,
            diversity: diversity(
                &texts.iter().map(String::as_str).collect::<Vec<_>>(),
                settings.score_options.lang,
            ),
            seconds,
            rows_per_second: prompts.len() as f64 / seconds,
            answer_perplexity: run.answer_perplexity(prompts)?,
            data_perplexity: match &held_out {
                Some((path, documents)) => Some(run.data_perplexity(path, documents)?),
                None => None,
            },
        });
        answers.push(texts);
    }
    Ok(Comparison {
        settings: settings.clone(),
        models,
        rows: rows(prompts, &answers, settings.score_options)?,
    })
}

/// One loaded model and what it needs to answer and be measured; dropped before the next loads.
struct Run<'a> {
    loaded: LoadedModel,
    template: ChatTemplate,
    settings: &'a CompareSettings,
}

impl Run<'_> {
    /// Greedy answers to every prompt, and the seconds they took.
    fn answer(
        &self,
        prompts: &[Conversation],
        on_progress: &mut impl FnMut(Progress),
    ) -> Result<(Vec<String>, f64)> {
        let config = GenerateConfig {
            max_new_tokens: self.settings.max_new_tokens,
            ..GenerateConfig::default()
        };
        let of = prompts.len();
        let start = Instant::now();
        let predictions = predict(
            &self.loaded.model,
            &self.loaded.tokenizer,
            &self.template,
            prompts,
            &config,
            self.settings.batch_size,
            |done| on_progress(Progress::Generated { done, of }),
        )?;
        let seconds = start.elapsed().as_secs_f64();
        Ok((
            predictions.into_iter().map(|p| p.predict).collect(),
            seconds,
        ))
    }

    fn answer_perplexity(&self, prompts: &[Conversation]) -> Result<Option<PerplexityReport>> {
        if !prompts.iter().any(|p| split_reference(p).1.is_some()) {
            return Ok(None);
        }
        let (model, tokenizer) = (&self.loaded.model, &self.loaded.tokenizer);
        answer_perplexity(model, tokenizer, &self.template, prompts, self.max_length())
            .context("perplexity of the reference answers")
            .map(Some)
    }

    fn data_perplexity(&self, path: &Path, documents: &[String]) -> Result<PerplexityReport> {
        let (model, tokenizer) = (&self.loaded.model, &self.loaded.tokenizer);
        perplexity(model, tokenizer, documents, self.max_length())
            .with_context(|| format!("{}: perplexity", path.display()))
    }

    fn max_length(&self) -> usize {
        let context = self.loaded.model.config().max_position_embeddings;
        self.settings.max_length.min(context)
    }
}

/// A model's corpus scores over the rows that have a reference, None when none has.
fn corpus_scores(
    prompts: &[Conversation],
    answers: &[String],
    options: ScoreOptions,
) -> Result<Option<Scores>> {
    let pairs: Vec<Pair> = prompts
        .iter()
        .zip(answers)
        .filter_map(|(prompt, answer)| {
            let reference = split_reference(prompt).1?;
            Some(pair(answer, reference))
        })
        .collect();
    if pairs.is_empty() {
        return Ok(None);
    }
    metrics::score(&pairs, options).map(Some)
}

/// The report's rows: each prompt with every model's answer (`answers[model][row]`), scored on its
/// own against the row's reference.
fn rows(
    prompts: &[Conversation],
    answers: &[Vec<String>],
    options: ScoreOptions,
) -> Result<Vec<RowReport>> {
    prompts
        .iter()
        .enumerate()
        .map(|(row, conversation)| {
            let (prompt, reference) = split_reference(conversation);
            let answers = answers
                .iter()
                .map(|model_answers| {
                    let text = model_answers[row].clone();
                    let scores = match reference {
                        Some(reference) => {
                            Some(metrics::score(&[pair(&text, reference)], options)?)
                        }
                        None => None,
                    };
                    Ok(Answer { text, scores })
                })
                .collect::<Result<_>>()?;
            Ok(RowReport {
                origin: conversation.origin.clone(),
                prompt: prompt.to_vec(),
                reference: reference.map(str::to_owned),
                answers,
            })
        })
        .collect()
}

fn pair(prediction: &str, reference: &str) -> Pair {
    Pair {
        prediction: prediction.to_owned(),
        reference: reference.to_owned(),
    }
}

/// The Markdown report's path beside the HTML one: the same stem, `.md`.
pub fn markdown_path(html: &Path) -> Result<PathBuf> {
    let md = html.with_extension("md");
    if md == html || html.file_name().is_none() {
        anyhow::bail!("{}: expected an .html file path", html.display());
    }
    Ok(md)
}

/// Checks that the reports can be written at `html` and beside it: its directory exists, and
/// neither report does unless `force` (run first, so a long comparison is not lost at the end).
pub fn check_outputs(html: &Path, force: bool) -> Result<()> {
    let md = markdown_path(html)?;
    let dir = html.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir.filter(|d| !d.is_dir()) {
        anyhow::bail!("{}: no such directory", dir.display());
    }
    crate::io::atomic::refuse_existing(html, force)?;
    crate::io::atomic::refuse_existing(&md, force)
}

/// Writes the HTML report at `html` and the Markdown one beside it, each to a temporary file
/// renamed into place; refuses existing reports unless `force`. Returns the Markdown path.
pub fn write_reports(comparison: &Comparison, html: &Path, force: bool) -> Result<PathBuf> {
    check_outputs(html, force)?;
    let md = markdown_path(html)?;
    let write = |path: &Path, text: String| {
        crate::io::atomic::write_file(path, |out| {
            Ok(std::io::Write::write_all(out, text.as_bytes())?)
        })
        .with_context(|| format!("{}: cannot write", path.display()))
    };
    write(&md, markdown::render(comparison))?;
    write(html, html::render(comparison))?;
    Ok(md)
}
