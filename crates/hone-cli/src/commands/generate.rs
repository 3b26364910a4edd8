//! `hone generate`: one completion, streamed to stdout (and nothing else on stdout).

use std::io::Write;
use std::time::Instant;

use anyhow::Result;
use hone::chat::Message;

use super::{ModelArgs, SamplingArgs, TemplateArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the chat template as one user turn (with the generation prompt).
    #[arg(long)]
    pub chat: bool,
    /// System message; implies --chat.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub template: TemplateArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Report token counts, load time and prompt and decoding speed on stderr.
    #[arg(long, short, alias = "timings")]
    pub verbose: bool,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = args.sampling.config()?;
    let load_start = Instant::now();
    let loaded = args.model.load()?;
    let load_seconds = load_start.elapsed().as_secs_f64();
    let tok = &loaded.tokenizer;
    let prompt_ids = if args.chat || args.system.is_some() {
        let template = args.template.load(tok)?;
        let mut messages = vec![];
        if let Some(s) = &args.system {
            messages.push(Message::new("system", s));
        }
        messages.push(Message::new("user", &args.prompt));
        let text = template.render(&messages, true)?;
        tok.encode(&text, false)?
    } else {
        tok.encode(&args.prompt, true)?
    };
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    let gen = hone::generate::generate(&loaded.model, tok, &prompt_ids, &cfg, |piece| {
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    })?;
    writeln!(out)?;
    if args.verbose {
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "{} prompt tokens, {} new tokens in {secs:.2}s ({:.1} tokens/s), finish: {:?}",
            gen.prompt_tokens,
            gen.ids.len(),
            gen.ids.len() as f64 / secs,
            gen.finish_reason
        );
        let steps = gen.ids.len().saturating_sub(1);
        eprintln!(
            "timings: load {load_seconds:.3} s; prompt {} tokens in {:.3} s ({:.1} tok/s); \
             {steps} decode steps in {:.3} s ({:.1} tok/s)",
            gen.prompt_tokens,
            gen.prompt_seconds,
            gen.prompt_tokens as f64 / gen.prompt_seconds,
            gen.decode_seconds,
            steps as f64 / gen.decode_seconds,
        );
    }
    Ok(())
}
