//! `hone sweep SWEEP.yaml`: an automatic search for a run's PEFT configuration (AutoPEFT):
//! trials drawn from a search space over a base config, successive halving on the eval loss,
//! a ranked table (`sweep.md`, `sweep.json`) and, with `compare:`, a `hone compare` report of
//! the best trials against the base model (`report.html`, `report.md`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;
use hone::eval::compare::{self, summary, CompareSettings};
use hone::eval::metrics::ScoreOptions;
use hone::io::atomic;
use hone::train::config::SftConfig;
use hone::train::sweep::{self, Outcome, SweepConfig, SweepEvent};

use super::chat_template;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The sweep file: `base` (a run config), `output_dir`, `space` and `methods` (each key's
    /// candidate values), `trials`, `max_steps`, `eta`, `minutes`, `seed`, `compare`.
    pub sweep: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let config = SweepConfig::load(&args.sweep)?;
    std::fs::create_dir_all(&config.output_dir)?;
    let outcome = sweep::run(&config, &mut |event| match event {
        SweepEvent::Rung {
            index,
            steps,
            trials,
        } => eprintln!("rung {}: {trials} trials to step {steps}", index + 1),
        SweepEvent::Trial {
            trial,
            steps,
            eval_loss,
        } => {
            let keys: Vec<String> = trial.keys.iter().map(|(k, v)| format!("{k}={v}")).collect();
            match (eval_loss, &trial.error) {
                (Some(loss), _) => eprintln!(
                    "  {} step {steps}: eval_loss {loss:.4} ({})",
                    trial.name,
                    keys.join(" ")
                ),
                (None, Some(e)) => eprintln!("  {} failed: {e}", trial.name),
                (None, None) => {}
            }
        }
        SweepEvent::Note(text) => eprintln!("{text}"),
    })?;
    let json = config.output_dir.join("sweep.json");
    atomic::write_json(
        &json,
        &serde_json::json!({"sweep": &config, "outcome": &outcome}),
    )?;
    let md = config.output_dir.join("sweep.md");
    atomic::write_text(&md, &outcome.markdown(&config))?;
    print!("{}", outcome.markdown(&config));
    eprintln!("wrote {} and {}", md.display(), json.display());
    if let Some(spec) = &config.compare {
        compare_best(&config, spec, &outcome)?;
    }
    Ok(())
}

/// `hone compare` of the base model and the best trials' adapters: each as its last rung left it
/// (the final adapter, or the rung's checkpoint), copied to `best/<trial>-step<N>/` so the
/// report names the trial and its steps.
fn compare_best(config: &SweepConfig, spec: &sweep::CompareSpec, outcome: &Outcome) -> Result<()> {
    let last_rung = outcome.rungs.last().copied();
    let mut adapters = Vec::new();
    for trial in outcome
        .trials
        .iter()
        .filter(|t| t.error.is_none())
        .take(spec.best)
    {
        let Some((steps, _)) = trial.last() else {
            continue;
        };
        let source = match Some(steps) == last_rung {
            true => trial.dir.clone(),
            false => trial.dir.join(format!("checkpoint-{steps}")),
        };
        if !source.join("adapter_config.json").exists() {
            continue;
        }
        let copy = config
            .output_dir
            .join("best")
            .join(format!("{}-step{steps}", trial.name));
        std::fs::create_dir_all(&copy)?;
        for file in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(source.join(file), copy.join(file))?;
        }
        adapters.push(copy);
    }
    if adapters.is_empty() {
        eprintln!("no trial left an adapter: nothing to compare");
        return Ok(());
    }
    let base = SftConfig::load(&config.base, &[])?;
    let dataset_dir = PathBuf::from(&base.data.dataset_dir);
    let prompts = hone::data::load_prompts(&spec.prompts, &dataset_dir)?;
    let settings = CompareSettings {
        base_model: base.model.model_name_or_path.clone(),
        adapters,
        prompts_file: spec.prompts.clone(),
        max_new_tokens: spec.max_new_tokens,
        batch_size: 8,
        chat_template: None,
        score_options: ScoreOptions::default(),
        perplexity_data: None,
        max_length: 1024,
        precision: hone::model::Precision::default(),
    };
    let template = |tokenizer: &_| chat_template(tokenizer, None);
    let comparison = compare::compare(&settings, &prompts, template, |_| {})?;
    let out = config.output_dir.join("report.html");
    let md = compare::write_reports(&comparison, &out, true)?;
    eprintln!("wrote {} and {}", out.display(), md.display());
    print!("{}", summary::text_table(&comparison));
    Ok(())
}
