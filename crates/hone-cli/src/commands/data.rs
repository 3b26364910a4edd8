//! `hone data CONFIG.yaml [key=value ...] [--rows N]`: what `hone train` of the config will train
//! on — per dataset the rows, skips, token counts, truncation, labelled share and packing — and
//! the first rows as the model sees them, before any weight is loaded.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use hone::train::config::SftConfig;
use hone::train::sft::preview::{preview, Marks};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The run config (LLaMA-Factory YAML keys), as `hone train` takes it.
    pub config: PathBuf,
    /// `key=value` overrides of config keys.
    pub overrides: Vec<String>,
    /// How many rows to show rendered and tokenized.
    #[arg(long, default_value_t = 3)]
    pub rows: usize,
}

pub fn run(args: Args) -> Result<()> {
    let config = SftConfig::load(&args.config, &args.overrides)?;
    let report = preview(&config, args.rows)?;
    // Colour only for a person at a terminal (and not when NO_COLOR asks otherwise).
    let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let marks = if colour {
        Marks::Colour
    } else {
        Marks::Brackets
    };
    print!("{}", report.render(marks));
    Ok(())
}
