//! `hone lr-find CONFIG.yaml [key=value ...]`: a learning-rate range test of the run the config
//! describes (fastai's `lr_find`): prints the suggested rates and writes `lr_find.json` (every
//! point and the suggestions) and `lr_find.png` (loss against rate, log axis) to `--out`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use hone::io::atomic;
use hone::train::config::SftConfig;
use hone::train::sft::lr_find::{range_test, write_png, RangeTest};
use hone::train::sft::Event;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The run config (LLaMA-Factory YAML keys), as `hone train` takes it.
    pub config: PathBuf,
    /// `key=value` overrides of config keys.
    pub overrides: Vec<String>,
    /// The first learning rate.
    #[arg(long, default_value_t = 1e-7)]
    pub start_lr: f64,
    /// The rate the ramp heads for (reached after `--steps`).
    #[arg(long, default_value_t = 10.0)]
    pub end_lr: f64,
    /// Optimizer steps of the ramp (at least 6); the test stops earlier when the loss diverges.
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Where lr_find.json and lr_find.png go.
    #[arg(long, default_value = "lr_find")]
    pub out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let config = SftConfig::load(&args.config, &args.overrides)?;
    let test = RangeTest {
        start_lr: args.start_lr,
        end_lr: args.end_lr,
        steps: args.steps,
    };
    let finding = range_test(&config, &test, &mut |event| {
        if let Event::Note(text) = event {
            eprintln!("{text}");
        }
    })?;
    std::fs::create_dir_all(&args.out)?;
    let json = args.out.join("lr_find.json");
    atomic::write_json(&json, &finding)?;
    let png = args.out.join("lr_find.png");
    write_png(&finding, &png)?;
    if finding.stopped_early {
        eprintln!(
            "stopped after {} steps: the loss diverged",
            finding.lrs.len()
        );
    }
    let s = &finding.suggestions;
    let show = |lr: Option<f64>| lr.map_or("-".to_string(), |lr| format!("{lr:.2e}"));
    println!(
        "suggested learning rates: valley {} (fastai's default), steep {}, minimum/10 {}",
        show(s.valley),
        show(s.steep),
        show(s.minimum)
    );
    println!("wrote {} and {}", json.display(), png.display());
    Ok(())
}
