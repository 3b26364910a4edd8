//! `hone eval ...`: metrics over held-out data.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;
use hone::eval::perplexity;

use super::ModelArgs;

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Perplexity over a JSONL file of {"text": ...} rows or a plain text file (one document per line).
    Perplexity(PerplexityArgs),
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
    }
}

fn run_perplexity(args: PerplexityArgs) -> Result<()> {
    let docs = perplexity::read_documents(&args.data)?;
    let loaded = args.model.load()?;
    let max_length = args
        .max_length
        .min(loaded.model.config().max_position_embeddings);
    let report = perplexity::perplexity(&loaded.model, &loaded.tokenizer, &docs, max_length)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "perplexity {:.4} (mean NLL {:.6} over {} predicted tokens in {} documents)",
            report.perplexity, report.mean_nll, report.n_tokens, report.n_documents
        );
    }
    Ok(())
}
