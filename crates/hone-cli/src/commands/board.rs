//! `hone board`: the local web page over the runs under `--runs` (the `hone::serve::board`
//! library module does the work). With `--model`, the board also serves that model and the
//! runs' adapters over OpenAI's API, for the arena.

use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use hone::serve::board::{board, BoardOptions};
use hone::serve::{Limits, ServeOptions, Served, Server};

use super::{chat_template, PrecisionArgs};

#[derive(clap::Args)]
pub struct Args {
    /// A folder of runs (`hone train` output directories, searched a few levels deep).
    /// Repeatable; default: the current directory. Runs started from the board, and the arena's
    /// ratings, go into the first.
    #[arg(long = "runs", value_name = "DIR")]
    pub runs: Vec<PathBuf>,
    /// Address to listen on; anything but loopback needs --token.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// Require this token on every request (open the page once as /?token=TOKEN).
    #[arg(long, env = "HONE_BOARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The base model the arena asks, with the runs' adapters over it: HF model directory,
    /// .gguf file, or Hub id (org/name). Without it the arena is off.
    #[arg(long)]
    pub model: Option<String>,
    /// Jinja chat template file, for a model that has none or to override its own.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// Answers decoded together in the arena.
    #[arg(long, default_value_t = 4)]
    pub max_concurrency: usize,
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

pub fn run(args: Args) -> Result<()> {
    let roots = match args.runs.is_empty() {
        true => vec![PathBuf::from(".")],
        false => args.runs.clone(),
    };
    let folders: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    let options = BoardOptions {
        roots,
        host: args.host.clone(),
        port: args.port,
        token: args.token.clone(),
    };
    // Refuse an unsafe address or a missing folder before spending time on loading.
    options.check()?;
    let server = args
        .model
        .as_deref()
        .map(|m| arena_server(&args, m))
        .transpose()?;
    let with_token = options.token.is_some();
    board(options, server, |addr| {
        let open = match with_token {
            true => format!("http://{addr}/?token=…"),
            false => format!("http://{addr}/"),
        };
        eprintln!(
            "hone board: listening on {open} (runs under {})",
            folders.join(", ")
        );
    })
}

/// The arena's model, served as `hone serve` serves it (adapters are added when asked for).
fn arena_server(args: &Args, model: &str) -> Result<Server> {
    let loaded = hone::model::load(model, args.precision.precision(), &Device::Cpu)?;
    let template = chat_template(&loaded.tokenizer, args.chat_template.as_deref())
        .map_err(|e| format!("{e:#}"));
    if let Err(why) = &template {
        eprintln!("note: the arena is off: {why}");
    }
    let options = ServeOptions {
        host: args.host.clone(),
        port: args.port,
        served_name: model.to_string(),
        limits: Limits {
            max_batch: args.max_concurrency.max(1),
            ..Limits::default()
        },
    };
    let served = Served {
        model: loaded.model,
        tokenizer: loaded.tokenizer,
        template,
        adapters: Vec::new(),
        value_head: None,
    };
    Server::start(&options, served)
}
