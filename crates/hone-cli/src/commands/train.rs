//! `hone train CONFIG.yaml [key=value ...]`: a training run (`stage` sft, pt, dpo, kto or rm) from a
//! LLaMA-Factory-style config, with a progress bar, log lines every `logging_steps`, Ctrl-C saving
//! a checkpoint, and `do_predict`'s predictions after training.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Args as ClapArgs;
use hone::eval::generate;
use hone::generate::{GenerateConfig, SamplingConfig};
use hone::io::atomic;
use hone::model::{load_with_adapter, Precision};
use hone::train::checkpoint::TrainerLogRecord;
use hone::train::config::SftConfig;
use hone::train::sft::{self, Event, RunOptions};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The run config (LLaMA-Factory YAML keys).
    pub config: PathBuf,
    /// `key=value` overrides of config keys, e.g. `learning_rate=1e-4 num_train_epochs=1`.
    pub overrides: Vec<String>,
    /// Print the fully resolved config (every key with its value or default) and exit.
    #[arg(long)]
    pub print_config: bool,
}

pub fn run(args: Args) -> Result<()> {
    let config = SftConfig::load(&args.config, &args.overrides)?;
    if args.print_config {
        print!("{}", config.to_yaml());
        return Ok(());
    }
    for note in config.ignored_settings() {
        eprintln!("warning: {note}");
    }
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: exiting without saving");
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to quit now)");
    })
    .context("cannot install the Ctrl-C handler")?;

    let bar = ProgressBar::hidden();
    let options = RunOptions {
        interrupt: Some(&interrupt),
    };
    let summary = sft::run(&config, &options, &mut |event| match event {
        Event::Note(text) => bar.suspend(|| eprintln!("{text}")),
        Event::Start { step, total } => {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(total);
            bar.set_position(step);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .expect("a valid progress template"),
            );
            bar.enable_steady_tick(Duration::from_millis(500));
        }
        Event::Step { step, log } => {
            bar.set_position(step);
            if let Some(record) = log {
                bar.set_message(short_status(record));
                bar.suspend(|| eprintln!("{}", log_line(record)));
            }
        }
        Event::Evaluated { step, eval_loss } => {
            bar.suspend(|| eprintln!("step {step}: eval_loss {eval_loss:.4}"))
        }
        Event::Saved(dir) => bar.suspend(|| eprintln!("saved {}", dir.display())),
    })?;
    bar.finish_and_clear();
    let how = if summary.interrupted {
        "interrupted; resume with resume_from_checkpoint=true"
    } else if summary.early_stopped {
        "stopped early"
    } else {
        "done"
    };
    eprintln!(
        "{how}: {} steps in {:.1} s, train_loss {:.4}, output in {}",
        summary.global_step,
        summary.seconds,
        summary.train_loss,
        summary.output_dir.display()
    );
    // A reward model's scores are predicted by the recipe, which holds its value head.
    if config.predict.predict_with_generate && config.predict.do_predict && !summary.interrupted {
        predict(&config, &summary.output_dir)?;
    }
    Ok(())
}

/// `do_predict`: the trained model (the base with the run's adapter, or the run's checkpoint)
/// answers the evaluation rows through the run's chat template; LLaMA-Factory's
/// `generated_predictions.jsonl` and `predict_results.json` go to the output directory.
fn predict(config: &SftConfig, output_dir: &Path) -> Result<()> {
    let conversations = sft::evaluation_conversations(config)?;
    let output = output_dir.to_string_lossy();
    let (model, adapter) = match config.method.finetuning_type.is_adapter() {
        true => (config.model.model_name_or_path.as_str(), Some(output_dir)),
        false => (output.as_ref(), None),
    };
    let loaded = load_with_adapter(model, adapter, Precision::Stored, &Device::Cpu)?;
    let (template, _) = sft::chat_template(config, &loaded.tokenizer)?;
    let p = &config.predict;
    let generation = GenerateConfig {
        max_new_tokens: p.max_new_tokens as usize,
        sampling: SamplingConfig {
            temperature: if p.do_sample {
                p.temperature as f32
            } else {
                0.0
            },
            top_k: p.top_k as usize,
            top_p: p.top_p as f32,
            repetition_penalty: p.repetition_penalty as f32,
            seed: config.train.seed,
            ..SamplingConfig::default()
        },
        ..GenerateConfig::default()
    };
    let batch = config.eval.per_device_eval_batch_size as usize;
    let rows = conversations.len();
    eprintln!(
        "predicting {rows} evaluation rows ({} new tokens at most)",
        p.max_new_tokens
    );
    let start = Instant::now();
    let predictions = generate::predict(
        &loaded.model,
        &loaded.tokenizer,
        &template,
        &conversations,
        &generation,
        batch,
        |done| eprintln!("predicted {done}/{rows}"),
    )?;
    let seconds = start.elapsed().as_secs_f64();
    generate::write_predictions(
        &output_dir.join("generated_predictions.jsonl"),
        &predictions,
    )?;
    let results = generate::predict_results(&predictions, seconds, rows.div_ceil(batch))?;
    atomic::write_json(&output_dir.join("predict_results.json"), &results)?;
    eprintln!(
        "predict: bleu-4 {:.2}, rouge-1 {:.2}, rouge-l {:.2} in {seconds:.1} s",
        results["predict_bleu-4"].as_f64().unwrap_or_default(),
        results["predict_rouge-1"].as_f64().unwrap_or_default(),
        results["predict_rouge-l"].as_f64().unwrap_or_default()
    );
    Ok(())
}

fn short_status(r: &TrainerLogRecord) -> String {
    format!(
        "loss {:.4} lr {:.2e} {:.0} tok/s",
        r.loss.unwrap_or(f64::NAN),
        r.lr.unwrap_or(0.0),
        r.throughput.unwrap_or(0.0)
    )
}

fn log_line(r: &TrainerLogRecord) -> String {
    format!(
        "step {}/{} | epoch {:.2} | loss {:.4} | lr {:.3e} | grad_norm {:.3} | {:.0} tok/s | {} < {}",
        r.current_steps,
        r.total_steps,
        r.epoch.unwrap_or(0.0),
        r.loss.unwrap_or(f64::NAN),
        r.lr.unwrap_or(0.0),
        r.grad_norm.unwrap_or(f64::NAN),
        r.throughput.unwrap_or(0.0),
        r.elapsed_time,
        r.remaining_time
    )
}
