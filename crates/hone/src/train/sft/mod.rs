//! The recipe behind `hone train`, readable top to bottom: set up (model, data, trainable
//! tensors, optimizer, schedule), optionally resume, then loop over shuffled batches with gradient
//! accumulation normalised by labelled tokens, clipping, the schedule, periodic validation with
//! early stopping, checkpoints, and finally the output directory. Continued pre-training (`pt`)
//! differs only in its rows (`rows.rs`); preference optimization (`dpo`, `kto`) and reward
//! modelling (`rm`) batch items of two rows and take their loss from `train::dpo` and
//! `train::reward` (`preference.rs`).
//!
//! It reports through [`Event`]s so the CLI owns the terminal; the files it writes follow the
//! field's conventions (PEFT adapter or HF checkpoint, HF `trainer_state.json`, LLaMA-Factory
//! `trainer_log.jsonl`).

pub mod lr_find;
mod output;
pub mod plan;
mod preference;
pub mod preview;
mod prompt;
mod report;
mod rows;
mod setup;
mod state;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Result};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};

pub use rows::evaluation_conversations;
pub use setup::chat_template;
pub use state::Progress;

use crate::data::{collate, flatten, Batch, Row};
use crate::model;
use crate::train::checkpoint::{
    self, prepare_output_dir, round2, LogHistoryEntry, Retention, RunState, RunStatus,
    TrainerLogRecord, TrainerState,
};
use crate::train::config::{SftConfig, Stage};
use crate::train::dropout;
use crate::train::groups::param_groups;
use crate::train::lora::trainable_parameters_line;
use crate::train::model::{shifted_labels, TrainModel};
use crate::train::optim::{clip_grad_norm, AdamW};
use crate::train::reward;
use report::RunLog;
use state::Snapshot;

/// What the recipe tells its caller as it goes.
pub enum Event<'a> {
    /// A line worth showing once (the trainable-parameter count, skipped rows, notes).
    Note(&'a str),
    /// Training starts (or resumes) at `step` of `total`.
    Start {
        step: u64,
        total: u64,
    },
    /// An optimizer step finished; `log` is set on logging steps.
    Step {
        step: u64,
        log: Option<&'a TrainerLogRecord>,
    },
    Evaluated {
        step: u64,
        eval_loss: f64,
    },
    Saved(&'a Path),
}

/// How the caller can steer a run: setting `interrupt` (e.g. from a Ctrl-C handler) saves a
/// checkpoint after the current step and stops.
#[derive(Default)]
pub struct RunOptions<'a> {
    pub interrupt: Option<&'a AtomicBool>,
}

/// How a run ended.
#[derive(Debug)]
pub struct Summary {
    pub output_dir: PathBuf,
    pub global_step: u64,
    pub train_loss: f64,
    pub interrupted: bool,
    pub early_stopped: bool,
    pub seconds: f64,
}

/// Runs the whole recipe for `config`. Once `output_dir` is ready, `run_status.json` there says
/// the run is going, then how it ended (failed, with the error, included).
pub fn run(config: &SftConfig, options: &RunOptions, on: &mut dyn FnMut(Event)) -> Result<Summary> {
    let mut begun = None;
    let result = run_recipe(config, options, on, &mut begun);
    if let Some((dir, status)) = begun {
        let (state, message) = match &result {
            Ok(summary) if summary.interrupted => (RunState::Interrupted, None),
            Ok(summary) => (
                RunState::Finished,
                summary.early_stopped.then(|| "stopped early".to_string()),
            ),
            Err(e) => (RunState::Failed, Some(format!("{e:#}"))),
        };
        status.end(&dir, state, message)?;
    }
    result
}

fn run_recipe(
    config: &SftConfig,
    options: &RunOptions,
    on: &mut dyn FnMut(Event),
    begun: &mut Option<(PathBuf, RunStatus)>,
) -> Result<Summary> {
    // The data and the memory plan come before any weight: a run that cannot fit stops here.
    let (source, model_config, tokenizer) = model::inspect(&config.model.model_name_or_path)?;
    let rows = rows::load_rows(config, &tokenizer)?;
    for note in &rows.notes {
        on(Event::Note(note));
    }
    if !rows.skipped.is_empty() {
        on(Event::Note(&format!("skipped rows: {}", rows.skipped)));
    }
    if config.method.stage == Stage::Pt {
        on(Event::Note(&pretraining_note(config, &rows)));
    }
    let plan_inputs = plan::Inputs::new(&source, &model_config, &rows)?;
    let memory = plan::plan_with_rows(config, &plan_inputs)?;
    on(Event::Note(&format!("memory plan:\n{}", memory.table())));
    if !memory.fits() {
        bail!(plan::refusal(config, &plan_inputs, &memory)?);
    }
    let prepared = prepare_output_dir(config)?;
    for path in &prepared.restored {
        let note = format!(
            "{}: restored from before an interrupted save",
            path.display()
        );
        on(Event::Note(&note));
    }
    let output_dir = prepared.dir;
    *begun = Some((output_dir.clone(), RunStatus::begin(&output_dir)?));
    output::write_run_config(&output_dir, config)?;
    output::write_dataset_record(&output_dir, &rows)?;
    let mut run_log = RunLog::open(config, &output_dir)?;
    if let Some(path) = run_log.event_file() {
        on(Event::Note(&format!("TensorBoard: {}", path.display())));
    }
    let mut base = setup::load_base(config)?;
    if let Some(note) = setup::choose_base_storage(config, &mut base)? {
        on(Event::Note(&note));
    }
    let (mut model, adapter) = setup::build_model(config, base)?;
    if let Some(note) = setup::attach_value_head(config, &mut model)? {
        on(Event::Note(&note));
    }
    on(Event::Note(&setup::precision_note(config)));
    let attention_dropout = model.config().attention_dropout;
    if attention_dropout > 0.0 {
        on(Event::Note(&format!(
            "the model's attention_dropout ({attention_dropout}) is not applied: Hone trains \
             without dropout on attention probabilities (transformers applies it in training)"
        )));
    }
    model.neftune_alpha = config.train.neftune_noise_alpha.map(|a| a as f32);
    model.recompute = config.train.gradient_checkpointing;
    let (trainable, total) = model.parameter_counts();
    on(Event::Note(&trainable_parameters_line(trainable, total)));

    // Preference runs batch pairs: an item is two rows (chosen, rejected).
    let group = if rows.paired { 2 } else { 1 };
    let plan = config.step_plan(rows.train.len() / group)?;
    let adapter = setup::start_rank_allocator(&mut model, adapter, plan.total_steps)?;
    let schedule = config.schedule(plan.total_steps);
    let mut optimizer = new_optimizer(config, &mut model)?;
    if let Some(ratio) = config.method.loraplus_lr_ratio {
        on(Event::Note(&format!(
            "LoRA+: lora_B matrices and 1-D tensors learn at {ratio} × learning_rate"
        )));
    }
    let mut progress = Progress::default();
    let mut trainer_state = new_trainer_state(config, &plan);
    let resume = checkpoint::find_checkpoint(&output_dir, &config.output.resume_from_checkpoint)?;
    let preference = preference::start(config, &model, &rows, resume.as_deref(), on)?;
    if let Some(dir) = resume {
        (progress, trainer_state) = state::restore_checkpoint(&dir, &mut model, &mut optimizer)?;
        model.refresh_bf16();
        on(Event::Note(&format!(
            "resumed from {} at step {}",
            dir.display(),
            progress.global_step
        )));
    }
    let pad_id = tokenizer.eos_id().unwrap_or(0);
    let padded = pads_batches(config);
    let to_batch = |rows: &[&Row]| {
        if padded {
            collate(rows, pad_id)
        } else {
            flatten(rows)
        }
    };
    let (batch_size, accumulation) = (
        config.train.per_device_train_batch_size as usize,
        config.train.gradient_accumulation_steps as usize,
    );
    let logging = config.logging_interval(plan.total_steps).max(1);
    let saving = config.save_interval(plan.total_steps);
    let evaluating = config
        .eval_interval(plan.total_steps)
        .filter(|_| !rows.val.is_empty());
    let started = Instant::now();
    let elapsed = |p: &Progress| p.elapsed_before + started.elapsed().as_secs_f64();
    let (mut interrupted, mut early_stopped) = (false, false);
    on(Event::Start {
        step: progress.global_step,
        total: plan.total_steps,
    });

    'epochs: while progress.global_step < plan.total_steps && progress.epoch < plan.epochs {
        let order = epoch_order(rows.train.len() / group, config.train.seed, progress.epoch);
        let batches: Vec<&[usize]> = order.chunks(batch_size).collect();
        let windows: Vec<&[&[usize]]> = batches.chunks(accumulation).collect();
        while (progress.window as usize) < windows.len() {
            if progress.global_step >= plan.total_steps {
                break 'epochs;
            }
            let window_items = windows[progress.window as usize];
            let window_rows: Vec<Vec<&Row>> = window_items
                .iter()
                .map(|idx| {
                    idx.iter()
                        .flat_map(|&i| &rows.train[group * i..group * (i + 1)])
                        .collect()
                })
                .collect();
            let window_tokens: usize = window_rows.iter().flatten().map(|r| r.len()).sum();
            let step = progress.global_step;
            let (loss, grad_norm) = match &preference {
                Some(p) => {
                    let window = (&window_rows[..], window_items);
                    let (loss, norm, metrics) =
                        preference::step(&mut model, window, (p, &rows.desirable), config, step)?;
                    progress.pairs_since_log.merge(&metrics);
                    (loss, norm)
                }
                None => {
                    let window: Vec<Batch> = window_rows.iter().map(|r| to_batch(r)).collect();
                    train_step(&mut model, &window, config, step)?
                }
            };
            let lr_multiplier = schedule.multiplier(step);
            optimizer.step(&mut model.params_mut(), lr_multiplier)?;
            model.after_optimizer_step(step);
            model.refresh_bf16();
            progress.global_step += 1;
            progress.window += 1;
            progress.tokens_seen += window_tokens as u64;
            progress.loss_since_log += loss;
            progress.steps_since_log += 1;
            let step = progress.global_step;
            let epoch = epoch_position(&progress, windows.len());

            let mut log = (step % logging == 0 || step == plan.total_steps).then(|| {
                let mut record = TrainerLogRecord::progress(
                    step,
                    plan.total_steps,
                    elapsed(&progress),
                    progress.tokens_seen,
                );
                record.loss = Some(progress.loss_since_log / progress.steps_since_log as f64);
                record.lr = Some(config.train.learning_rate * lr_multiplier);
                record.grad_norm = Some(f64::from(grad_norm));
                record.epoch = Some(round2(epoch));
                record
            });
            if let Some(record) = &mut log {
                let metrics = std::mem::take(&mut progress.pairs_since_log);
                record.accuracy = metrics.accuracy();
                run_log.line(record)?;
                let entry = LogHistoryEntry {
                    epoch: round2(epoch),
                    grad_norm: record.grad_norm,
                    learning_rate: record.lr,
                    loss: record.loss,
                    step,
                    metrics: metrics.named("").into_iter().collect(),
                    ..Default::default()
                };
                run_log.entry(&mut trainer_state, entry)?;
                progress.loss_since_log = 0.0;
                progress.steps_since_log = 0;
            }
            on(Event::Step {
                step,
                log: log.as_ref(),
            });

            if evaluating.is_some_and(|every| step % every == 0) {
                let (eval_loss, metrics) = match &preference {
                    Some(p) => {
                        let m = preference::evaluate(&mut model, &rows, p, config)?;
                        (m.mean_loss(), m.named("eval_"))
                    }
                    None => (evaluate(&model, &rows.val, config)?, Vec::new()),
                };
                on(Event::Evaluated { step, eval_loss });
                let seconds = elapsed(&progress);
                early_stopped = record_eval(
                    config,
                    &mut progress,
                    &mut trainer_state,
                    &mut run_log,
                    (step, epoch, seconds),
                    eval_loss,
                    metrics,
                )?;
            }
            interrupted = options
                .interrupt
                .is_some_and(|flag| flag.load(Ordering::SeqCst));
            let save_now = saving > 0 && step % saving == 0;
            if save_now || interrupted || early_stopped {
                trainer_state.global_step = step;
                trainer_state.epoch = epoch;
                trainer_state.num_input_tokens_seen = progress.tokens_seen;
                progress.elapsed_before = elapsed(&progress);
                let dir = save(
                    config,
                    &output_dir,
                    Snapshot {
                        model: &mut model,
                        optimizer: &optimizer,
                        progress: &progress,
                        trainer_state: &trainer_state,
                        adapter: adapter.as_ref(),
                        reference: preference.as_ref().map(|p| &p.reference),
                    },
                )?;
                progress.elapsed_before = 0.0;
                on(Event::Saved(&dir));
            }
            if interrupted || early_stopped {
                break 'epochs;
            }
        }
        progress.epoch += 1;
        progress.window = 0;
    }

    let seconds = elapsed(&progress);
    let train_loss = trainer_state
        .log_history
        .iter()
        .filter_map(|e| e.loss)
        .sum::<f64>()
        / trainer_state
            .log_history
            .iter()
            .filter(|e| e.loss.is_some())
            .count()
            .max(1) as f64;
    if !interrupted {
        trainer_state.global_step = progress.global_step;
        trainer_state.epoch = round2(epoch_position(&progress, plan.steps_per_epoch as usize));
        let remote_code = model.config().architecture.remote_code();
        output::write_final(&output::Final {
            output_dir: &output_dir,
            model: &mut model,
            tokenizer: &tokenizer,
            adapter: adapter.as_ref(),
            trainer_state: &trainer_state,
            train_loss,
            seconds,
            train_examples: rows.train_examples,
            modeling_code: Some(Path::new(&config.model.model_name_or_path))
                .filter(|dir| remote_code && dir.is_dir()),
        })?;
        if config.predict.do_predict && config.method.stage == Stage::Rm {
            predict_scores(config, &model, &rows.val, &output_dir, on)?;
        }
    }
    Ok(Summary {
        output_dir,
        global_step: progress.global_step,
        train_loss,
        interrupted,
        early_stopped,
        seconds,
    })
}

/// A reward model's `do_predict`: the validation pairs' scores and their accuracy.
fn predict_scores(
    config: &SftConfig,
    model: &TrainModel,
    val: &[Row],
    output_dir: &Path,
    on: &mut dyn FnMut(Event),
) -> Result<()> {
    let started = Instant::now();
    let batch = config.eval.per_device_eval_batch_size.max(1) as usize;
    let scores = reward::scores(model, val, batch)?;
    let batches = scores.len().div_ceil(batch);
    output::write_reward_predictions(
        output_dir,
        &scores,
        started.elapsed().as_secs_f64(),
        batches,
    )?;
    let correct = scores.iter().filter(|s| s.chosen > s.rejected).count();
    on(Event::Note(&format!(
        "predict: {correct} of {} validation pairs scored chosen above rejected",
        scores.len()
    )));
    Ok(())
}

/// One optimizer step's gradients: every micro-batch of the window forward and backward, the
/// gradient scaled by 1 / (labelled tokens in the window) so accumulation equals one big batch,
/// then clipped. Returns the window's mean loss and the gradient norm before clipping; a
/// non-finite loss or norm stops the run before the optimizer touches the weights.
fn train_step(
    model: &mut TrainModel,
    window: &[Batch],
    config: &SftConfig,
    step: u64,
) -> Result<(f64, f32)> {
    let loss = window_gradients(model, window, config, step)?;
    let norm = finish_step(model, loss, config, step)?;
    Ok((loss, norm))
}

/// The gradients of a window's mean loss per labelled token (accumulated over its micro-batches,
/// the gradients zeroed first), and that loss.
pub(super) fn window_gradients(
    model: &mut TrainModel,
    window: &[Batch],
    config: &SftConfig,
    step: u64,
) -> Result<f64> {
    let labelled: usize = window
        .iter()
        .map(|b| shifted_labels(b).iter().filter(|&&l| l >= 0).count())
        .sum();
    if labelled == 0 {
        bail!(
            "step {}: no labelled tokens in the batch (every response was cut away?)",
            step + 1
        );
    }
    model.zero_grad();
    let mut loss_sum = 0.0;
    for (micro, batch) in window.iter().enumerate() {
        let seed = dropout::stream(config.train.seed, step * 1024 + micro as u64);
        let (sum, _) = model.forward_backward(batch, 1.0 / labelled as f32, seed)?;
        loss_sum += sum;
    }
    Ok(loss_sum / labelled as f64 + model.step_penalty())
}

/// Stops on a non-finite loss, then clips the gradients; returns their norm before clipping.
pub(super) fn finish_step(
    model: &mut TrainModel,
    loss: f64,
    config: &SftConfig,
    step: u64,
) -> Result<f32> {
    if !loss.is_finite() {
        bail!(
            "step {}: the loss is {loss}: training stopped; nothing was saved from this step",
            step + 1
        );
    }
    let norm = clip(model, config);
    if !norm.is_finite() {
        bail!("step {}: the gradient norm is {norm}: training stopped; nothing was saved from this step", step + 1);
    }
    Ok(norm)
}

/// Clips the gradients to `max_grad_norm` (transformers clips only when it is > 0); returns their
/// norm before clipping, which is reported either way.
pub(super) fn clip(model: &mut TrainModel, config: &SftConfig) -> f32 {
    let max_norm = match config.train.max_grad_norm {
        m if m > 0.0 => m as f32,
        _ => f32::INFINITY,
    };
    clip_grad_norm(&mut model.grads_mut(), max_norm)
}

/// Token-weighted mean loss over the validation rows.
fn evaluate(model: &TrainModel, val: &[Row], config: &SftConfig) -> Result<f64> {
    let (mut sum, mut count) = (0.0, 0);
    for chunk in val.chunks(config.eval.per_device_eval_batch_size as usize) {
        let rows: Vec<&Row> = chunk.iter().collect();
        let (s, n) = model.loss(&flatten(&rows))?;
        sum += s;
        count += n;
    }
    Ok(sum / count.max(1) as f64)
}

/// Logs an evaluation at `(step, epoch, elapsed seconds)` and updates early stopping; true
/// when patience has run out.
fn record_eval(
    config: &SftConfig,
    progress: &mut Progress,
    trainer_state: &mut TrainerState,
    run_log: &mut RunLog,
    (step, epoch, elapsed): (u64, f64, f64),
    eval_loss: f64,
    metrics: Vec<(String, f64)>,
) -> Result<bool> {
    let mut record =
        TrainerLogRecord::progress(step, trainer_state.max_steps, elapsed, progress.tokens_seen);
    record.eval_loss = Some(eval_loss);
    record.epoch = Some(round2(epoch));
    run_log.line(&record)?;
    let entry = LogHistoryEntry {
        epoch: round2(epoch),
        eval_loss: Some(eval_loss),
        step,
        metrics: metrics.into_iter().collect(),
        ..Default::default()
    };
    run_log.entry(trainer_state, entry)?;
    if progress.best_eval_loss.is_none_or(|best| eval_loss < best) {
        progress.best_eval_loss = Some(eval_loss);
        progress.evals_without_improvement = 0;
        trainer_state.best_metric = Some(eval_loss);
        trainer_state.best_global_step = Some(step);
    } else {
        progress.evals_without_improvement += 1;
    }
    Ok(config
        .eval
        .early_stopping_steps
        .is_some_and(|patience| progress.evals_without_improvement >= patience))
}

fn save(config: &SftConfig, output_dir: &Path, snapshot: Snapshot) -> Result<PathBuf> {
    let retention = Retention {
        save_total_limit: config.output.save_total_limit,
        best_checkpoint: None,
    };
    let step = snapshot.progress.global_step;
    let mut snapshot = Some(snapshot);
    checkpoint::save_checkpoint(output_dir, step, retention, |dir| {
        let snapshot = snapshot.take().expect("a checkpoint is written once");
        state::write_checkpoint(dir, snapshot)
    })
}

/// AdamW over the trainable tensors, in transformers' groups (or LoRA+'s, see [`param_groups`]).
fn new_optimizer(config: &SftConfig, model: &mut TrainModel) -> Result<AdamW> {
    let shapes = model.trainable_shapes();
    let ratio = config.method.loraplus_lr_ratio;
    let mut opt = AdamW::new();
    for (group, params) in param_groups(&shapes, config.adamw(), ratio) {
        opt.add_group(group, &params)?;
    }
    Ok(opt)
}

fn new_trainer_state(config: &SftConfig, plan: &crate::train::config::StepPlan) -> TrainerState {
    TrainerState {
        max_steps: plan.total_steps,
        num_train_epochs: plan.epochs,
        logging_steps: config.logging_interval(plan.total_steps),
        save_steps: config.save_interval(plan.total_steps),
        eval_steps: config.eval_interval(plan.total_steps).unwrap_or(0),
        train_batch_size: Some(u64::from(config.train.per_device_train_batch_size)),
        is_local_process_zero: true,
        is_world_process_zero: true,
        ..Default::default()
    }
}

/// What continued pre-training made of the documents.
fn pretraining_note(config: &SftConfig, rows: &rows::Rows) -> String {
    let tokens: usize = rows.train.iter().map(Row::len).sum();
    let shape = if config.packs() {
        format!("blocks of {} tokens", config.data.cutoff_len)
    } else {
        format!(
            "rows (a document each, cut to {} tokens)",
            config.data.cutoff_len
        )
    };
    format!(
        "continued pre-training: {} documents, {tokens} tokens in {} {shape}; the loss is taken on \
         every token",
        rows.train_examples,
        rows.train.len()
    )
}

/// Whether batches are padded: they are padding-free (same loss and gradients, no work on
/// padding), except under NEFTune, whose noise scale transformers computes from the padded length.
fn pads_batches(config: &SftConfig) -> bool {
    config.train.neftune_noise_alpha.is_some()
}

/// The row order of `epoch`: a permutation drawn from the seed and the epoch alone, so a resumed
/// run sees the same order.
pub(super) fn epoch_order(rows: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows).collect();
    order.shuffle(&mut StdRng::seed_from_u64(dropout::stream(seed, epoch)));
    order
}

/// Fractional epochs done, as HF reports `epoch`.
fn epoch_position(progress: &Progress, windows: usize) -> f64 {
    progress.epoch as f64 + progress.window as f64 / windows.max(1) as f64
}
