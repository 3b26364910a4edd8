//! The memory plan of an SFT run, made before any weight is loaded: the run's shape from its
//! config (how the base is held, what trains, precision, recomputation), the model file's tensor
//! table, and the largest micro-batch the run will actually see (its batches are deterministic:
//! the same shuffled order the training loop walks).

use std::collections::HashMap;

use anyhow::Result;

use super::rows::Rows;
use super::setup;
use crate::adapters::targets::ModuleMatcher;
use crate::adapters::{read_adapter, PeftConfig};
use crate::data::Row;
use crate::io::source::ModelSource;
use crate::model::{self, memory, quantize, ModelConfig};
use crate::quant::GgmlType;
use crate::train::config::{CommaList, FinetuningType, SftConfig, Stage};
use crate::train::lora::check_targets_exist;
use crate::train::plan::{self, AdapterMatcher, BaseStorage, DatasetSize, MemoryPlan, RunShape};

/// What a plan reads before any weight: the model's config and tensor table, and the run's rows.
pub(super) struct Inputs<'a> {
    pub model: &'a ModelConfig,
    pub stored: HashMap<String, (GgmlType, u64)>,
    pub rows: &'a Rows,
}

impl<'a> Inputs<'a> {
    /// Reads the tensor table of `source` (its header only).
    pub fn new(source: &ModelSource, model: &'a ModelConfig, rows: &'a Rows) -> Result<Self> {
        Ok(Inputs {
            model,
            stored: memory::stored_tensors(source)?,
            rows,
        })
    }
}

/// The plan of `config`'s run: reads the model's config, tensor table and tokenizer, and the
/// dataset.
pub fn memory_plan(config: &SftConfig) -> Result<MemoryPlan> {
    let (source, model, tokenizer) = model::inspect(&config.model.model_name_or_path)?;
    let rows = super::rows::load_rows(config, &tokenizer)?;
    plan_with_rows(config, &Inputs::new(&source, &model, &rows)?)
}

/// The plan of `config`'s run on a model and rows already read.
pub(super) fn plan_with_rows(config: &SftConfig, inputs: &Inputs) -> Result<MemoryPlan> {
    let (model, stored, rows) = (inputs.model, &inputs.stored, inputs.rows);
    let available = memory::available_bytes();
    let m = &config.method;
    let freeze = match m.finetuning_type {
        FinetuningType::Freeze => Some(setup::freeze_selection(config, model.num_hidden_layers)?),
        _ => None,
    };
    let base_trains = |name: &str| match m.finetuning_type {
        FinetuningType::Full => true,
        FinetuningType::Freeze => freeze.as_ref().is_some_and(|f| f.trains(name)),
        FinetuningType::Lora
        | FinetuningType::Ia3
        | FinetuningType::PromptTuning
        | FinetuningType::PTuning
        | FinetuningType::Prefix
        | FinetuningType::AdaptionPrompt
        | FinetuningType::Vera
        | FinetuningType::Loha
        | FinetuningType::Lokr
        | FinetuningType::Oft
        | FinetuningType::Adalora => false,
    };
    let adapter = adapter_matcher(config, model)?;
    let (batch_tokens, eval_tokens) = largest_batches(config, rows)?;
    let shape = RunShape {
        model,
        stored,
        base_trains: &base_trains,
        adapter: adapter.as_ref(),
        dora: m.use_dora,
        keeps_originals: !m.finetuning_type.is_adapter(),
        keeps_quantized: config.model.quantization_bit.is_some(),
        storage: base_storage(config, stored, available),
        bf16: setup::mixed_precision(config),
        recompute: config.train.gradient_checkpointing,
        batch_tokens,
        eval_tokens,
        dataset: dataset_size(rows),
    };
    Ok(plan::plan(&shape, available))
}

/// The rows' heap bytes (with their own headers), their number and their tokens.
fn dataset_size(rows: &Rows) -> DatasetSize {
    let all = rows.train.iter().chain(&rows.val);
    let heap = all.clone().map(Row::heap_bytes).sum::<usize>();
    let count = rows.train.len() + rows.val.len();
    DatasetSize {
        bytes: (heap + count * std::mem::size_of::<Row>()) as u64,
        rows: count,
        tokens: all.map(Row::len).sum(),
    }
}

/// Why the run cannot start, in one line: the plan's peak against the memory available, and
/// the single changes that would make it fit (each planned the same way), else all of them
/// together.
pub(super) fn refusal(config: &SftConfig, inputs: &Inputs, plan: &MemoryPlan) -> Result<String> {
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    let available = plan.available_bytes.unwrap_or(0);
    let mut fitting = Vec::new();
    let mut combined = config.clone();
    let changes = changes(config);
    for (change, apply) in &changes {
        let mut changed = config.clone();
        apply(&mut changed);
        apply(&mut combined);
        let peak = plan_with_rows(&changed, inputs)?.peak_bytes();
        if peak <= available {
            fitting.push(format!("{change} ({})", gib(peak)));
        }
    }
    let advice = if fitting.is_empty() {
        let peak = plan_with_rows(&combined, inputs)?.peak_bytes();
        let all: Vec<&str> = changes.iter().map(|(c, _)| c.as_str()).collect();
        format!(
            "even with all of {} it would need {}; use a smaller model or a shorter cutoff_len",
            all.join("; "),
            gib(peak)
        )
    } else {
        format!("it would fit with {}", fitting.join(", or "))
    };
    Ok(format!(
        "memory plan: the run needs {} at its peak and {} is available (`hone plan` shows the \
         parts); {advice}",
        gib(plan.peak_bytes()),
        gib(available)
    ))
}

type Change = (String, Box<dyn Fn(&mut SftConfig)>);

/// Config changes that lower the peak, each with how a user writes it; only those that change
/// something in `config`.
fn changes(config: &SftConfig) -> Vec<Change> {
    let t = &config.train;
    let lora = config.method.finetuning_type.is_adapter();
    let mut out: Vec<Change> = Vec::new();
    if t.per_device_train_batch_size > 1 {
        let (batch, accumulation) = (
            t.per_device_train_batch_size / 2,
            t.gradient_accumulation_steps * 2,
        );
        out.push((
            format!(
                "per_device_train_batch_size: {batch}, gradient_accumulation_steps: {accumulation}"
            ),
            Box::new(move |c| {
                c.train.per_device_train_batch_size = batch;
                c.train.gradient_accumulation_steps = accumulation;
            }),
        ));
    }
    if !lora {
        out.push((
            "finetuning_type: lora".into(),
            Box::new(|c| c.method.finetuning_type = FinetuningType::Lora),
        ));
    }
    if !t.gradient_checkpointing {
        out.push((
            "gradient_checkpointing: true".into(),
            Box::new(|c| c.train.gradient_checkpointing = true),
        ));
    }
    if !setup::mixed_precision(config) {
        out.push(("bf16: true".into(), Box::new(|c| c.train.bf16 = true)));
    }
    if lora && config.model.quantization_bit.is_none() {
        out.push((
            "quantization_bit: 4".into(),
            Box::new(|c| c.model.quantization_bit = Some(4)),
        ));
    }
    let qv = ["q_proj", "v_proj"].map(String::from).to_vec();
    if lora && config.model.adapter_name_or_path.is_none() && config.method.lora_target.0 != qv {
        out.push((
            "lora_target: q_proj,v_proj".into(),
            Box::new(move |c| c.method.lora_target = CommaList(qv.clone())),
        ));
    }
    out
}

/// The adapter's targets (LoRA's, IA3's, OFT's or AdaLoRA's): the starting adapter's, else the
/// config's.
fn adapter_matcher(config: &SftConfig, model: &ModelConfig) -> Result<Option<AdapterMatcher>> {
    let adapter = match &config.model.adapter_name_or_path {
        Some(dir) => Some(read_adapter(std::path::Path::new(dir))?.config),
        None => setup::adapter_config(config, model)?,
    };
    Ok(match adapter {
        Some(PeftConfig::Lora(lora)) => {
            let matcher = ModuleMatcher::new(&lora)?;
            check_targets_exist(&matcher, &lora, model)?;
            Some(AdapterMatcher::Lora(matcher))
        }
        Some(PeftConfig::Ia3(ia3)) => Some(AdapterMatcher::Ia3(ia3.matcher()?)),
        Some(PeftConfig::Oft(oft)) => Some(AdapterMatcher::Oft(oft)),
        Some(PeftConfig::Adalora(ada)) => Some(AdapterMatcher::Adalora(ada)),
        Some(
            PeftConfig::Prompt(_)
            | PeftConfig::Adaption(_)
            | PeftConfig::Vera(_)
            | PeftConfig::Loha(_)
            | PeftConfig::Lokr(_),
        )
        | None => None,
    })
}

/// How `choose_base_storage` will hold the base, decided from the tensor table alone.
fn base_storage(
    config: &SftConfig,
    stored: &HashMap<String, (GgmlType, u64)>,
    available: Option<u64>,
) -> BaseStorage {
    if let Some(to) = config.base_quantization() {
        return if quantize::is_quantized(stored) {
            BaseStorage::AsStored
        } else {
            BaseStorage::Quantized(to)
        };
    }
    if setup::mixed_precision(config) {
        return BaseStorage::AsStored;
    }
    let expansion = setup::f32_expansion(stored.values().copied());
    if setup::expansion_fits(expansion, available) {
        BaseStorage::F32
    } else {
        BaseStorage::AsStored
    }
}

/// Tokens of the largest training micro-batch among the steps the run takes, and of the largest
/// evaluation batch (0 when the run does not evaluate).
fn largest_batches(config: &SftConfig, rows: &Rows) -> Result<(usize, usize)> {
    let t = &config.train;
    // Prompt learning puts its virtual tokens before every row (one example each: no packing).
    let m = &config.method;
    let virtual_tokens = match m.finetuning_type.is_prompt_learning() {
        true => m.num_virtual_tokens as usize,
        false => 0,
    };
    let len = |r: &&Row| r.len() + virtual_tokens;
    let tokens = |batch: &[&Row]| {
        if super::pads_batches(config) {
            batch.len() * batch.iter().map(len).max().unwrap_or(0)
        } else {
            batch.iter().map(len).sum()
        }
    };
    // Preference runs batch items of two rows; KTO's second rows (its mismatched responses) only
    // go forward, as an evaluation batch does.
    let group = if rows.paired { 2 } else { 1 };
    let trained = if config.method.stage == Stage::Kto {
        1
    } else {
        group
    };
    let mut forward_only = 0;
    let plan = config.step_plan(rows.train.len() / group)?;
    let (batch_size, accumulation) = (
        t.per_device_train_batch_size as usize,
        t.gradient_accumulation_steps as usize,
    );
    let mut largest = 0;
    let mut steps = 0;
    'epochs: for epoch in 0..plan.epochs {
        let order = super::epoch_order(rows.train.len() / group, t.seed, epoch);
        for window in order.chunks(batch_size * accumulation) {
            if steps == plan.total_steps {
                break 'epochs;
            }
            for batch in window.chunks(batch_size) {
                let rows_of = |part: std::ops::Range<usize>| -> Vec<&Row> {
                    batch
                        .iter()
                        .flat_map(|&i| &rows.train[group * i + part.start..group * i + part.end])
                        .collect()
                };
                largest = largest.max(tokens(&rows_of(0..trained)));
                forward_only = forward_only.max(tokens(&rows_of(trained..group)));
            }
            steps += 1;
        }
    }
    let eval_batch = config.eval.per_device_eval_batch_size as usize;
    let evaluates = config.eval_interval(plan.total_steps).is_some();
    let eval = if evaluates {
        rows.val
            .chunks(group * eval_batch.max(1))
            .map(|b| b.iter().map(|r| len(&r)).sum())
            .max()
            .unwrap_or(0)
    } else {
        0
    };
    Ok((largest, eval.max(forward_only)))
}
