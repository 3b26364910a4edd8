//! `hone chat`: an interactive conversation with history; /reset clears it, /exit quits.

use std::io::{BufRead, Write};

use anyhow::Result;
use hone::chat::Message;

use super::{ModelArgs, SamplingArgs, TemplateArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System message at the start of every conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub template: TemplateArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = args.sampling.config()?;
    let loaded = args.model.load()?;
    let tok = &loaded.tokenizer;
    let template = args.template.load(tok)?;
    let fresh = || -> Vec<Message> {
        args.system
            .iter()
            .map(|s| Message::new("system", s))
            .collect()
    };
    let mut history = fresh();
    eprintln!(
        "Chatting with {} — /reset clears the history, /exit quits.",
        loaded.source.path().display()
    );
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = fresh();
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        let ids = tok.encode(&template.render(&history, true)?, false)?;
        let gen = hone::generate::generate(&loaded.model, tok, &ids, &cfg, |piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        })?;
        writeln!(out)?;
        history.push(Message::new("assistant", gen.text.trim()));
    }
    Ok(())
}
