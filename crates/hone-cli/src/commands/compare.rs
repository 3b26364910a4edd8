//! `hone compare`: the base model and each adapter answer the same prompts; the answers, scores,
//! perplexities and settings go to an HTML report with a Markdown one beside it.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use hone::eval::compare::{self, summary, CompareSettings, Progress};

use super::eval::MetricArgs;
use super::{chat_template, DatasetDirArg, PrecisionArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Base model: HF model directory, .gguf file, or Hub id (org/name).
    #[arg(long)]
    pub model: String,
    /// PEFT LoRA adapter directory to compare with the base model (repeatable).
    #[arg(long = "adapter", required = true)]
    pub adapters: Vec<PathBuf>,
    /// Prompts: a .txt file (one a line), or an Alpaca, ShareGPT or OpenAI-messages file (.json or
    /// .jsonl) or dataset names from --dataset-dir's dataset_info.json, whose rows' answers, when
    /// present, are the references.
    #[arg(long)]
    pub prompts: PathBuf,
    #[command(flatten)]
    pub dataset_dir: DatasetDirArg,
    /// The HTML report; the Markdown one is written beside it (same name, .md).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace existing reports.
    #[arg(long)]
    pub force: bool,
    /// Only the first N prompts.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Rows generated together (padded to the longest prompt of the batch).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Jinja chat template file, for models that have none or to override theirs.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// Held-out text to measure each model's perplexity on: JSONL {"text": ...} rows or plain
    /// text (one document per line).
    #[arg(long)]
    pub perplexity_data: Option<PathBuf>,
    /// Sequences are cut to this many tokens for perplexity.
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    #[command(flatten)]
    pub metrics: MetricArgs,
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

pub fn run(args: Args) -> Result<()> {
    compare::check_outputs(&args.out, args.force)?;
    let mut prompts = hone::data::load_prompts(&args.prompts, &args.dataset_dir.dataset_dir)?;
    if let Some(limit) = args.limit {
        prompts.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    let settings = CompareSettings {
        base_model: args.model,
        adapters: args.adapters,
        prompts_file: args.prompts,
        max_new_tokens: args.max_new_tokens,
        batch_size: args.batch_size as usize,
        chat_template: args.chat_template,
        score_options: args.metrics.options(),
        perplexity_data: args.perplexity_data,
        max_length: args.max_length,
        precision: args.precision.precision(),
    };
    let template = |tokenizer: &_| chat_template(tokenizer, settings.chat_template.as_deref());
    let comparison = compare::compare(&settings, &prompts, template, report_progress)?;
    let md = compare::write_reports(&comparison, &args.out, args.force)?;
    eprintln!("wrote {} and {}", args.out.display(), md.display());
    print!("{}", summary::text_table(&comparison));
    Ok(())
}

/// Progress on stderr; the live row counter only on a terminal, where `\r` rewrites the line.
fn report_progress(progress: Progress) {
    match progress {
        Progress::Loading { index, of, label } => eprintln!("[{index}/{of}] loading {label}"),
        Progress::Generated { done, of } => {
            if std::io::stderr().is_terminal() {
                eprint!("\ranswered {done}/{of}");
            }
        }
        Progress::Answered { rows, seconds } => eprintln!(
            "\ranswered {rows} rows in {seconds:.2}s ({:.3} rows/s)",
            rows as f64 / seconds
        ),
    }
}
