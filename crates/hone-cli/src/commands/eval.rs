//! `hone eval ...`: metrics over held-out data.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Subcommand;
use hone::eval::metrics::{self, Lang, ScoreOptions, Scores};
use hone::eval::{generate, perplexity};

use super::{chat_template, DatasetDirArg, ModelArgs, SamplingArgs};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Perplexity over a JSONL file of {"text": ...} rows or a plain text file (one document per line).
    Perplexity(PerplexityArgs),
    /// BLEU, ROUGE-1/2/L, LLaMA-Factory's BLEU-4, exact match and F1 of predictions against
    /// references (0-100, as sacrebleu, rouge-score, LLaMA-Factory and SQuAD compute them).
    Score(ScoreArgs),
    /// Answer every row of an evaluation dataset greedily and score the answers against its
    /// references (the last assistant turn of each row).
    Generate(GenerateArgs),
}

/// The texts' language.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LangArg {
    /// sacrebleu's 13a tokenizer, Google's rouge-score.
    En,
    /// sacrebleu's zh tokenizer, LLaMA-Factory's ROUGE (jieba words, rouge-chinese).
    Zh,
}

/// How to score, shared by `score` and `generate`.
#[derive(clap::Args)]
pub struct ScoringArgs {
    #[command(flatten)]
    pub metrics: MetricArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl ScoringArgs {
    fn options(&self) -> ScoreOptions {
        self.metrics.options()
    }
}

/// The metrics' language options, shared by `eval` and `compare`.
#[derive(clap::Args)]
pub struct MetricArgs {
    #[arg(long, value_enum, default_value = "en")]
    pub lang: LangArg,
    /// rouge-score's Porter stemmer for English ROUGE.
    #[arg(long)]
    pub stemmer: bool,
}

impl MetricArgs {
    pub fn options(&self) -> ScoreOptions {
        ScoreOptions {
            lang: match self.lang {
                LangArg::En => Lang::En,
                LangArg::Zh => Lang::Zh,
            },
            stemmer: self.stemmer,
        }
    }
}

#[derive(clap::Args)]
pub struct ScoreArgs {
    /// Predictions: a text file with one per line (then --references is needed), or a JSON Lines
    /// file with `predict` and `label` fields (LLaMA-Factory's generated_predictions.jsonl).
    #[arg(long)]
    pub predictions: PathBuf,
    /// References, one per line, as many lines as the predictions.
    #[arg(long)]
    pub references: Option<PathBuf>,
    #[command(flatten)]
    pub scoring: ScoringArgs,
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Alpaca, ShareGPT or OpenAI-messages evaluation file (.json or .jsonl), or dataset names
    /// (comma-separated) from --dataset-dir's dataset_info.json.
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub dataset_dir: DatasetDirArg,
    /// Decoding: greedy unless --temperature is above 0 (each row's sampler starts from --seed, so
    /// answers do not depend on the batch size).
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Rows generated together (padded to the longest prompt of the batch).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Write LLaMA-Factory-style generated_predictions.jsonl rows (prompt, predict, label) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Jinja chat template file, for models that have none or to override theirs.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    #[command(flatten)]
    pub scoring: ScoringArgs,
}

#[derive(clap::Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub data: PathBuf,
    /// Documents are truncated to this many tokens.
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Perplexity(a) => run_perplexity(a),
        EvalCommand::Score(a) => run_score(a),
        EvalCommand::Generate(a) => run_generate(a),
    }
}

fn run_score(args: ScoreArgs) -> Result<()> {
    let pairs = metrics::read_pairs(&args.predictions, args.references.as_deref())?;
    let scores = metrics::score(&pairs, args.scoring.options())?;
    if args.scoring.json {
        println!("{}", serde_json::to_string_pretty(&scores)?);
    } else {
        print!("{}", table(&scores));
    }
    Ok(())
}

fn run_generate(args: GenerateArgs) -> Result<()> {
    let options = args.scoring.options();
    let config = args.sampling.config()?;
    let dataset = hone::data::load_dataset(
        &args.data.to_string_lossy(),
        &args.dataset_dir.dataset_dir,
        false,
    )?;
    let loaded = args.model.load()?;
    let template = chat_template(&loaded.tokenizer, args.chat_template.as_deref())?;
    let rows = dataset.conversations.len();
    // A live counter only on a terminal: in a log, `\r` updates would run together on one line.
    let live = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let start = Instant::now();
    let predictions = generate::predict(
        &loaded.model,
        &loaded.tokenizer,
        &template,
        &dataset.conversations,
        &config,
        args.batch_size as usize,
        |done| {
            if live {
                eprint!("\rgenerated {done}/{rows}");
            }
        },
    )?;
    let seconds = start.elapsed().as_secs_f64();
    let rows_per_second = rows as f64 / seconds;
    eprintln!(
        "\rgenerated {rows} rows in {seconds:.2}s ({rows_per_second:.3} rows/s, batches of {})",
        args.batch_size
    );
    if let Some(out) = &args.out {
        generate::write_predictions(out, &predictions)?;
    }
    let pairs: Vec<_> = predictions.iter().map(generate::Prediction::pair).collect();
    let scores = metrics::score(&pairs, options)?;
    let answers: Vec<&str> = predictions.iter().map(|p| p.predict.as_str()).collect();
    let diversity = metrics::diversity(&answers, options.lang);
    if args.scoring.json {
        let mut report = serde_json::to_value(&scores)?;
        report["rows_per_second"] = rows_per_second.into();
        report["distinct_1"] = diversity.distinct_1.into();
        report["distinct_2"] = diversity.distinct_2.into();
        report["repetition_4"] = diversity.repetition_4.into();
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", table(&scores));
        for ((name, _), value) in metrics::diversity::FIGURES.iter().zip(diversity.values()) {
            println!("{name:<20}{value:.4}");
        }
        println!("{:<20}{rows_per_second:.3}", "rows/s");
    }
    Ok(())
}

/// The scores as a two-column table.
fn table(scores: &Scores) -> String {
    let rows = [
        ("BLEU", scores.bleu),
        ("ROUGE-1", scores.rouge1),
        ("ROUGE-2", scores.rouge2),
        ("ROUGE-L", scores.rouge_l),
        ("BLEU-4 (sentence)", scores.bleu4_sentence_avg),
        ("exact match", scores.exact_match),
        ("F1", scores.f1),
    ];
    let mut out = format!("{:<20}{}\n", "rows", scores.n);
    for (name, value) in rows {
        out += &format!("{name:<20}{value:.4}\n");
    }
    out
}

fn run_perplexity(args: PerplexityArgs) -> Result<()> {
    let docs = perplexity::read_documents(&args.data)?;
    let loaded = args.model.load()?;
    let max_length = args
        .max_length
        .min(loaded.model.config().max_position_embeddings);
    let report = perplexity::perplexity(&loaded.model, &loaded.tokenizer, &docs, max_length)?;
    let texts = perplexity::text_perplexities(&loaded.model, &loaded.tokenizer, &docs, max_length)?;
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        json["mean_perplexity"] = texts.mean_perplexity.into();
        json["perplexities"] = texts.perplexities.into();
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!(
            "perplexity {:.4} (mean NLL {:.6} over {} predicted tokens in {} documents)",
            report.perplexity, report.mean_nll, report.n_tokens, report.n_documents
        );
        println!(
            "mean_perplexity {:.4} (per-text perplexities averaged, as Hugging Face evaluate \
             computes them)",
            texts.mean_perplexity
        );
    }
    Ok(())
}
