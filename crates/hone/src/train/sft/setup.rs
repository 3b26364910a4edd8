//! What a run needs before its first step besides its rows (`rows.rs`): the base model and
//! tokenizer, the chat template, and the model with its trainable tensors chosen by
//! `finetuning_type` (and a reward model's value head).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};

use crate::adapters::ia3::{self, Ia3Config};
use crate::adapters::{
    adaption, read_adapter, AdaloraConfig, Adapter, AdapterConfig, AdaptionConfig, InitLoraWeights,
    LohaConfig, LokrConfig, OftConfig, PeftConfig, TargetModules, VeraConfig,
};
use crate::chat::ChatTemplate;
use crate::io::names;
use crate::kernels::bf16::{self, Kernel};
use crate::model::layout::linear_module_names;
use crate::model::quantize::quantize_decoder_matrices;
use crate::model::{load_stored_weights, memory, Architecture, ModelConfig, StoredWeights, Weight};
use crate::quant::GgmlType;
use crate::tokenizer::Tokenizer;
use crate::train::adaption::Adaption;
use crate::train::config::templates::LLAMAFACTORY_TEMPLATES;
use crate::train::config::{CommaList, FinetuningType, SftConfig, Stage};
use crate::train::freeze::FreezeSelection;
use crate::train::ia3::Ia3Settings;
use crate::train::lora::LoraSettings;
use crate::train::model::{TrainModel, TrainableSpec};
use crate::train::rank_allocator::RankAllocator;
use crate::train::reward::ValueHead;

use super::prompt;

/// The chat template named by `template`: a Jinja file path, or (a LLaMA-Factory template name,
/// or unset) the model's own template, with a note when a name was given, since Hone renders with
/// the tokenizer's template rather than LLaMA-Factory's. A value that looks like a path but names
/// no file is an error (it would otherwise pass for a name); a name LLaMA-Factory does not have
/// gets the nearest ones in its note.
pub fn chat_template(
    config: &SftConfig,
    tokenizer: &Tokenizer,
) -> Result<(ChatTemplate, Option<String>)> {
    let (template, note) = base_chat_template(config, tokenizer)?;
    Ok(match config.data.enable_thinking {
        Some(thinking) => (template.with_kwarg("enable_thinking", thinking), note),
        None => (template, note),
    })
}

/// The template of [`chat_template`], before `enable_thinking`.
fn base_chat_template(
    config: &SftConfig,
    tokenizer: &Tokenizer,
) -> Result<(ChatTemplate, Option<String>)> {
    match config.data.template.as_deref() {
        Some(path) if Path::new(path).is_file() => {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("template: cannot read {path}"))?;
            let template = ChatTemplate::new(&source, tokenizer.bos_token(), tokenizer.eos_token())
                .with_context(|| format!("template: {path}"))?;
            Ok((template, None))
        }
        Some(path) if looks_like_a_path(path) => {
            bail!("template: {path}: no such file (a Jinja chat template file, or a template name)")
        }
        name => {
            let template = ChatTemplate::for_tokenizer(tokenizer)?;
            let note = name.map(|n| {
                let unknown = if LLAMAFACTORY_TEMPLATES.contains(&n) {
                    String::new()
                } else {
                    let nearest =
                        names::nearest(n, LLAMAFACTORY_TEMPLATES, names::SUGGESTIONS).join(", ");
                    format!(" (not one of LLaMA-Factory's template names; nearest: {nearest})")
                };
                format!(
                    "template: {n}{unknown}: using the model's own chat template (from its \
                     tokenizer files)"
                )
            });
            Ok((template, note))
        }
    }
}

/// A `template` value meant as a file: it has a directory part or a template file's extension.
fn looks_like_a_path(value: &str) -> bool {
    let path = Path::new(value);
    value.contains(['/', '\\'])
        || path
            .extension()
            .is_some_and(|e| ["jinja", "jinja2", "j2"].contains(&e.to_string_lossy().as_ref()))
}

/// The base model's parts, read from `model_name_or_path` with matrices in their stored type:
/// those that stay frozen are trained on as stored (a quantized GGUF base is QLoRA; a bf16 one
/// stays 16-bit), those that train are expanded to f32 when the model is built.
pub fn load_base(config: &SftConfig) -> Result<StoredWeights> {
    load_stored_weights(&config.model.model_name_or_path, &Device::Cpu)
}

/// Whether the run trains in bf16 mixed precision (`bf16: true`, or `fp16: true`, which CPUs
/// run as bf16).
pub fn mixed_precision(config: &SftConfig) -> bool {
    config.train.bf16 || config.train.fp16
}

/// The line that says which precision the products run in.
pub fn precision_note(config: &SftConfig) -> String {
    if !mixed_precision(config) {
        return "precision: f32 throughout (bf16: true for mixed precision)".into();
    }
    let products = match bf16::kernel() {
        Some(Kernel::Amx) => "on the CPU's AMX bf16 tiles",
        Some(Kernel::Avx512) => "on the CPU's AVX-512 BF16 dot products",
        None => "in f32 on the bf16 weights (this CPU has no fast bf16 products)",
    };
    let quantized = if config.model.quantization_bit.is_some() {
        " (the quantized base stays as stored)"
    } else {
        ""
    };
    format!(
        "precision: bf16 mixed: weight products read bf16 copies{quantized}, {products}; \
         trained tensors, norms, loss and AdamW stay f32"
    )
}

/// Decides how the frozen base is held, returning a note to show: with `quantization_bit`, a
/// quantized GGUF stays as stored (QLoRA on the file's own quantization) and any other base has
/// its decoder matrices quantized now; under bf16 mixed precision matrices stay in their stored
/// type (they become bf16 when the model is built, without an f32 copy of the whole), and they
/// also stay when their f32 expansion would not fit in memory; otherwise they are expanded to f32,
/// whose products ran about 1.35× faster than products on dequantized tiles (LoRA q,v on the
/// default model).
pub fn choose_base_storage(config: &SftConfig, base: &mut StoredWeights) -> Result<Option<String>> {
    let stored = base.weights.values().filter_map(|w| match w {
        Weight::Stored(m) => Some((m.ggml_type(), m.n_bytes() as u64)),
        Weight::F32(_) => None,
    });
    let (as_f32, as_stored) = f32_expansion(stored);
    if let Some(bits) = config.model.quantization_bit {
        let quantized = base
            .weights
            .values()
            .any(|w| matches!(w, Weight::Stored(m) if m.ggml_type().is_quantized()));
        if quantized {
            return Ok(Some(format!(
                "quantization_bit: {bits}: the frozen base is trained on as stored ({} MiB; its \
                 own quantization, not re-quantized)",
                as_stored >> 20
            )));
        }
        let to = config.base_quantization().expect("quantization_bit is set");
        let (before, after) =
            quantize_decoder_matrices(&mut base.weights, to).with_context(|| {
                format!("{}: quantization_bit: {bits}", base.source.path().display())
            })?;
        return Ok(Some(format!(
            "quantization_bit: {bits}: the decoder layers' matrices are quantized to {} at load \
             ({} MiB -> {} MiB); embeddings, the LM head and norms stay as loaded",
            to.describe(),
            before >> 20,
            after >> 20
        )));
    }
    if as_f32 == as_stored || mixed_precision(config) {
        return Ok(None);
    }
    if !expansion_fits((as_f32, as_stored), memory::available_bytes()) {
        return Ok(Some(format!(
            "the base as f32 would take {} MiB more than as stored, which does not fit: the frozen \
             matrices stay in their stored type ({} MiB), as with quantization_bit",
            (as_f32 - as_stored) >> 20,
            as_stored >> 20
        )));
    }
    for w in base.weights.values_mut() {
        if let Weight::Stored(m) = w {
            let t = Tensor::from_vec(m.to_f32(), (m.rows(), m.cols()), &Device::Cpu)?;
            *w = Weight::F32(t);
        }
    }
    Ok(None)
}

/// Bytes that matrices stored in other types than f32 take as stored, and would take as f32.
pub(super) fn f32_expansion(tensors: impl Iterator<Item = (GgmlType, u64)>) -> (u64, u64) {
    tensors
        .filter(|&(ty, _)| ty != GgmlType::F32)
        .fold((0, 0), |(f32, stored), (ty, bytes)| {
            let elements = bytes / ty.type_size() as u64 * ty.block_size() as u64;
            (f32 + 4 * elements, stored + bytes)
        })
}

/// Whether expanding matrices to f32 (`f32_expansion`) leaves room, with a 2× margin, in the
/// memory `available`.
pub(super) fn expansion_fits((as_f32, as_stored): (u64, u64), available: Option<u64>) -> bool {
    available.is_none_or(|a| (as_f32 - as_stored) * 2 < a)
}

/// The tensors a freeze run trains in a model of `layers` decoder layers.
pub(super) fn freeze_selection(config: &SftConfig, layers: usize) -> Result<FreezeSelection> {
    let m = &config.method;
    let extra = m
        .freeze_extra_modules
        .as_ref()
        .map(|e| e.items().to_vec())
        .unwrap_or_default();
    FreezeSelection::new(
        layers,
        m.freeze_trainable_layers,
        m.freeze_trainable_modules.items(),
        &extra,
    )
}

/// The PEFT config of the adapter a LoRA or IA3 run trains (None for full and freeze runs).
pub fn adapter_config(config: &SftConfig, model: &ModelConfig) -> Result<Option<PeftConfig>> {
    let mut peft = match config.method.finetuning_type {
        FinetuningType::Lora => Some(PeftConfig::Lora(lora_config(config, model))),
        FinetuningType::Ia3 => Some(PeftConfig::Ia3(ia3_config(config, model)?)),
        FinetuningType::PromptTuning | FinetuningType::PTuning | FinetuningType::Prefix => {
            let method = prompt::method(config.method.finetuning_type).expect("a prompt method");
            Some(PeftConfig::Prompt(prompt::prompt_config(
                config, model, method,
            )))
        }
        FinetuningType::Vera => {
            let m = &config.method;
            let targets = match &m.target_modules {
                Some(list) => list.items().to_vec(),
                None => vec!["q_proj".into(), "v_proj".into()],
            };
            let mut vera = VeraConfig::new(m.lora_rank as usize, targets, m.vera_dropout);
            vera.d_initial = m.d_initial;
            vera.projection_prng_key = m.projection_prng_key;
            Some(PeftConfig::Vera(vera))
        }
        FinetuningType::Loha => {
            let m = &config.method;
            let targets = match &m.target_modules {
                Some(list) => list.items().to_vec(),
                None => vec!["q_proj".into(), "v_proj".into()],
            };
            let alpha = f64::from(config.lora_alpha());
            Some(PeftConfig::Loha(LohaConfig::new(
                m.lora_rank as usize,
                alpha,
                targets,
            )))
        }
        FinetuningType::Lokr => {
            let m = &config.method;
            let targets = match &m.target_modules {
                Some(list) => list.items().to_vec(),
                None => vec!["q_proj".into(), "v_proj".into()],
            };
            let alpha = f64::from(config.lora_alpha());
            let mut lokr = LokrConfig::new(m.lora_rank as usize, alpha, targets);
            lokr.decompose_both = m.decompose_both;
            lokr.decompose_factor = m.decompose_factor;
            Some(PeftConfig::Lokr(lokr))
        }
        FinetuningType::Adalora => {
            let m = &config.method;
            let targets = match &m.target_modules {
                Some(list) => list.items().to_vec(),
                None => vec!["q_proj".into(), "v_proj".into()],
            };
            let alpha = f64::from(config.lora_alpha());
            let mut ada =
                AdaloraConfig::new(m.init_r as usize, m.target_r as usize, alpha, targets);
            ada.lora_dropout = m.lora_dropout;
            (ada.tinit, ada.tfinal, ada.delta_t) = (m.tinit, m.tfinal, m.delta_t);
            (ada.beta1, ada.beta2) = (m.beta1, m.beta2);
            ada.orth_reg_weight = m.orth_reg_weight;
            ada.total_step = m.total_step;
            Some(PeftConfig::Adalora(ada))
        }
        FinetuningType::Oft => Some(PeftConfig::Oft(oft_config(config, model))),
        FinetuningType::AdaptionPrompt => {
            let layers = adaption_layers(config, model)?;
            let peft = AdaptionConfig::new(config.method.adapter_len as usize, layers);
            Some(PeftConfig::Adaption(peft))
        }
        FinetuningType::Full | FinetuningType::Freeze => None,
    };
    if let Some(peft) = &mut peft {
        peft.common_mut().base_model_name_or_path = Some(config.model.model_name_or_path.clone());
    }
    Ok(peft)
}

/// The base model with nothing of it trained, for the methods attached after it is built (prompt
/// learning, VeRA, LLaMA-Adapter), and its tokenizer.
fn frozen_model(base: StoredWeights) -> Result<(TrainModel, Tokenizer)> {
    let spec = TrainableSpec {
        base: &|_| false,
        lora: None,
        ia3: None,
    };
    let model = TrainModel::from_stored(base.config, base.weights, &spec, None)?;
    Ok((model, base.tokenizer))
}

/// The config an adapter run saves: that of the adapter it continues, else its own.
fn saved_config(
    config: &SftConfig,
    model: &ModelConfig,
    start: Option<&Adapter>,
) -> Result<PeftConfig> {
    Ok(match start {
        Some(a) => a.config.clone(),
        None => adapter_config(config, model)?.expect("an adapter run"),
    })
}

/// The prompts and gates of a LLaMA-Adapter adapter a run continues, bottom layer first, checked
/// to fit `cfg` (its top `layers` layers, `len` tokens of the hidden width each).
fn continued_adaption(
    adapter: &Adapter,
    cfg: &ModelConfig,
    (len, layers): (usize, usize),
) -> Result<Vec<(Vec<f32>, f32)>> {
    let first = cfg.num_hidden_layers.checked_sub(layers).ok_or_else(|| {
        anyhow!(
            "adapter_name_or_path: adapter_layers {layers}, but the model has {} layers",
            cfg.num_hidden_layers
        )
    })?;
    (first..cfg.num_hidden_layers)
        .map(|l| {
            let module = adaption::module(l);
            let p = adapter.adaption.get(&module).with_context(|| {
                format!("adapter_name_or_path: no prompt for {module} (PEFT adapts the top adapter_layers layers)")
            })?;
            if p.prompt.len() != len * cfg.hidden_size {
                bail!(
                    "adapter_name_or_path: {module}'s prompt is not [{len}, {}] (adapter_len, the hidden size)",
                    cfg.hidden_size
                );
            }
            Ok((p.prompt.clone(), p.gate))
        })
        .collect()
}

/// How many of the top layers a LLaMA-Adapter run adapts (`adapter_layers`, else all), after
/// checking the model is one PEFT's LLaMA-Adapter runs: Llama or Mistral, whose heads fill the
/// hidden width (PEFT counts the key/value heads as `k_proj`'s in over out features).
fn adaption_layers(config: &SftConfig, model: &ModelConfig) -> Result<usize> {
    let layers = config
        .method
        .adapter_layers
        .map_or(model.num_hidden_layers, |n| n as usize);
    if !matches!(
        model.architecture,
        Architecture::Llama | Architecture::Mistral
    ) {
        bail!(
            "finetuning_type: adaption_prompt runs on Llama and Mistral models, as PEFT's LLaMA-Adapter does (this \
             model is {:?})",
            model.architecture
        );
    }
    if model.num_attention_heads * model.head_dim != model.hidden_size {
        bail!(
            "finetuning_type: adaption_prompt needs heads × head_dim = hidden size, as PEFT's LLaMA-Adapter assumes \
             ({} × {} ≠ {})",
            model.num_attention_heads,
            model.head_dim,
            model.hidden_size
        );
    }
    if layers == 0 || layers > model.num_hidden_layers {
        bail!(
            "adapter_layers: {layers}, but the model has {} layers",
            model.num_hidden_layers
        );
    }
    Ok(layers)
}

/// An IA3 run's config: `target_modules` and `feedforward_modules`, or PEFT's defaults for the
/// family (PEFT has none for some: then the targets must be given).
fn ia3_config(config: &SftConfig, model: &ModelConfig) -> Result<Ia3Config> {
    let m = &config.method;
    let defaults = ia3::default_modules(model);
    let list = |given: &Option<CommaList>, default: Option<Vec<String>>, key: &str| {
        match (given, default) {
            (Some(list), _) => Ok(list.items().to_vec()),
            (None, Some(default)) => Ok(default),
            (None, None) => Err(anyhow!(
                "{key}: required for {} models (PEFT has no IA3 default for them); name the model's linear layers, \
                 e.g. {}",
                model.architecture.model_type(),
                linear_module_names(model).join(",")
            )),
        }
    };
    let targets = list(
        &m.target_modules,
        defaults.clone().map(|d| d.0),
        "target_modules",
    )?;
    let feedforward = match &m.feedforward_modules {
        None if m.target_modules.is_some() => {
            let default = defaults.map(|d| d.1).unwrap_or_default();
            default
                .into_iter()
                .filter(|f| targets.contains(f))
                .collect()
        }
        given => list(given, defaults.map(|d| d.1), "feedforward_modules")?,
    };
    Ok(Ia3Config::new(targets, feedforward))
}

/// A LoRA run's config.
/// OFT's PEFT config from LLaMA-Factory's keys (targets: `lora_target`, as LLaMA-Factory builds
/// it) and PEFT's.
fn oft_config(config: &SftConfig, model: &ModelConfig) -> OftConfig {
    let m = &config.method;
    let targets = config.lora_target_modules(model);
    let block_size = match (m.oft_rank, m.oft_block_size) {
        (_, Some(b)) => b as usize,
        (0, None) => 32,
        (_, None) => 0,
    };
    let mut oft = OftConfig::new(
        m.oft_rank as usize,
        block_size,
        targets.into_iter().map(String::from).collect(),
    );
    oft.module_dropout = m.module_dropout;
    oft.use_cayley_neumann = m.use_cayley_neumann;
    oft.num_cayley_neumann_terms = m.num_cayley_neumann_terms as usize;
    oft.block_share = m.block_share;
    oft.coft = m.coft;
    oft.eps = m.eps;
    oft
}

fn lora_config(config: &SftConfig, model: &ModelConfig) -> AdapterConfig {
    let m = &config.method;
    let targets = config.lora_target_modules(model);
    // A multimodal base's vision tower has layers of the same names (SigLIP's q_proj, …): the
    // targets exclude it, as LLaMA-Factory's do with the vision tower frozen.
    let targets = match model.wrapper {
        Some(_) => TargetModules::Regex(format!(
            "^(?!.*(?:vision_tower|multi_modal_projector)).*\\.(?:{})$",
            targets.join("|")
        )),
        None => TargetModules::Names(targets.into_iter().map(String::from).collect()),
    };
    let mut adapter = AdapterConfig::new(
        m.lora_rank as usize,
        f64::from(config.lora_alpha()),
        targets,
    );
    adapter.lora_dropout = m.lora_dropout;
    adapter.use_rslora = m.use_rslora;
    adapter.use_dora = m.use_dora;
    if m.pissa_init {
        let name = match m.pissa_iter {
            -1 => "pissa".to_string(),
            n => format!("pissa_niter_{n}"),
        };
        adapter.init_lora_weights = InitLoraWeights::Method(name);
    } else if let Some(init) = &m.init_lora_weights {
        adapter.init_lora_weights = InitLoraWeights::Method(init.clone());
    }
    adapter
}

/// The training model: which tensors train follows `finetuning_type`; a LoRA or IA3 run starts
/// from `adapter_name_or_path` when given (its own config then decides targets, rank and alpha).
/// Under mixed precision the products switch to bf16; full and freeze runs, which save the whole
/// model, keep the frozen weights' own values beside their bf16 copies.
pub fn build_model(
    config: &SftConfig,
    base: StoredWeights,
) -> Result<(TrainModel, Option<PeftConfig>)> {
    let (mut model, adapter) = build_base_model(config, base)?;
    if mixed_precision(config) {
        let adapter_run = config.method.finetuning_type.is_adapter();
        model.use_bf16(config.model.quantization_bit.is_some(), !adapter_run);
    }
    Ok((model, adapter))
}

/// An AdaLoRA run's rank allocator over the `total_steps` the run takes (or the config's
/// `total_step`, which the saved config records either way, as PEFT requires); other runs pass
/// through.
pub fn start_rank_allocator(
    model: &mut TrainModel,
    adapter: Option<PeftConfig>,
    total_steps: u64,
) -> Result<Option<PeftConfig>> {
    let Some(PeftConfig::Adalora(mut config)) = adapter else {
        return Ok(adapter);
    };
    let total = *config.total_step.get_or_insert(total_steps);
    config.check_schedule(total)?;
    let allocator = RankAllocator::new(&config, total, &model.adalora_parts());
    model.rank_allocator = Some(allocator);
    Ok(Some(PeftConfig::Adalora(config)))
}

/// Gives a reward model (`stage: rm`) its value head: the one saved beside the adapter the run
/// continues (or else beside the model), as LLaMA-Factory reloads it, or a new one. Returns a
/// line saying which.
pub fn attach_value_head(config: &SftConfig, model: &mut TrainModel) -> Result<Option<String>> {
    if config.method.stage != Stage::Rm {
        return Ok(None);
    }
    let m = &config.model;
    let dir = m
        .adapter_name_or_path
        .as_deref()
        .unwrap_or(&m.model_name_or_path);
    let hidden = model.config().hidden_size;
    let (head, note) = match ValueHead::load(Path::new(dir), hidden)? {
        Some(head) => (head, format!("value head: loaded from {dir}")),
        None => (
            ValueHead::new(hidden, config.train.seed),
            format!(
                "value head: new, Linear({hidden}, 1) (scores each response at its last token)"
            ),
        ),
    };
    model.value_head = Some(head);
    Ok(Some(note))
}

/// The adapter an adapter run continues (`adapter_name_or_path`), checked to be of the run's
/// method.
fn starting_adapter(config: &SftConfig) -> Result<Option<Adapter>> {
    let Some(dir) = config.model.adapter_name_or_path.as_deref() else {
        return Ok(None);
    };
    let adapter = read_adapter(Path::new(dir))?;
    let m = &config.method;
    let wanted = match m.finetuning_type {
        FinetuningType::Ia3 => "IA3",
        FinetuningType::PromptTuning => "prompt tuning",
        FinetuningType::PTuning => "P-tuning",
        FinetuningType::Prefix => "prefix tuning",
        FinetuningType::AdaptionPrompt => "LLaMA-Adapter",
        FinetuningType::Vera => "VeRA",
        FinetuningType::Loha => "LoHa",
        FinetuningType::Lokr => "LoKr",
        FinetuningType::Oft => "OFT",
        FinetuningType::Adalora => "AdaLoRA",
        _ if m.use_dora => "DoRA",
        _ => "LoRA",
    };
    if adapter.config.method() != wanted {
        bail!(
            "adapter_name_or_path: it holds a {} adapter but this run trains {wanted} (finetuning_type, use_dora); a \
             run continues the adapter it starts from",
            adapter.config.method()
        );
    }
    Ok(Some(adapter))
}

fn build_base_model(
    config: &SftConfig,
    base: StoredWeights,
) -> Result<(TrainModel, Option<PeftConfig>)> {
    let m = &config.method;
    let seed = config.train.seed;
    match m.finetuning_type {
        FinetuningType::Lora | FinetuningType::Ia3 => {
            let start = starting_adapter(config)?;
            // The starting adapter's own config decides targets, rank and alpha.
            let peft = saved_config(config, &base.config, start.as_ref())?;
            match peft {
                PeftConfig::Prompt(_)
                | PeftConfig::Adaption(_)
                | PeftConfig::Vera(_)
                | PeftConfig::Loha(_)
                | PeftConfig::Lokr(_)
                | PeftConfig::Oft(_)
                | PeftConfig::Adalora(_) => unreachable!("a LoRA or IA3 run's adapter"),
                PeftConfig::Lora(mut lora) => {
                    lora.lora_dropout = m.lora_dropout;
                    let mut trained = lora.clone();
                    if m.stage == Stage::Dpo {
                        // TRL and LLaMA-Factory disable dropout in preference runs (the saved
                        // config keeps the value, as theirs do).
                        trained.lora_dropout = 0.0;
                    }
                    let settings = LoraSettings::new(trained, seed)?;
                    let base_trains = |name: &str| settings.trains_base(name);
                    let spec = TrainableSpec {
                        base: &base_trains,
                        lora: Some(&settings),
                        ia3: None,
                    };
                    let model =
                        TrainModel::from_stored(base.config, base.weights, &spec, start.as_ref())?;
                    Ok((model, Some(PeftConfig::Lora(lora))))
                }
                PeftConfig::Ia3(ia3) => {
                    let settings = Ia3Settings::new(ia3.clone())?;
                    let spec = TrainableSpec {
                        base: &|_| false,
                        lora: None,
                        ia3: Some(&settings),
                    };
                    let model =
                        TrainModel::from_stored(base.config, base.weights, &spec, start.as_ref())?;
                    Ok((model, Some(PeftConfig::Ia3(ia3))))
                }
            }
        }
        FinetuningType::PromptTuning | FinetuningType::PTuning | FinetuningType::Prefix => {
            let start = starting_adapter(config)?;
            let peft = adapter_config(config, &base.config)?.expect("a prompt-learning run");
            let (mut model, tokenizer) = frozen_model(base)?;
            prompt::attach(config, &mut model, &tokenizer, start.as_ref())?;
            Ok((model, Some(peft)))
        }
        FinetuningType::Vera => {
            let start = starting_adapter(config)?;
            let peft = saved_config(config, &base.config, start.as_ref())?;
            let PeftConfig::Vera(vera) = &peft else {
                unreachable!("a VeRA run's adapter");
            };
            let (mut model, _) = frozen_model(base)?;
            let shared = start.as_ref().and_then(|a| a.vera.as_ref());
            let seed = vera.projection_prng_key ^ seed;
            crate::train::vera::attach(&mut model, vera, shared, seed)?;
            Ok((model, Some(peft)))
        }
        FinetuningType::Loha => {
            let start = starting_adapter(config)?;
            let peft = saved_config(config, &base.config, start.as_ref())?;
            let PeftConfig::Loha(loha) = &peft else {
                unreachable!("a LoHa run's adapter");
            };
            let (mut model, _) = frozen_model(base)?;
            crate::train::loha::attach(&mut model, loha, start.as_ref(), seed)?;
            Ok((model, Some(peft)))
        }
        FinetuningType::Lokr => {
            let start = starting_adapter(config)?;
            let peft = saved_config(config, &base.config, start.as_ref())?;
            let PeftConfig::Lokr(lokr) = &peft else {
                unreachable!("a LoKr run's adapter");
            };
            let (mut model, _) = frozen_model(base)?;
            crate::train::lokr::attach(&mut model, lokr, start.as_ref(), seed)?;
            Ok((model, Some(peft)))
        }
        FinetuningType::Adalora => {
            let start = starting_adapter(config)?;
            let peft = saved_config(config, &base.config, start.as_ref())?;
            let PeftConfig::Adalora(ada) = &peft else {
                unreachable!("an AdaLoRA run's adapter");
            };
            let (mut model, _) = frozen_model(base)?;
            crate::train::adalora::attach(&mut model, ada, start.as_ref(), seed)?;
            Ok((model, Some(peft)))
        }
        FinetuningType::Oft => {
            let start = starting_adapter(config)?;
            let peft = saved_config(config, &base.config, start.as_ref())?;
            let PeftConfig::Oft(oft) = &peft else {
                unreachable!("an OFT run's adapter");
            };
            let (mut model, _) = frozen_model(base)?;
            crate::train::oft::attach(&mut model, oft, start.as_ref())?;
            Ok((model, Some(peft)))
        }
        FinetuningType::AdaptionPrompt => {
            let start = starting_adapter(config)?;
            let peft = saved_config(config, &base.config, start.as_ref())?;
            let PeftConfig::Adaption(ap) = &peft else {
                unreachable!("a LLaMA-Adapter run's adapter");
            };
            let shape = (ap.adapter_len(), ap.adapter_layers());
            let (mut model, _) = frozen_model(base)?;
            let cfg = model.config();
            let prompts = start
                .map(|a| continued_adaption(&a, cfg, shape))
                .transpose()?;
            model.adaption = Some(Adaption::new(cfg, shape, prompts, seed));
            Ok((model, Some(peft)))
        }
        FinetuningType::Full => {
            let spec = TrainableSpec {
                base: &|_| true,
                lora: None,
                ia3: None,
            };
            Ok((
                TrainModel::from_stored(base.config, base.weights, &spec, None)?,
                None,
            ))
        }
        FinetuningType::Freeze => {
            let selection = freeze_selection(config, base.config.num_hidden_layers)?;
            let trains = |name: &str| selection.trains(name);
            let spec = TrainableSpec {
                base: &trains,
                lora: None,
                ia3: None,
            };
            Ok((
                TrainModel::from_stored(base.config, base.weights, &spec, None)?,
                None,
            ))
        }
    }
}
