//! `hone`: the command line. A thin layer over the `hone` library: parse arguments, call, print.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static ALLOCATOR: hone::alloc::MiMalloc = hone::alloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hone",
    version = concat!(env!("CARGO_PKG_VERSION"), env!("HONE_GIT_SUFFIX")),
    about = "Fine-tune, evaluate and export Llama-family language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a model: architecture, sizes, tokenizer, chat template.
    Info(commands::info::Args),
    /// Generate a completion for one prompt, streamed to stdout.
    Generate(commands::generate::Args),
    /// Chat with a model interactively (/reset clears the history, /exit quits).
    Chat(commands::chat::Args),
    /// Fine-tune a model from a LLaMA-Factory-style YAML config.
    Train(commands::train::Args),
    /// Predict the peak memory of a `hone train` run from its config, before loading anything.
    Plan(commands::plan::Args),
    /// Find a learning rate: a range test of a config's run (fastai's lr_find), with a plot.
    LrFind(commands::lr_find::Args),
    /// Search a run's PEFT configuration (AutoPEFT): trials drawn from a search space, successive
    /// halving on the eval loss, a ranked table and a report of the best.
    Sweep(commands::sweep::Args),
    /// Show what a `hone train` run of a config will train on: per dataset the rows, tokens,
    /// truncation, labelled share and packing, then the first rows with the trained tokens marked.
    Data(commands::data::Args),
    /// Compare a base model with its adapters on the same prompts: an HTML and a Markdown report
    /// of their answers side by side, scores, perplexities and settings.
    Compare(commands::compare::Args),
    /// Evaluate a model.
    #[command(subcommand)]
    Eval(commands::eval::EvalCommand),
    /// Merge a LoRA adapter into its base model and write a Hugging Face checkpoint directory.
    Merge(commands::merge::Args),
    /// Write a model as GGUF (quantized, with an adapter merged in), or a LoRA adapter alone.
    Export(commands::export::Args),
    /// Serve a model and its LoRA adapters over OpenAI's HTTP API (chat, completions, streaming).
    Serve(commands::serve::Args),
    /// A local web page to watch and compare training runs: live curves, alerts, config diffs.
    Board(commands::board::Args),
    /// Print a shell completion script: `hone completions bash > ~/.local/share/bash-completion/completions/hone`.
    Completions(commands::completions::Args),
}

fn main() -> ExitCode {
    hone::alloc::configure();
    report_file_size_limit();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // The server runs its decoding thread in the kernels' pool itself; the command's own thread
    // only waits on the network.
    let result = match cli.command {
        Command::Serve(a) => commands::serve::run(a),
        Command::Board(a) => commands::board::run(a),
        command => hone::kernels::pool::run_in_pool(|| run(command)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain, outermost first.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A write past the file-size limit (`ulimit -f`, RLIMIT_FSIZE) fails with "File too large",
/// which Hone reports naming the file, leaving the previous checkpoint or output as it was;
/// by default the kernel's SIGXFSZ would kill the process in the middle of the save instead.
fn report_file_size_limit() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to "ignore" runs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Help and the version print as clap writes them; a mistake on the command line is one line,
/// as Hone's other errors are: clap's message with its details and the usage joined, exit 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let parts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .map(|l| match l.strip_prefix("Usage: ") {
            Some(usage) => format!("(usage: {usage})"),
            None => l.to_string(),
        })
        .collect();
    eprintln!("{}", parts.join(" "));
    ExitCode::from(2)
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Info(a) => commands::info::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Chat(a) => commands::chat::run(a),
        Command::Train(a) => commands::train::run(a),
        Command::Plan(a) => commands::plan::run(a),
        Command::LrFind(a) => commands::lr_find::run(a),
        Command::Sweep(a) => commands::sweep::run(a),
        Command::Data(a) => commands::data::run(a),
        Command::Compare(a) => commands::compare::run(a),
        Command::Eval(c) => commands::eval::run(c),
        Command::Merge(a) => commands::merge::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Board(a) => commands::board::run(a),
        Command::Completions(a) => commands::completions::run::<Cli>(a),
    }
}
