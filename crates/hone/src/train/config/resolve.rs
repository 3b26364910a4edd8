//! What the training loop derives from the config: step counts with transformers' `Trainer`
//! arithmetic, warmup, the LR schedule and AdamW settings, LoRA targets and scaling, the layers
//! freeze tuning trains, the validation split size, and the accepted keys Hone ignores.

use anyhow::{bail, Result};

use super::values::{EvalStrategy, Stage, StepCount};
use super::SftConfig;
use crate::model::layout::{all_block_linears, linear_module_names};
use crate::model::ModelConfig;
use crate::train::optim::AdamWConfig;
use crate::train::schedule::Schedule;

/// The linear layers a decoder block of any family has, PEFT names (Phi-3's fused `qkv_proj`,
/// ChatGLM's `query_key_value`, Baichuan's `W_pack`, Qwen's `c_attn` among them): what
/// `lora_target` may name. `all` expands to those the model has.
pub fn linear_modules() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for path in all_block_linears() {
        let short = path.rsplit('.').next().unwrap_or(path);
        if !names.contains(&short) {
            names.push(short);
        }
    }
    names
}

/// The direct children of a decoder block, which `freeze_trainable_modules` names (OLMo 2 has
/// `post_feedforward_layernorm` and no `input_layernorm`; ChatGLM's attention is
/// `self_attention`, Qwen v1's `attn`).
pub const LAYER_MODULES: &[&str] = &[
    "self_attn",
    "self_attention",
    "attn",
    "mlp",
    "input_layernorm",
    "post_attention_layernorm",
    "post_feedforward_layernorm",
];

/// The modules outside the decoder blocks, which `freeze_extra_modules` names.
pub const NON_LAYER_MODULES: &[&str] = &["embed_tokens", "norm", "lm_head"];

/// How a dataset of a given size maps to optimizer steps (transformers'
/// `Trainer.set_initial_training_values`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepPlan {
    /// Batches of `per_device_train_batch_size` rows per epoch, the last one possibly short.
    pub batches_per_epoch: u64,
    /// Optimizer steps per epoch: ceil(batches / gradient_accumulation_steps), at least 1.
    pub steps_per_epoch: u64,
    /// Optimizer steps of the run: `max_steps` if positive, else
    /// ceil(num_train_epochs * steps_per_epoch).
    pub total_steps: u64,
    /// Epochs the loop starts: ceil of the (possibly fractional) epochs the steps cover.
    pub epochs: u64,
}

impl SftConfig {
    /// `lora_alpha`, or `2 * lora_rank` when unset (LLaMA-Factory's default).
    pub fn lora_alpha(&self) -> u32 {
        self.method
            .lora_alpha
            .unwrap_or(self.method.lora_rank.saturating_mul(2))
    }

    /// The factor on the adapter product B·A: alpha / r, or alpha / sqrt(r) with `use_rslora`
    /// (PEFT's `LoraLayer.scaling`).
    pub fn lora_scaling(&self) -> f64 {
        crate::adapters::lora_scale(
            self.method.lora_rank as usize,
            f64::from(self.lora_alpha()),
            self.method.use_rslora,
        )
    }

    /// The linear layers that get adapters, `all` expanded to every linear layer of `model`'s
    /// decoder blocks (PEFT's `all-linear`, which leaves out `lm_head`).
    pub fn lora_target_modules(&self, model: &ModelConfig) -> Vec<&str> {
        let target = &self.method.lora_target;
        if target.is("all") {
            linear_module_names(model)
        } else {
            target.items().iter().map(String::as_str).collect()
        }
    }

    /// Step counts for `train_rows` training rows, with transformers' arithmetic.
    pub fn step_plan(&self, train_rows: usize) -> Result<StepPlan> {
        if train_rows == 0 {
            bail!("no training rows: the training set is empty");
        }
        let t = &self.train;
        let batches_per_epoch = (train_rows as u64).div_ceil(t.per_device_train_batch_size as u64);
        let steps_per_epoch = batches_per_epoch
            .div_ceil(t.gradient_accumulation_steps as u64)
            .max(1);
        let (total_steps, epochs) = if t.max_steps > 0 {
            let total = t.max_steps as u64;
            (total, total.div_ceil(steps_per_epoch))
        } else {
            let total = (t.num_train_epochs * steps_per_epoch as f64).ceil() as u64;
            (total, t.num_train_epochs.ceil() as u64)
        };
        Ok(StepPlan {
            batches_per_epoch,
            steps_per_epoch,
            total_steps,
            epochs,
        })
    }

    /// Warmup steps for a run of `total_steps`: `warmup_steps` when set (a count, or a ratio
    /// rounded up, as transformers 5), else ceil(total * `warmup_ratio`) (transformers 4).
    pub fn warmup_steps(&self, total_steps: u64) -> u64 {
        let t = &self.train;
        if t.warmup_steps.is_zero() {
            (total_steps as f64 * t.warmup_ratio).ceil() as u64
        } else {
            t.warmup_steps.resolve(total_steps)
        }
    }

    /// The learning-rate schedule of a run of `total_steps`.
    pub fn schedule(&self, total_steps: u64) -> Schedule {
        Schedule {
            kind: self.train.lr_scheduler_type,
            warmup_steps: self.warmup_steps(total_steps),
            training_steps: total_steps,
        }
    }

    /// AdamW hyper-parameters as `torch.optim.AdamW` takes them.
    pub fn adamw(&self) -> AdamWConfig {
        let t = &self.train;
        AdamWConfig {
            lr: t.learning_rate,
            betas: (t.adam_beta1, t.adam_beta2),
            eps: t.adam_epsilon,
            weight_decay: t.weight_decay,
        }
    }

    /// Log every this many steps of a `total_steps` run.
    pub fn logging_interval(&self, total_steps: u64) -> u64 {
        self.output.logging_steps.resolve(total_steps)
    }

    /// Save a checkpoint every this many steps of a `total_steps` run.
    pub fn save_interval(&self, total_steps: u64) -> u64 {
        self.output.save_steps.resolve(total_steps)
    }

    /// Evaluate every this many steps with `eval_strategy: steps` (`eval_steps`, else
    /// `logging_steps`); None for the other strategies.
    pub fn eval_interval(&self, total_steps: u64) -> Option<u64> {
        (self.eval.eval_strategy == EvalStrategy::Steps).then(|| {
            self.eval
                .eval_steps
                .unwrap_or(self.output.logging_steps)
                .resolve(total_steps)
        })
    }

    /// Rows of `rows` held out for evaluation by `val_size`, as `datasets`'
    /// `train_test_split(test_size=val_size)`: a ratio rounds up, a count above 1 is exact.
    /// Whether examples are packed into `cutoff_len` rows: `packing` when set, else only for
    /// continued pre-training (LLaMA-Factory's default).
    pub fn packs(&self) -> bool {
        self.data.packing.unwrap_or(self.method.stage == Stage::Pt)
    }

    /// `interleave_probs` as numbers, one per dataset.
    pub fn interleave_probs(&self) -> Result<Option<Vec<f64>>> {
        let Some(list) = &self.data.interleave_probs else {
            return Ok(None);
        };
        list.items()
            .iter()
            .map(|p| match p.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => bail!("interleave_probs: {p:?} is not a probability"),
            })
            .collect::<Result<Vec<f64>>>()
            .map(Some)
    }

    pub fn val_rows(&self, rows: usize) -> Result<usize> {
        let v = self.data.val_size;
        if v == 0.0 {
            return Ok(0);
        }
        let held_out = if v > 1.0 {
            v as usize
        } else {
            StepCount::Ratio(v).resolve(rows as u64) as usize
        };
        if held_out >= rows {
            bail!("val_size: {v} holds out {held_out} of {rows} rows, leaving none to train on");
        }
        Ok(held_out)
    }

    /// One line per accepted key that is set but changes nothing in Hone, saying why; the CLI
    /// prints them so nobody believes such a setting took effect.
    /// Whether the run writes TensorBoard event files (`report_to: tensorboard` or `all`).
    pub fn reports_to_tensorboard(&self) -> bool {
        self.output
            .report_to
            .items()
            .iter()
            .any(|r| r == "tensorboard" || r == "all")
    }

    pub fn ignored_settings(&self) -> Vec<String> {
        let (m, d, t) = (&self.model, &self.data, &self.train);
        let mut notes = Vec::new();
        let mut note = |set: bool, text: &str| {
            if set {
                notes.push(text.to_string());
            }
        };
        note(
            m.trust_remote_code,
            "trust_remote_code: ignored: Hone runs no model code from the Hub",
        );
        note(
            self.method.pissa_init && !self.method.pissa_convert,
            "pissa_convert: false: Hone saves the PiSSA adapter converted to plain LoRA on the original base anyway \
             (unconverted, it fits only the residual base, which Hone does not save)",
        );
        note(
            self.method.loraplus_lr_embedding.is_some(),
            "loraplus_lr_embedding: ignored: it is LoRA+'s rate for adapters on embedding layers, which Hone does not adapt",
        );
        note(
            self.method.module_dropout != 0.0,
            "module_dropout: no effect: PEFT 0.21's OFT builds this dropout but never applies it, so Hone trains as PEFT \
             does (the saved config keeps the value)",
        );
        let pretraining = self.method.stage == Stage::Pt;
        note(
            pretraining && d.train_on_prompt,
            "train_on_prompt: ignored: continued pre-training learns every token anyway",
        );
        note(
            pretraining && (d.template.is_some() || d.enable_thinking.is_some()),
            "template: ignored: continued pre-training reads raw text, not conversations",
        );
        note(
            d.overwrite_cache,
            "overwrite_cache: ignored: Hone keeps no preprocessed-dataset cache",
        );
        note(
            d.preprocessing_num_workers.is_some(),
            "preprocessing_num_workers: ignored: Hone tokenizes in-process on its own thread pool",
        );
        note(
            d.dataloader_num_workers.is_some(),
            "dataloader_num_workers: ignored: Hone batches in-process",
        );
        note(
            self.output.plot_loss,
            "plot_loss: ignored: Hone draws no PNG; trainer_log.jsonl has every logged loss",
        );
        note(
            t.fp16,
            "fp16: CPUs have no fast fp16 products: training in bf16 mixed precision instead",
        );
        note(
            t.ddp_timeout != 1800,
            "ddp_timeout: ignored: Hone trains in one process",
        );
        let others: Vec<&str> = self
            .output
            .report_to
            .items()
            .iter()
            .map(String::as_str)
            .filter(|r| !matches!(*r, "none" | "tensorboard" | "all"))
            .collect();
        if !others.is_empty() {
            notes.push(format!(
                "report_to: {}: ignored: Hone reports to TensorBoard files only (report_to: \
                 tensorboard); see trainer_log.jsonl and trainer_state.json in output_dir",
                others.join(",")
            ));
        }
        notes
    }
}
