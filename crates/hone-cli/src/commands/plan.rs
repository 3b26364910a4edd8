//! `hone plan CONFIG.yaml [key=value ...] [--json]`: the peak memory a `hone train` run of the
//! config will need, part by part, predicted before loading any weight.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use hone::train::config::SftConfig;
use hone::train::sft::plan::memory_plan;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The run config (LLaMA-Factory YAML keys), as `hone train` takes it.
    pub config: PathBuf,
    /// `key=value` overrides of config keys.
    pub overrides: Vec<String>,
    /// Print `{"peak_memory_bytes", "parts", "fits", "available_bytes"}` as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let config = SftConfig::load(&args.config, &args.overrides)?;
    let plan = memory_plan(&config)?;
    if args.json {
        println!("{}", plan.to_json());
    } else {
        println!("memory plan for {}:", args.config.display());
        println!("{}", plan.table());
    }
    Ok(())
}
