//! `hone board`: the local web page over the runs under `--runs` (the `hone::serve::board`
//! library module does the work).

use std::path::PathBuf;

use anyhow::Result;
use hone::serve::board::{board, BoardOptions};

#[derive(clap::Args)]
pub struct Args {
    /// A folder of runs (`hone train` output directories, searched a few levels deep).
    /// Repeatable; default: the current directory.
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
}

pub fn run(args: Args) -> Result<()> {
    let roots = match args.runs.is_empty() {
        true => vec![PathBuf::from(".")],
        false => args.runs,
    };
    let folders: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
    let options = BoardOptions {
        roots,
        host: args.host,
        port: args.port,
        token: args.token,
    };
    let with_token = options.token.is_some();
    board(options, |addr| {
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
