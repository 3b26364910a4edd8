//! Whole-model gradient parity of the training engine against transformers + PEFT (fixtures from
//! `scripts/golden/train_grads.py`, float64 references): loss, logits of the adapted model, and
//! the gradient of every trainable tensor, for LoRA (every tiny architecture, with and without
//! prompt masking, biases, rsLoRA), DoRA, full fine-tuning, freezing, a slice of the real default
//! model (its Q4_1 weights expanded to f32, and kept as stored: QLoRA), recomputed activations,
//! and three AdamW steps. Errors are max|ours − ref| / max|ref| per tensor.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use candle_core::{DType, Device, Tensor};
use hone::adapters::{
    lokr::Factor, AdaloraConfig, AdaloraWeights, Adapter, AdapterConfig, AdaptionConfig, Bias,
    Ia3Config, Ia3Vector, InitLoraWeights, LohaConfig, LohaWeights, LokrConfig, LokrWeights,
    LoraWeights, OftConfig, OftWeights, PeftConfig, PromptConfig, PromptMethod, TargetModules,
    VeraConfig, VeraWeights,
};
use hone::data::{collate, flatten, Batch, Example, Row};
use hone::io::source::ModelSource;
use hone::model::norm::Tensor1;
use hone::model::quantize::{quantize_decoder_matrices, BaseQuantization};
use hone::model::{weights, Llama, ModelConfig, Weight};
use hone::quant::bnb::FourBit;
use hone::train::adalora::Adalora;
use hone::train::adaption::Adaption;
use hone::train::config::PrefLoss;
use hone::train::dpo::{self, loss::PreferenceLoss};
use hone::train::groups::param_groups;
use hone::train::ia3::Ia3Settings;
use hone::train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use hone::train::prompt::VirtualPrompt;
use hone::train::rank_allocator::RankAllocator;
use hone::train::reward::{self, ValueHead};
use hone::train::{LoraSettings, TrainModel, TrainableSpec};
use serde_json::Value;

struct Case {
    tensors: HashMap<String, Tensor>,
    meta: Value,
}

fn read_case(name: &str) -> Case {
    let path = common::fixture(&format!("train/{name}.safetensors"));
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap()["case"].clone();
    Case {
        tensors: common::load_tensors(&path),
        meta: serde_json::from_str(&meta).unwrap(),
    }
}

fn f32s(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn rel_err(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let diff = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max);
    let scale = reference
        .iter()
        .map(|b| f64::from(b.abs()))
        .fold(0.0, f64::max);
    diff / scale.max(1e-30)
}

fn batch(case: &Case) -> Batch {
    let ids = &case.tensors["input_ids"];
    let (b, t) = ids.dims2().unwrap();
    let ids: Vec<i64> = ids.flatten_all().unwrap().to_vec1().unwrap();
    Batch {
        batch: b,
        seq: t,
        input_ids: ids.iter().map(|&i| i as u32).collect(),
        labels: case.tensors["labels"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap(),
        position_ids: (0..b).flat_map(|_| 0..t as u32).collect(),
        segment_ids: None,
    }
}

/// How the engine holds the base and its activations in a run.
#[derive(Clone, Copy, Debug, Default)]
struct Variant {
    /// Matrices as `load_stored` keeps them (the default model's Q4_1), not expanded to f32.
    stored: bool,
    /// Gradient checkpointing.
    recompute: bool,
    /// bf16 mixed precision (`bf16: true`): products on bf16 weights and activations.
    bf16: bool,
}

impl Variant {
    /// Relative error allowed against the f32 reference (loss, then logits and gradients):
    /// rounding to bf16 (8 significant bits) moves each operand by up to 0.2%, and the tiny
    /// models' gradients, sums of few terms that partly cancel, move by up to 3.1% (measured).
    fn tolerance(self) -> (f64, f64) {
        if self.bf16 {
            (1e-2, 5e-2)
        } else {
            (1e-5, 1e-4)
        }
    }
}

/// Config and weights of the case's model: a tiny fixture model, or the first layers of the
/// default model (None when it is absent).
fn base_model(case: &Case, variant: Variant) -> Option<(ModelConfig, HashMap<String, Weight>)> {
    let model = case.meta["model"].as_str().unwrap();
    let source = if model == "default" {
        ModelSource::Gguf(common::real_model("SmolLM2-135M-Instruct.Q4_1.gguf")?)
    } else {
        ModelSource::HfDir(common::fixture(&format!("models/{model}")))
    };
    let (mut cfg, w) = if variant.stored {
        weights::load_stored(&source, &Device::Cpu).unwrap()
    } else {
        let (cfg, w) = weights::load(&source, &Device::Cpu).unwrap();
        (
            cfg,
            w.into_iter().map(|(n, t)| (n, Weight::F32(t))).collect(),
        )
    };
    if let Some(layers) = case.meta["layers"].as_u64() {
        cfg.num_hidden_layers = layers as usize;
    }
    let mut w = w;
    if let Some(q) = case.meta.get("quantization") {
        quantize_decoder_matrices(&mut w, base_quantization(q)).unwrap();
    }
    Some((cfg, w))
}

/// The case's `quantization`: bitsandbytes' 4-bit type and whether the absmax is quantized too.
fn base_quantization(q: &Value) -> BaseQuantization {
    let ty = match q["type"].as_str().unwrap() {
        "nf4" => FourBit::Nf4,
        "fp4" => FourBit::Fp4,
        other => panic!("quantization type {other}"),
    };
    BaseQuantization::FourBit {
        ty,
        double: q["double"].as_bool().unwrap(),
    }
}

fn lora_settings(meta: &Value) -> LoraSettings {
    let targets = match &meta["targets"] {
        Value::String(s) => TargetModules::Regex(s.clone()),
        Value::Array(names) => {
            TargetModules::Names(names.iter().map(|n| n.as_str().unwrap().into()).collect())
        }
        other => panic!("targets {other}"),
    };
    let r = meta["r"].as_u64().unwrap() as usize;
    let mut config = AdapterConfig::new(r, meta["alpha"].as_f64().unwrap(), targets);
    config.use_rslora = meta["use_rslora"].as_bool().unwrap_or(false);
    config.use_dora = meta["use_dora"].as_bool().unwrap_or(false);
    if let Some(init) = meta["init"].as_str() {
        config.init_lora_weights = InitLoraWeights::Method(init.into());
    }
    config.bias = match meta["bias"].as_str().unwrap_or("none") {
        "none" => Bias::None,
        "all" => Bias::All,
        "lora_only" => Bias::LoraOnly,
        other => panic!("bias {other}"),
    };
    LoraSettings::new(config, 0).unwrap()
}

/// The LoRA A/B pairs (and DoRA magnitudes) the case starts from (`init.<module>.lora_A.weight`),
/// as an adapter.
fn initial_adapter(case: &Case, settings: &LoraSettings) -> Adapter {
    let mut modules = BTreeMap::new();
    for (name, a) in &case.tensors {
        let Some(module) = name
            .strip_prefix("init.")
            .and_then(|n| n.strip_suffix(".lora_A.weight"))
        else {
            continue;
        };
        let b = &case.tensors[&format!("init.{module}.lora_B.weight")];
        let ((r, in_features), (out_features, _)) = (a.dims2().unwrap(), b.dims2().unwrap());
        let weights = LoraWeights {
            a: f32s(a),
            b: f32s(b),
            r,
            in_features,
            out_features,
            scale: settings.matcher.scale(module).unwrap(),
            magnitude: case
                .tensors
                .get(&format!("init.{module}.lora_magnitude_vector"))
                .map(f32s),
        };
        modules.insert(module.to_string(), weights);
    }
    Adapter {
        config: PeftConfig::Lora(settings.config.clone()),
        modules,
        scales: BTreeMap::new(),
        biases: BTreeMap::new(),
        prompt: None,
        adaption: BTreeMap::new(),
        vera: None,
        loha: Default::default(),
        lokr: Default::default(),
        oft: Default::default(),
        adalora: Default::default(),
    }
}

/// The IA3 settings of the case (`targets`, `feedforward`) and the vectors it starts from
/// (`init.<module>.ia3_l`: `[1, in]` scales inputs, `[out, 1]` outputs), as an adapter.
fn initial_ia3(case: &Case) -> (Ia3Settings, Adapter) {
    let names = |key: &str| -> Vec<String> {
        let list = case.meta[key].as_array().unwrap();
        list.iter().map(|n| n.as_str().unwrap().into()).collect()
    };
    let config = Ia3Config::new(names("targets"), names("feedforward"));
    let scales = case
        .tensors
        .iter()
        .filter_map(|(name, t)| {
            let module = name.strip_prefix("init.")?.strip_suffix(".ia3_l")?;
            let vector = Ia3Vector {
                values: f32s(t),
                feedforward: t.dims()[0] == 1,
            };
            Some((module.to_string(), vector))
        })
        .collect();
    let adapter = Adapter {
        config: PeftConfig::Ia3(config.clone()),
        modules: BTreeMap::new(),
        scales,
        biases: BTreeMap::new(),
        prompt: None,
        adaption: BTreeMap::new(),
        vera: None,
        loha: Default::default(),
        lokr: Default::default(),
        oft: Default::default(),
        adalora: Default::default(),
    };
    (Ia3Settings::new(config).unwrap(), adapter)
}

fn build(case: &Case, cfg: ModelConfig, w: HashMap<String, Weight>) -> TrainModel {
    let meta = &case.meta;
    match meta["method"].as_str().unwrap() {
        "lora" => {
            let settings = lora_settings(meta);
            let base = |name: &str| settings.trains_base(name);
            let spec = TrainableSpec {
                base: &base,
                lora: Some(&settings),
                ia3: None,
            };
            let adapter = initial_adapter(case, &settings);
            TrainModel::from_stored(cfg, w, &spec, Some(&adapter)).unwrap()
        }
        "ia3" => {
            let (settings, adapter) = initial_ia3(case);
            let spec = TrainableSpec {
                base: &|_| false,
                lora: None,
                ia3: Some(&settings),
            };
            TrainModel::from_stored(cfg, w, &spec, Some(&adapter)).unwrap()
        }
        "full" => TrainModel::from_stored(
            cfg,
            w,
            &TrainableSpec {
                base: &|_| true,
                lora: None,
                ia3: None,
            },
            None,
        )
        .unwrap(),
        "freeze" => {
            let names: HashSet<String> = meta["trainable"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_string())
                .collect();
            let base = |name: &str| names.contains(name);
            TrainModel::from_stored(
                cfg,
                w,
                &TrainableSpec {
                    base: &base,
                    lora: None,
                    ia3: None,
                },
                None,
            )
            .unwrap()
        }
        method @ ("prompt_tuning" | "p_tuning" | "prefix" | "prefix_projection") => {
            let mut model = frozen_model(cfg, w);
            model.prompt = Some(initial_prompt(case, method, model.config()));
            model
        }
        "vera" => {
            let mut model = frozen_model(cfg, w);
            let (r, targets) = (meta_usize(case, "r"), string_list(&case.meta["targets"]));
            let config = VeraConfig::new(r, targets, 0.0);
            let start = vera_weights(case, r);
            hone::train::vera::attach(&mut model, &config, Some(&start), 0).unwrap();
            model
        }
        "loha" => {
            let mut model = frozen_model(cfg, w);
            let start = Adapter {
                loha: loha_weights(case),
                ..initial_adapter_of(PeftConfig::Loha(loha_config(case)))
            };
            hone::train::loha::attach(&mut model, &loha_config(case), Some(&start), 0).unwrap();
            model
        }
        "lokr" => {
            let mut model = frozen_model(cfg, w);
            let start = Adapter {
                lokr: lokr_weights(case),
                ..initial_adapter_of(PeftConfig::Lokr(lokr_config(case)))
            };
            hone::train::lokr::attach(&mut model, &lokr_config(case), Some(&start), 0).unwrap();
            model
        }
        "adalora" => {
            let mut model = frozen_model(cfg, w);
            let config = adalora_config(case);
            let start = Adapter {
                adalora: adalora_weights(case, &config),
                ..initial_adapter_of(PeftConfig::Adalora(config.clone()))
            };
            hone::train::adalora::attach(&mut model, &config, Some(&start), 0).unwrap();
            let total = config.total_step.unwrap();
            let parts = model.adalora_parts();
            model.rank_allocator = Some(RankAllocator::new(&config, total, &parts));
            model
        }
        "oft" => {
            let mut model = frozen_model(cfg, w);
            let start = Adapter {
                oft: oft_weights(case),
                ..initial_adapter_of(PeftConfig::Oft(oft_config(case)))
            };
            hone::train::oft::attach(&mut model, &oft_config(case), Some(&start)).unwrap();
            model
        }
        "adaption_prompt" => {
            let mut model = frozen_model(cfg, w);
            let cfg = model.config();
            let shape = (
                meta_usize(case, "adapter_len"),
                meta_usize(case, "adapter_layers"),
            );
            let first = cfg.num_hidden_layers - shape.1;
            let start = (first..cfg.num_hidden_layers)
                .map(|l| {
                    let init = |name: &str| {
                        f32s(&case.tensors[&format!("init.model.layers.{l}.self_attn.{name}")])
                    };
                    (init("adaption_prompt"), init("adaption_gate")[0])
                })
                .collect();
            model.adaption = Some(Adaption::new(cfg, shape, Some(start), 0));
            model
        }
        other => panic!("method {other}"),
    }
}

fn string_list(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// The case's VeRA projections and starting vectors.
fn vera_weights(case: &Case, r: usize) -> VeraWeights {
    let (a, b) = (&case.tensors["vera_A"], &case.tensors["vera_B"]);
    let lambdas = case
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("init.")?.strip_suffix(".vera_lambda_d"))
        .map(|module| {
            let init = |v: &str| f32s(&case.tensors[&format!("init.{module}.vera_lambda_{v}")]);
            (module.to_string(), (init("d"), init("b")))
        })
        .collect();
    VeraWeights {
        a: f32s(a),
        b: f32s(b),
        r,
        max_in: a.dims()[1],
        max_out: b.dims()[0],
        lambdas,
    }
}

/// The case's LoKr config (r, alpha, decompose_both, targets).
fn lokr_config(case: &Case) -> LokrConfig {
    let alpha = case.meta["alpha"].as_f64().unwrap();
    let targets = string_list(&case.meta["targets"]);
    let mut config = LokrConfig::new(meta_usize(case, "r"), alpha, targets);
    config.decompose_both = case.meta["decompose_both"].as_bool().unwrap();
    config
}

/// The case's starting LoKr factors, by module, after checking PEFT laid each out as
/// `LokrConfig::layout` says.
fn lokr_weights(case: &Case) -> BTreeMap<String, LokrWeights> {
    let config = lokr_config(case);
    let modules: BTreeSet<&str> = case
        .tensors
        .keys()
        .filter_map(|k| Some(k.strip_prefix("init.")?.rsplit_once(".lokr_")?.0))
        .collect();
    modules
        .into_iter()
        .map(|module| {
            let get = |name: &str| case.tensors.get(&format!("init.{module}.lokr_{name}"));
            let factor = |name: &str| -> (Factor, (usize, usize)) {
                match (
                    get(name),
                    get(&format!("{name}_a")),
                    get(&format!("{name}_b")),
                ) {
                    (Some(w), None, None) => (Factor::Whole(f32s(w)), w.dims2().unwrap()),
                    (None, Some(a), Some(b)) => {
                        let (rows, r) = a.dims2().unwrap();
                        let cols = b.dims2().unwrap().1;
                        let product = Factor::Product {
                            a: f32s(a),
                            b: f32s(b),
                            r,
                        };
                        (product, (rows, cols))
                    }
                    other => panic!("{module}: lokr_{name}: {other:?}"),
                }
            };
            let ((w1, (a, c)), (w2, (b, d))) = (factor("w1"), factor("w2"));
            let (dims, w1_whole, w2_whole) = config.layout(a * b, c * d);
            assert_eq!(dims, (a, b, c, d), "{module}: PEFT's factorization");
            assert_eq!(
                (w1_whole, w2_whole),
                (
                    matches!(w1, Factor::Whole(_)),
                    matches!(w2, Factor::Whole(_))
                ),
                "{module}: which factors PEFT keeps whole"
            );
            let weights = LokrWeights {
                w1,
                w2,
                dims,
                scale: config.scale(),
            };
            (module.to_string(), weights)
        })
        .collect()
}

/// The case's LoHa config (r, alpha, targets).
fn loha_config(case: &Case) -> LohaConfig {
    let alpha = case.meta["alpha"].as_f64().unwrap();
    let targets = string_list(&case.meta["targets"]);
    LohaConfig::new(meta_usize(case, "r"), alpha, targets)
}

/// The case's starting LoHa factors, by module.
fn loha_weights(case: &Case) -> BTreeMap<String, LohaWeights> {
    let config = loha_config(case);
    case.tensors
        .keys()
        .filter_map(|k| k.strip_prefix("init.")?.strip_suffix(".hada_w1_a"))
        .map(|module| {
            let init = |v: &str| &case.tensors[&format!("init.{module}.hada_{v}")];
            let (out, r) = init("w1_a").dims2().unwrap();
            let weights = LohaWeights {
                w1a: f32s(init("w1_a")),
                w1b: f32s(init("w1_b")),
                w2a: f32s(init("w2_a")),
                w2b: f32s(init("w2_b")),
                r,
                in_features: init("w1_b").dims2().unwrap().1,
                out_features: out,
                scale: config.scale(),
            };
            (module.to_string(), weights)
        })
        .collect()
}

/// An empty adapter of `config`.
fn adalora_config(case: &Case) -> AdaloraConfig {
    let targets = string_list(&case.meta["targets"]);
    let alpha = case.meta["lora_alpha"].as_f64().unwrap();
    let (init_r, target_r) = (meta_usize(case, "init_r"), meta_usize(case, "target_r"));
    let mut config = AdaloraConfig::new(init_r, target_r, alpha, targets);
    config.orth_reg_weight = case.meta["orth_reg_weight"].as_f64().unwrap();
    config.total_step = case.meta["total_step"].as_u64();
    config
}

/// The case's starting AdaLoRA triplets, by module.
fn adalora_weights(case: &Case, config: &AdaloraConfig) -> BTreeMap<String, AdaloraWeights> {
    let modules: BTreeSet<&str> = case
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("init.")?.strip_suffix(".lora_A"))
        .collect();
    modules
        .into_iter()
        .map(|module| {
            let get = |suffix: &str| &case.tensors[&format!("init.{module}.{suffix}")];
            let (r, in_features) = get("lora_A").dims2().unwrap();
            let weights = AdaloraWeights {
                a: f32s(get("lora_A")),
                e: f32s(get("lora_E")),
                b: f32s(get("lora_B")),
                r,
                in_features,
                out_features: get("lora_B").dims2().unwrap().0,
                scale: config.scale(),
            };
            (module.to_string(), weights)
        })
        .collect()
}

fn oft_config(case: &Case) -> OftConfig {
    let targets = string_list(&case.meta["targets"]);
    let b = meta_usize(case, "oft_block_size");
    let mut config = OftConfig::new(meta_usize(case, "r"), b, targets);
    config.use_cayley_neumann = case.meta["use_cayley_neumann"].as_bool().unwrap();
    config.num_cayley_neumann_terms = meta_usize(case, "num_cayley_neumann_terms");
    config.block_share = case.meta["block_share"].as_bool().unwrap();
    config
}

/// The case's starting OFT rotations, by module.
fn oft_weights(case: &Case) -> BTreeMap<String, OftWeights> {
    let config = oft_config(case);
    case.tensors
        .iter()
        .filter_map(|(k, t)| {
            let module = k.strip_prefix("init.")?.strip_suffix(".oft_R.weight")?;
            let (_, width) = t.dims2().unwrap();
            let weights = OftWeights {
                triangles: f32s(t),
                block_size: hone::adapters::oft::block_size_of(width).unwrap(),
                cayley: config.cayley(),
                coft: config.coft_eps(),
            };
            Some((module.to_string(), weights))
        })
        .collect()
}

fn initial_adapter_of(config: PeftConfig) -> Adapter {
    Adapter {
        config,
        modules: BTreeMap::new(),
        scales: BTreeMap::new(),
        biases: BTreeMap::new(),
        prompt: None,
        adaption: BTreeMap::new(),
        vera: None,
        loha: BTreeMap::new(),
        lokr: BTreeMap::new(),
        oft: BTreeMap::new(),
        adalora: BTreeMap::new(),
    }
}

fn meta_usize(case: &Case, key: &str) -> usize {
    case.meta[key].as_u64().unwrap() as usize
}

/// The case's base model with nothing of it trained, for the methods attached after it is built.
fn frozen_model(cfg: ModelConfig, w: HashMap<String, Weight>) -> TrainModel {
    let spec = TrainableSpec {
        base: &|_| false,
        lora: None,
        ia3: None,
    };
    TrainModel::from_stored(cfg, w, &spec, None).unwrap()
}

/// The case's virtual tokens (and encoder) as PEFT started them.
fn initial_prompt(case: &Case, method: &str, cfg: &ModelConfig) -> VirtualPrompt {
    let init = |name: &str| f32s(&case.tensors[&format!("init.prompt_encoder.{name}")]);
    let n = case.meta["num_virtual_tokens"].as_u64().unwrap() as usize;
    let encoder = case.meta["encoder_hidden_size"].as_u64().unwrap_or(0) as usize;
    let (d, kv) = (cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim);
    let table = cfg.num_hidden_layers * 2 * kv;
    let (method, width, widths) = match method {
        "p_tuning" => (PromptMethod::PTuning, d, vec![d, encoder, encoder, d]),
        "prefix" => (PromptMethod::PrefixTuning, table, vec![]),
        "prefix_projection" => (PromptMethod::PrefixTuning, kv, vec![kv, encoder, table]),
        _ => (PromptMethod::PromptTuning, d, vec![]),
    };
    let start = init("embedding.weight");
    let mut prompt = VirtualPrompt::new(method, start, (n, width), &widths, 0);
    let module = prompt.encoder_name();
    for (i, dense) in prompt.encoder.iter_mut().enumerate() {
        dense.weight.value = init(&format!("{module}.{}.weight", 2 * i));
        dense.bias.value = init(&format!("{module}.{}.bias", 2 * i));
    }
    prompt
}

/// The reference logits at the positions Hone's inference returns: a prompt-learning model's
/// (whose reference logits include the virtual tokens') at the real tokens only.
fn reference_logits(case: &Case, virtual_tokens: usize) -> Vec<f32> {
    let logits = &case.tensors["logits"];
    let (_, seq, _) = logits.dims3().unwrap();
    f32s(
        &logits
            .narrow(1, virtual_tokens, seq - virtual_tokens)
            .unwrap(),
    )
}

/// Logits of a prompt-learning model through the inference forward, its virtual tokens passed as
/// the adapter Hone saves.
fn prompted_logits(model: &TrainModel, ids: &Tensor) -> Tensor {
    let weights: HashMap<String, Tensor> = model
        .hf_tensors(false)
        .into_iter()
        .map(|(name, shape, data)| (name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap()))
        .collect();
    let p = model.prompt.as_ref().unwrap();
    let config = PromptConfig::new(p.method, p.n, model.config(), Default::default());
    let adapter = model.to_adapter(PeftConfig::Prompt(config));
    let llama = Llama::from_weights(model.config().clone(), weights, &Device::Cpu).unwrap();
    let llama = llama.with_prompt(&adapter).unwrap();
    llama
        .forward(&ids.to_dtype(DType::U32).unwrap(), None)
        .unwrap()
}

/// Logits of a VeRA or LoHa model through the inference forward, its adapter (as Hone saves it
/// with `config`) merged into the weights.
fn merged_adapter_logits(model: &TrainModel, ids: &Tensor, config: PeftConfig) -> Tensor {
    let mut weights: HashMap<String, Tensor> = model
        .hf_tensors(false)
        .into_iter()
        .map(|(name, shape, data)| (name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap()))
        .collect();
    let adapter = model.to_adapter(config);
    hone::adapters::merge(&mut weights, model.config(), &adapter).unwrap();
    let llama = Llama::from_weights(model.config().clone(), weights, &Device::Cpu).unwrap();
    llama
        .forward(&ids.to_dtype(DType::U32).unwrap(), None)
        .unwrap()
}

/// Logits of a LLaMA-Adapter model through the inference forward, its prompts passed as the
/// adapter Hone saves.
fn adapted_logits(model: &TrainModel, ids: &Tensor) -> Tensor {
    let weights: HashMap<String, Tensor> = model
        .hf_tensors(false)
        .into_iter()
        .map(|(name, shape, data)| (name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap()))
        .collect();
    let a = model.adaption.as_ref().unwrap();
    let config = AdaptionConfig::new(a.len, a.layers.len());
    let adapter = model.to_adapter(PeftConfig::Adaption(config));
    let llama = Llama::from_weights(model.config().clone(), weights, &Device::Cpu).unwrap();
    let llama = llama.with_prompt(&adapter).unwrap();
    llama
        .forward(&ids.to_dtype(DType::U32).unwrap(), None)
        .unwrap()
}

/// Logits of the adapted model: the training model's weights with LoRA merged, run through the
/// inference forward (so this also checks the merge).
fn merged_logits(model: &TrainModel, ids: &Tensor) -> Tensor {
    let weights: HashMap<String, Tensor> = model
        .hf_tensors(true)
        .into_iter()
        .map(|(name, shape, data)| (name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap()))
        .collect();
    // The references run in training mode, where Qwen v1 applies neither logn scaling nor dynamic
    // NTK (its inference does, past `seq_length`, which these 12-token rows pass).
    let cfg = ModelConfig {
        logn_attention: None,
        dynamic_ntk: None,
        ..model.config().clone()
    };
    let llama = Llama::from_weights(cfg, weights, &Device::Cpu).unwrap();
    llama
        .forward(&ids.to_dtype(DType::U32).unwrap(), None)
        .unwrap()
}

fn check_gradients(name: &str) {
    check_gradients_with(name, Variant::default());
}

fn check_gradients_with(name: &str, variant: Variant) {
    let case = read_case(name);
    let Some((cfg, w)) = base_model(&case, variant) else {
        return;
    };
    let mut model = build(&case, cfg, w);
    model.recompute = variant.recompute;
    if variant.bf16 {
        model.use_bf16(false, case.meta["method"] != "lora");
    }
    let (loss_tolerance, tolerance) = variant.tolerance();
    let batch = batch(&case);
    let scale = 1.0 / count_labels_shifted(&batch) as f32;
    let (loss_sum, count) = model.forward_backward(&batch, scale, 0).unwrap();
    // AdaLoRA's orthogonality penalty, which PEFT adds to the loss (0 for other methods).
    let loss = loss_sum / count as f64 + model.step_penalty();
    let want_loss = f32s(&case.tensors["loss"])[0];
    assert!(
        (loss - f64::from(want_loss)).abs() / f64::from(want_loss) < loss_tolerance,
        "{name}: loss {loss} vs {want_loss}"
    );

    let ids = &case.tensors["input_ids"];
    let (logits, want_logits) = match &model.prompt {
        _ if case.meta["method"] == "vera" => {
            let targets = string_list(&case.meta["targets"]);
            let config = PeftConfig::Vera(VeraConfig::new(4, targets, 0.0));
            (
                merged_adapter_logits(&model, ids, config),
                reference_logits(&case, 0),
            )
        }
        _ if case.meta["method"] == "lokr" => {
            let config = PeftConfig::Lokr(lokr_config(&case));
            (
                merged_adapter_logits(&model, ids, config),
                reference_logits(&case, 0),
            )
        }
        _ if case.meta["method"] == "adalora" => {
            let config = PeftConfig::Adalora(adalora_config(&case));
            (
                merged_adapter_logits(&model, ids, config),
                reference_logits(&case, 0),
            )
        }
        _ if case.meta["method"] == "oft" => {
            let config = PeftConfig::Oft(oft_config(&case));
            (
                merged_adapter_logits(&model, ids, config),
                reference_logits(&case, 0),
            )
        }
        _ if case.meta["method"] == "loha" => {
            let config = PeftConfig::Loha(loha_config(&case));
            (
                merged_adapter_logits(&model, ids, config),
                reference_logits(&case, 0),
            )
        }
        _ if model.adaption.is_some() => (adapted_logits(&model, ids), reference_logits(&case, 0)),
        Some(p) if p.is_prefix() => (prompted_logits(&model, ids), reference_logits(&case, 0)),
        Some(p) => (prompted_logits(&model, ids), reference_logits(&case, p.n)),
        None => (merged_logits(&model, ids), f32s(&case.tensors["logits"])),
    };
    let logits = f32s(&logits);
    let logits = match case.meta["logits_slice"].as_u64() {
        Some(k) => {
            let vocab = model.config().vocab_size;
            logits
                .chunks(vocab)
                .flat_map(|row| &row[..k as usize])
                .copied()
                .collect()
        }
        None => logits,
    };
    let logits_err = rel_err(&logits, &want_logits);
    assert!(
        logits_err < tolerance,
        "{name}: logits relative error {logits_err:e}"
    );

    let want: HashMap<&str, &Tensor> = case
        .tensors
        .iter()
        .filter_map(|(k, t)| k.strip_prefix("grad.").map(|n| (n, t)))
        .collect();
    let params = model.params_mut();
    let ours: HashSet<&str> = params.iter().map(|p| p.name.as_str()).collect();
    let theirs: HashSet<&str> = want.keys().copied().collect();
    assert_eq!(
        ours, theirs,
        "{name}: the trainable tensors differ from PEFT's"
    );
    let mut worst = 0f64;
    for p in &params {
        assert!(
            p.grad.iter().any(|&g| g != 0.0),
            "{name}: {} got no gradient",
            p.name
        );
        let err = rel_err(p.grad, &f32s(want[p.name.as_str()]));
        assert!(
            err < tolerance,
            "{name}: {} gradient relative error {err:e}",
            p.name
        );
        worst = worst.max(err);
    }
    eprintln!(
        "{name} {variant:?}: loss {loss:.6} (ref {want_loss}), logits rel err {logits_err:.1e}, \
         worst of {} gradients {worst:.1e}",
        params.len()
    );
}

/// Labels the loss counts: positions whose next-token label is kept.
fn count_labels_shifted(batch: &Batch) -> usize {
    let t = batch.seq;
    (0..batch.batch * t)
        .filter(|i| i % t != t - 1 && batch.labels[i + 1] != -100)
        .count()
}

#[test]
fn lora_gradients_match_peft_on_every_architecture() {
    // Qwen2's LoRA cases are its bias modes (`lora_bias_modes_and_rslora_match_peft`).
    for model in common::FAMILY_MODELS.into_iter().filter(|&m| m != "qwen2") {
        for masking in ["masked", "full"] {
            check_gradients(&format!("lora_{model}_{masking}"));
        }
    }
    // Gemma 3's language model inside its multimodal checkpoint, PEFT on the whole class.
    check_gradients("lora_gemma3-mm_masked");
}

/// The remote-code families against their published modeling files: LoRA on every block linear
/// layer (ChatGLM's `query_key_value`, Baichuan's `W_pack`, Qwen's `c_attn`, …), full
/// fine-tuning (Baichuan's head trains through its row normalization), and freezing all but
/// Qwen's last MLP and final norm.
#[test]
fn remote_code_families_gradients_match_their_modeling_files() {
    for model in common::REMOTE_MODELS {
        for masking in ["masked", "full"] {
            check_gradients(&format!("lora_{model}_{masking}"));
        }
        check_gradients(&format!("full_{model}"));
    }
    check_gradients("freeze_qwen");
}

#[test]
fn lora_bias_modes_and_rslora_match_peft() {
    check_gradients("lora_qwen2_bias_all");
    check_gradients("lora_qwen2_lora_only");
    check_gradients("lora_qwen2-window_masked");
    check_gradients("rslora_llama-gqa_qv");
}

/// DoRA: the magnitudes' gradients, and A's and B's through the rescaled direction, with the norm
/// detached as PEFT does; on stored weights too (QLoRA), and with recomputed activations.
#[test]
fn dora_gradients_match_peft() {
    check_gradients("dora_llama-gqa_masked");
    check_gradients("dora_phi3_masked");
    check_gradients("dora_qwen2_bias_all");
    check_gradients("dora_default_2layers");
    let stored = Variant {
        stored: true,
        ..Variant::default()
    };
    check_gradients_with("dora_default_2layers", stored);
    let recompute = Variant {
        recompute: true,
        ..Variant::default()
    };
    check_gradients_with("dora_llama-gqa_masked", recompute);
}

/// IA3: vectors on attention outputs (their biases scaled too, on Qwen2) and on the MLP's down
/// projection's input, on Phi-3's fused projections, and on a slice of the default model (f32 and
/// as stored: Q4_1).
#[test]
fn ia3_gradients_match_peft() {
    check_gradients("ia3_llama-gqa_masked");
    check_gradients("ia3_qwen2_masked");
    check_gradients("ia3_phi3_masked");
    check_gradients("ia3_default_2layers");
    let stored = Variant {
        stored: true,
        ..Variant::default()
    };
    check_gradients_with("ia3_qwen2_masked", stored);
    check_gradients_with("ia3_default_2layers", stored);
}

/// Prompt tuning (Llama with GQA, and Gemma 2, whose embedding scale multiplies the virtual
/// tokens too) and P-tuning's MLP encoder: PEFT prepends the virtual tokens at positions 0..N and
/// the real tokens follow; the inference model given the saved adapter computes the same logits.
#[test]
fn prompt_learning_gradients_match_peft() {
    check_gradients("prompt_llama-gqa");
    check_gradients("prompt_gemma2");
    check_gradients("p_tuning_llama-gqa");
    let recompute = Variant {
        recompute: true,
        ..Variant::default()
    };
    check_gradients_with("p_tuning_llama-gqa", recompute);
}

/// Prefix tuning: every layer's keys and values for N virtual tokens that every token attends
/// first (unrotated; the tokens at positions N..), as PEFT's cache; with its projection (a tanh
/// MLP), through sliding windows (Mistral) and Gemma 2's soft-capped attention. Row 0 labels its
/// first token, which no logit predicts.
#[test]
fn prefix_tuning_gradients_match_peft() {
    check_gradients("prefix_llama-gqa");
    check_gradients("prefix_projection_llama-gqa");
    check_gradients("prefix_mistral-window");
    check_gradients("prefix_gemma2");
    let recompute = Variant {
        recompute: true,
        ..Variant::default()
    };
    check_gradients_with("prefix_projection_llama-gqa", recompute);
}

/// OFT: the series on q, v (sharing their input with k) and down; the exact Cayley transform
/// with r given and q/v biases; one rotation shared by every block, 3 terms; the default model's
/// q and v in blocks of 32 (f32, and as stored: Q4_1, QOFT), recomputed, and under bf16 mixed
/// precision (each rotated part's own bf16 product). The saved adapter merged gives the same
/// logits.
#[test]
fn oft_gradients_match_peft() {
    check_gradients("oft_llama-gqa");
    check_gradients("oft_exact_qwen2");
    check_gradients("oft_share_llama-gqa");
    check_gradients("oft_default_2layers");
    let stored = Variant {
        stored: true,
        ..Variant::default()
    };
    check_gradients_with("oft_default_2layers", stored);
    let recompute = Variant {
        recompute: true,
        ..Variant::default()
    };
    check_gradients_with("oft_llama-gqa", recompute);
    let bf16 = Variant {
        bf16: true,
        ..Variant::default()
    };
    check_gradients_with("oft_exact_qwen2", bf16);
}

/// AdaLoRA: the update `B diag(E) A · alpha / (init_r + 1e-5)` on q, v and down (and with
/// lora_alpha 0, init_r / (init_r + 1e-5)), the loss with PEFT's orthogonality penalty; the saved
/// adapter merged gives the same logits.
#[test]
fn adalora_gradients_match_peft() {
    check_gradients("adalora_llama-gqa");
    check_gradients("adalora_qwen2");
}

/// AdaLoRA's rank allocator against PEFT's `update_and_allocate` after each of ten steps of
/// random triplets and gradients (init_r 4, target_r 2, tinit 1, tfinal 2, deltaT 2, total_step
/// 10, on q, v and down of both layers): the same E after each step (masked where PEFT masked) and
/// the same rank_pattern.
#[test]
fn adalora_rank_allocation_matches_peft() {
    let case = read_case("adalora_allocator");
    let meta = &case.meta;
    let get = |key: &str| meta[key].as_u64().unwrap();
    let mut config = AdaloraConfig::new(
        get("init_r") as usize,
        get("target_r") as usize,
        8.0,
        vec![],
    );
    (config.tinit, config.tfinal, config.delta_t) = (get("tinit"), get("tfinal"), get("deltaT"));
    config.beta1 = meta["beta1"].as_f64().unwrap();
    config.beta2 = meta["beta2"].as_f64().unwrap();
    let modules = string_list(&meta["modules"]);
    let tensor = |step: u64, kind: &str, module: &str, suffix: &str| {
        f32s(&case.tensors[&format!("step{step}.{kind}.{module}.{suffix}")])
    };
    let mut parts: Vec<Adalora> = modules
        .iter()
        .map(|m| {
            let (a, b) = (
                &case.tensors[&format!("step0.value.{m}.lora_A")],
                &case.tensors[&format!("step0.value.{m}.lora_B")],
            );
            let ((r, in_features), out_features) = (a.dims2().unwrap(), b.dims2().unwrap().0);
            let weights = AdaloraWeights {
                a: f32s(a),
                e: vec![0.0; r],
                b: f32s(b),
                r,
                in_features,
                out_features,
                scale: 1.0,
            };
            Adalora::from_weights(&weights, 0.0)
        })
        .collect();
    let allocator = {
        let refs: Vec<&mut Adalora> = parts.iter_mut().collect();
        RankAllocator::new(&config, get("total_step"), &refs)
    };
    for step in 0..get("total_step") {
        for (m, part) in modules.iter().zip(&mut parts) {
            for (suffix, t) in ["lora_A", "lora_E", "lora_B"].into_iter().zip([
                &mut part.a,
                &mut part.e,
                &mut part.b,
            ]) {
                t.value = tensor(step, "value", m, suffix);
                t.grad = Some(tensor(step, "grad", m, suffix));
            }
        }
        let mut refs: Vec<&mut Adalora> = parts.iter_mut().collect();
        allocator.after_step(&mut refs, step);
        let pattern = &meta["patterns"][step as usize];
        for (m, part) in modules.iter().zip(&parts) {
            let want = tensor(step, "e", m, "lora_E");
            assert!(
                rel_err(&part.e.value, &want) < 1e-6,
                "step {step}, {m}: E {:?} vs PEFT's {want:?}",
                part.e.value
            );
            let kept: Option<Vec<bool>> = pattern.get(format!("{m}.lora_E")).map(|v| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_bool().unwrap())
                    .collect()
            });
            assert_eq!(part.kept, kept, "step {step}, {m}: rank_pattern");
        }
    }
}

/// VeRA: shared frozen projections (sliced per layer: q_proj, v_proj and down_proj read
/// different parts of them) scaled by each layer's two vectors; the saved adapter merged gives
/// the same logits.
#[test]
fn vera_gradients_match_peft() {
    check_gradients("vera_llama-gqa");
    check_gradients("vera_qwen2");
}

/// LoHa: each targeted layer's update is `((W1a W1b) ⊙ (W2a W2b)) · alpha / r` (trained through
/// its rank-r² LoRA form); the saved adapter merged gives the same logits.
/// LoKr: `kron(W1, W2) · alpha / r` with PEFT's factorization and its choice of whole or
/// product factors (W2 a product at r 2, whole on some layers at r 4; W1 a product with
/// `decompose_both`), trained through the LoRA the Kronecker product is.
#[test]
fn lokr_gradients_match_peft() {
    check_gradients("lokr_llama-gqa");
    check_gradients("lokr_both_qwen2");
    check_gradients("lokr_r4_llama-gqa");
}

#[test]
fn loha_gradients_match_peft() {
    check_gradients("loha_llama-gqa");
    check_gradients("loha_qwen2");
}

/// LLaMA-Adapter: each adapted layer's queries also attend its prompt's keys and values (the
/// layer's own k_proj and v_proj of the prompt, unrotated) with a softmax of their own, scaled by
/// the gate; on Mistral with GQA (both layers adapted) and a wider Llama (the top layer).
#[test]
fn llama_adapter_gradients_match_peft() {
    check_gradients("adaption_mistral");
    check_gradients("adaption_llama-64");
    let recompute = Variant {
        recompute: true,
        ..Variant::default()
    };
    check_gradients_with("adaption_mistral", recompute);
}

/// OLoRA and PiSSA: Hone's own A₀ and B₀ (QR; top singular triplets) equal PEFT's, the base
/// becomes the residual (the model still computes W), and the loss and gradients equal PEFT's.
/// PiSSA's singular vectors are compared up to their signs, which LAPACK does not fix: each
/// component's sign is matched on B before A, B and their gradients are compared.
#[test]
fn lora_started_from_the_weight_matches_peft() {
    for name in ["olora_llama-gqa_masked", "pissa_llama-gqa_masked"] {
        let case = read_case(name);
        let (cfg, w) = base_model(&case, Variant::default()).unwrap();
        let settings = lora_settings(&case.meta);
        let spec = TrainableSpec {
            base: &|_| false,
            lora: Some(&settings),
            ia3: None,
        };
        let mut model = TrainModel::from_stored(cfg, w, &spec, None).unwrap();
        let batch = batch(&case);
        let scale = 1.0 / count_labels_shifted(&batch) as f32;
        let (sum, count) = model.forward_backward(&batch, scale, 0).unwrap();
        let want_loss = f64::from(f32s(&case.tensors["loss"])[0]);
        assert!(
            (sum / count as f64 - want_loss).abs() < 1e-5 * want_loss,
            "{name}: loss"
        );
        let logits = f32s(&merged_logits(&model, &case.tensors["input_ids"]));
        assert!(
            rel_err(&logits, &f32s(&case.tensors["logits"])) < 1e-4,
            "{name}: logits"
        );
        let mut worst = 0f64;
        for (module, lora) in model.lora_modules() {
            let tensor = |prefix: &str, part: &str| {
                f32s(&case.tensors[&format!("{prefix}.{module}.lora_{part}.weight")])
            };
            let r = lora.r;
            // Per component, +1 or −1: how B's column i compares with PEFT's.
            let want_b = tensor("init", "B");
            let signs: Vec<f32> = (0..r)
                .map(|i| {
                    let dot: f32 = (0..lora.out_features)
                        .map(|o| lora.b[o * r + i] * want_b[o * r + i])
                        .sum();
                    if dot < 0.0 {
                        -1.0
                    } else {
                        1.0
                    }
                })
                .collect();
            let flip_a = |a: &[f32]| -> Vec<f32> {
                a.chunks_exact(lora.in_features)
                    .zip(&signs)
                    .flat_map(|(row, s)| row.iter().map(move |v| v * s))
                    .collect()
            };
            let flip_b = |b: &[f32]| -> Vec<f32> {
                b.chunks_exact(r)
                    .flat_map(|row| row.iter().zip(&signs).map(|(v, s)| v * s))
                    .collect()
            };
            for (ours, want) in [
                (flip_a(&lora.a), tensor("init", "A")),
                (flip_b(&lora.b), want_b.clone()),
                (flip_a(&lora.grad_a), tensor("grad", "A")),
                (flip_b(&lora.grad_b), tensor("grad", "B")),
            ] {
                let err = rel_err(&ours, &want);
                assert!(err < 1e-4, "{name}: {module}: relative error {err:e}");
                worst = worst.max(err);
            }
        }
        eprintln!("{name}: A₀, B₀ and their gradients within {worst:.1e} of PEFT's");
    }
}

/// An adapter that started from the weight is saved converted to plain LoRA on the original base,
/// as PEFT's `save_pretrained(..., path_initial_model_for_weight_conversion=...)`: PEFT trained an
/// OLoRA adapter and saved it so (fixtures/adapters/llama-gqa-olora, rank 8 = 2 × 4); Hone starts
/// the same OLoRA adapter, takes PEFT's trained A and B, and saves the same file.
#[test]
fn an_adapter_started_from_the_weight_is_saved_converted_as_peft_does() {
    let peft = hone::adapters::read_adapter(&common::fixture("adapters/llama-gqa-olora")).unwrap();
    let source = ModelSource::HfDir(common::fixture("models/llama-gqa"));
    let (cfg, w) = weights::load(&source, &Device::Cpu).unwrap();
    let targets = TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]);
    let mut config = AdapterConfig::new(4, 8.0, targets);
    config.init_lora_weights = InitLoraWeights::Method("olora".into());
    let settings = LoraSettings::new(config.clone(), 0).unwrap();
    let spec = TrainableSpec {
        base: &|_| false,
        lora: Some(&settings),
        ia3: None,
    };
    let mut model = TrainModel::new(cfg, w, &spec, None).unwrap();
    // PEFT's trained A is the first 4 rows of its A', its B the first 4 columns of its B'.
    for p in model.params_mut() {
        let (module, part) = p.name.rsplit_once(".lora_").unwrap();
        let saved = &peft.modules[module];
        let trained: Vec<f32> = match part {
            "A.weight" => saved.a[..p.value.len()].to_vec(),
            _ => saved
                .b
                .chunks_exact(8)
                .flat_map(|row| row[..4].to_vec())
                .collect(),
        };
        p.value.copy_from_slice(&trained);
    }
    let ours = model.to_adapter(PeftConfig::Lora(config));
    let lora = ours.config.lora().unwrap();
    assert_eq!(
        (lora.r, lora.lora_alpha),
        (8, 16.0),
        "rank and alpha doubled"
    );
    assert_eq!(lora.init_lora_weights, InitLoraWeights::Default(true));
    assert_eq!(ours.modules.len(), peft.modules.len());
    for (module, w) in &ours.modules {
        let want = &peft.modules[module];
        assert_eq!((w.r, w.scale), (want.r, want.scale), "{module}");
        for (ours, want) in [(&w.a, &want.a), (&w.b, &want.b)] {
            let err = rel_err(ours, want);
            assert!(err < 1e-5, "{module}: relative error {err:e}");
        }
    }
}

#[test]
fn full_and_partial_fine_tuning_gradients_match_torch() {
    check_gradients("full_llama-gqa");
    check_gradients("full_llama-tied");
    check_gradients("full_qwen3");
    check_gradients("full_smollm3");
    check_gradients("full_granite");
    check_gradients("full_olmo2");
    check_gradients("full_gemma2");
    check_gradients("full_gemma3");
    check_gradients("full_phi3");
    check_gradients("full_glm4");
    check_gradients("full_starcoder2");
    check_gradients("full_mistral-window");
    check_gradients("freeze_llama-gqa");
}

#[test]
fn lora_gradients_match_peft_on_a_slice_of_the_default_model() {
    check_gradients("lora_default_2layers");
}

/// QLoRA: the base stays Q4_1 as the file stores it (products on dequantized tiles), and the
/// gradients still equal PEFT's on the dequantized model.
#[test]
fn lora_on_the_stored_quantized_default_model_matches_peft() {
    let stored = Variant {
        stored: true,
        ..Variant::default()
    };
    check_gradients_with("lora_default_2layers", stored);
}

/// QLoRA on an unquantized base (`quantization_bit: 4`): the decoder matrices quantized at load
/// as bitsandbytes does (NF4 with double quantization, FP4 without), and the gradients equal
/// PEFT's on the model with bitsandbytes' dequantized weights: a tiny model and a slice of the
/// default model, f32 and bf16 products.
#[test]
fn qlora_on_a_base_quantized_at_load_matches_peft_on_bitsandbytes_weights() {
    for name in [
        "qlora_nf4_llama-64",
        "qlora_fp4_llama-64",
        "qlora_nf4_default_2layers",
    ] {
        check_gradients(name);
    }
    let bf16 = Variant {
        bf16: true,
        ..Variant::default()
    };
    check_gradients_with("qlora_nf4_llama-64", bf16);
}

/// Recomputing each block's activations in the backward changes nothing.
#[test]
fn gradient_checkpointing_gives_the_same_gradients() {
    let recompute = Variant {
        recompute: true,
        ..Variant::default()
    };
    check_gradients_with("lora_llama-gqa_masked", recompute);
    check_gradients_with("full_llama-tied", recompute);
    check_gradients_with("full_qwen3", recompute);
    check_gradients_with("lora_smollm3_masked", recompute);
    check_gradients_with("full_olmo2", recompute);
    check_gradients_with("full_gemma3", recompute);
    check_gradients_with("full_gemma2", recompute);
    check_gradients_with(
        "lora_default_2layers",
        Variant {
            stored: true,
            recompute: true,
            bf16: false,
        },
    );
}

/// bf16 mixed precision stays within bf16's rounding of the f32 reference: LoRA, full and
/// freeze (whose frozen weights keep their values beside the bf16 copies), on the tiny models and
/// the default model's Q4_1 base as stored.
#[test]
fn bf16_mixed_precision_stays_within_rounding_of_the_reference() {
    let bf16 = Variant {
        bf16: true,
        ..Variant::default()
    };
    for name in [
        "lora_llama-gqa_masked",
        "lora_qwen2_bias_all",
        "full_llama-tied",
        "full_qwen3",
        "full_granite",
        "freeze_llama-gqa",
        "lora_default_2layers",
    ] {
        check_gradients_with(name, bf16);
    }
    check_gradients_with(
        "lora_default_2layers",
        Variant {
            stored: true,
            bf16: true,
            ..Variant::default()
        },
    );
}

/// Full fine-tuning in bf16: after an AdamW step, the products read the updated weights (the bf16
/// copies are made again), exactly as a model built from the updated weights does.
#[test]
fn bf16_copies_follow_the_trained_weights() {
    let case = read_case("full_llama-tied");
    let (cfg, w) = base_model(&case, Variant::default()).unwrap();
    let mut model = build(&case, cfg.clone(), w);
    model.use_bf16(false, true);
    let batch = batch(&case);
    let mut opt = AdamW::new();
    let shapes = model.trainable_shapes();
    let shapes: Vec<(&str, usize)> = shapes.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let config = AdamWConfig {
        lr: 1e-2,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.0,
    };
    opt.add_group(config, &shapes).unwrap();
    let before = model.loss(&batch).unwrap().0;
    model.forward_backward(&batch, 1e-2, 0).unwrap();
    opt.step(&mut model.params_mut(), 1.0).unwrap();
    model.refresh_bf16();
    let after = model.loss(&batch).unwrap().0;

    let updated: HashMap<String, Weight> = model
        .hf_tensors(false)
        .into_iter()
        .map(|(name, shape, data)| {
            let t = Tensor::from_vec(data, shape, &Device::Cpu).unwrap();
            (name, Weight::F32(t))
        })
        .collect();
    let mut rebuilt = build(&case, cfg, updated);
    rebuilt.use_bf16(false, true);
    assert_ne!(before, after, "the step changed nothing");
    assert_eq!(after, rebuilt.loss(&batch).unwrap().0);
}

#[test]
fn three_adamw_steps_reproduce_torch() {
    three_adamw_steps("adamw_lora_llama-gqa");
}

/// LoRA+ (LLaMA-Factory's groups) on a DoRA adapter with trained biases: B matrices and the 1-D
/// magnitudes and biases at 16× the rate, biases without weight decay.
#[test]
fn three_loraplus_steps_reproduce_torch() {
    three_adamw_steps("adamw_loraplus_qwen2");
}

fn three_adamw_steps(name: &str) {
    let case = read_case(name);
    let (cfg, w) = base_model(&case, Variant::default()).unwrap();
    let mut model = build(&case, cfg, w);
    let batch = batch(&case);
    let meta = &case.meta;
    let mut opt = AdamW::new();
    let config = AdamWConfig {
        lr: meta["lr"].as_f64().unwrap(),
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: meta["weight_decay"].as_f64().unwrap(),
    };
    let shapes = model.trainable_shapes();
    match meta["loraplus_lr_ratio"].as_f64() {
        Some(ratio) => {
            for (group, params) in param_groups(&shapes, config, Some(ratio)) {
                opt.add_group(group, &params).unwrap();
            }
        }
        // One group: torch.optim.AdamW(params), weight decay on every tensor.
        None => {
            let shapes: Vec<(&str, usize)> = shapes.iter().map(|(n, s)| (n.as_str(), *s)).collect();
            opt.add_group(config, &shapes).unwrap();
        }
    }
    let losses = f32s(&case.tensors["losses"]);
    let scale = 1.0 / count_labels_shifted(&batch) as f32;
    for step in 1..=3 {
        model.zero_grad();
        let (sum, count) = model.forward_backward(&batch, scale, 0).unwrap();
        let loss = (sum / count as f64) as f32;
        assert!(
            (loss - losses[step - 1]).abs() < 1e-5,
            "step {step}: loss {loss} vs {}",
            losses[step - 1]
        );
        clip_grad_norm(
            &mut model.grads_mut(),
            meta["max_grad_norm"].as_f64().unwrap() as f32,
        );
        opt.step(&mut model.params_mut(), 1.0).unwrap();
        for p in model.params_mut() {
            let want = f32s(&case.tensors[&format!("steps.{step}.{}", p.name)]);
            let diff = p
                .value
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-5, "step {step}: {} differs by {diff:e}", p.name);
        }
    }
}

/// The SFT recipe trains on padding-free batches: rows of different lengths laid end to end give
/// the padded batch's loss and gradients (here LoRA on the GQA model, rows of 11 and 7 tokens).
#[test]
fn flattened_rows_give_the_padded_batchs_loss_and_gradients() {
    let case = read_case("lora_llama-gqa_masked");
    let padded = batch(&case);
    let lens = [padded.seq, padded.seq - 4];
    let rows: Vec<Row> = lens
        .iter()
        .enumerate()
        .map(|(r, &len)| {
            let at = r * padded.seq;
            // A row's first label is ignored (`Row::from` sets it): nothing precedes it.
            Row::from(Example {
                input_ids: padded.input_ids[at..at + len].to_vec(),
                labels: padded.labels[at..at + len].to_vec(),
            })
        })
        .collect();
    let refs: Vec<&Row> = rows.iter().collect();
    let mut grads = Vec::new();
    for batch in [collate(&refs, 0), flatten(&refs)] {
        let (cfg, w) = base_model(&case, Variant::default()).unwrap();
        let mut model = build(&case, cfg, w);
        let (loss, count) = model.forward_backward(&batch, 1.0, 0).unwrap();
        let params: Vec<Vec<f32>> = model.params_mut().iter().map(|p| p.grad.to_vec()).collect();
        grads.push((loss, count, params));
    }
    let ((padded_loss, padded_n, padded_grads), (flat_loss, flat_n, flat_grads)) =
        (&grads[0], &grads[1]);
    assert_eq!(padded_n, flat_n);
    assert!(
        (padded_loss - flat_loss).abs() / padded_loss < 1e-6,
        "{padded_loss} vs {flat_loss}"
    );
    for (p, f) in padded_grads.iter().zip(flat_grads) {
        let err = rel_err(f, p);
        assert!(err < 1e-5, "gradient relative error {err:e}");
    }
}

/// A sigmoid DPO loss (β 0.1, label smoothing 0.1, pref_ftx 0.3) on two pairs, LoRA on every linear
/// layer of the GQA model: the loss and every gradient equal TRL's `dpo_loss` over transformers +
/// PEFT sequence log-probabilities (fixture from `scripts/golden/dpo.py`), the reference's given.
#[test]
fn dpo_gradients_match_trl() {
    let case = read_case("dpo_llama-gqa");
    let padded = batch(&case);
    let lengths: Vec<i64> = case.tensors["lengths"].to_vec1().unwrap();
    let rows: Vec<Row> = lengths
        .iter()
        .enumerate()
        .map(|(r, &len)| {
            let at = r * padded.seq;
            let len = len as usize;
            Row::from(Example {
                input_ids: padded.input_ids[at..at + len].to_vec(),
                labels: padded.labels[at..at + len].to_vec(),
            })
        })
        .collect();
    let refs: Vec<&Row> = rows.iter().collect();
    let reference: Vec<f64> = f32s(&case.tensors["reference"])
        .into_iter()
        .map(f64::from)
        .collect();
    let meta = &case.meta;
    let settings = PreferenceLoss {
        loss: PrefLoss::Sigmoid,
        beta: meta["pref_beta"].as_f64().unwrap(),
        label_smoothing: meta["dpo_label_smoothing"].as_f64().unwrap(),
        ftx: meta["pref_ftx"].as_f64().unwrap(),
        simpo_gamma: 0.5,
    };
    let (cfg, w) = base_model(&case, Variant::default()).unwrap();
    let mut model = build(&case, cfg, w);
    let pairs =
        dpo::pairs_forward_backward(&mut model, &refs, &reference, &settings, 0.5, 0).unwrap();
    let logps = f32s(&case.tensors["logps"]);
    for (k, pair) in pairs.iter().enumerate() {
        for (ours, want) in [
            (pair.logp_chosen, logps[2 * k]),
            (pair.logp_rejected, logps[2 * k + 1]),
        ] {
            assert!(
                (ours - f64::from(want)).abs() < 1e-5 * f64::from(want).abs(),
                "pair {k}: log-probability {ours} vs {want}"
            );
        }
    }
    let loss = pairs.iter().map(|p| p.loss).sum::<f64>() / pairs.len() as f64;
    assert_loss_and_gradients(&case, "dpo_llama-gqa", loss, &mut model, None);
}

/// A pairwise objective's mean `loss` and the model's gradients equal the fixture's, to 1e-5 and
/// 1e-4 relative; `cancelled` names a tensor whose gradient is 0 up to rounding on both sides.
fn assert_loss_and_gradients(
    case: &Case,
    name: &str,
    loss: f64,
    model: &mut TrainModel,
    cancelled: Option<&str>,
) {
    let want_loss = f64::from(f32s(&case.tensors["loss"])[0]);
    assert!(
        (loss - want_loss).abs() < 1e-5 * want_loss,
        "loss {loss} vs {want_loss}"
    );
    let mut worst = 0f64;
    for p in model.params_mut() {
        let want = f32s(&case.tensors[&format!("grad.{}", p.name)]);
        if cancelled == Some(p.name.as_str()) {
            let largest = p.grad.iter().chain(&want).fold(0f32, |m, g| m.max(g.abs()));
            assert!(largest < 1e-6, "{}: gradient {largest} is not 0", p.name);
            continue;
        }
        let err = rel_err(p.grad, &want);
        assert!(err < 1e-4, "{}: gradient relative error {err:e}", p.name);
        worst = worst.max(err);
    }
    eprintln!("{name}: loss {loss:.6} (ref {want_loss:.6}), worst gradient {worst:.1e}");
}

/// A reward model's pairwise loss on two pairs, LoRA on every linear layer of the GQA model under
/// a value head: the scores, the loss and every gradient (the value head's included) equal
/// LLaMA-Factory's `PairwiseTrainer` on TRL's `AutoModelForCausalLMWithValueHead` (fixture from
/// `scripts/golden/reward.py`).
#[test]
fn reward_model_gradients_match_llamafactory() {
    let case = read_case("rm_llama-gqa");
    let ids: Vec<i64> = case.tensors["input_ids"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let t = case.tensors["input_ids"].dims2().unwrap().1;
    let lengths: Vec<i64> = case.tensors["lengths"].to_vec1().unwrap();
    let row = |r: usize| {
        let input_ids: Vec<u32> = ids[r * t..r * t + lengths[r] as usize]
            .iter()
            .map(|&i| i as u32)
            .collect();
        let labels = input_ids.iter().map(|&i| i64::from(i)).collect();
        Row::from(Example { input_ids, labels })
    };
    // LLaMA-Factory batches the chosen rows, then the rejected ones; Hone pairs them in turn.
    let rows = [row(0), row(2), row(1), row(3)];
    let refs: Vec<&Row> = rows.iter().collect();
    let (cfg, w) = base_model(&case, Variant::default()).unwrap();
    let mut model = build(&case, cfg, w);
    let init = |name: &str| Tensor1::new(f32s(&case.tensors[&format!("init.{name}")]), true);
    model.value_head = Some(ValueHead {
        weight: init(reward::WEIGHT),
        bias: init(reward::BIAS),
        dropout: 0.0,
    });
    let pairs = reward::pairs_forward_backward(&mut model, &refs, 1.0, 0).unwrap();
    let (chosen, rejected) = (
        f32s(&case.tensors["chosen"]),
        f32s(&case.tensors["rejected"]),
    );
    for (k, pair) in pairs.iter().enumerate() {
        for (ours, want) in [(pair.chosen, chosen[k]), (pair.rejected, rejected[k])] {
            assert!(
                (ours - f64::from(want)).abs() < 1e-5,
                "pair {k}: score {ours} vs {want}"
            );
        }
    }
    let loss = pairs.iter().map(|p| p.loss()).sum::<f64>() / pairs.len() as f64;
    // A pair's two scores share the value head's bias: its gradient cancels.
    let cancelled = Some(reward::BIAS);
    assert_loss_and_gradients(&case, "rm_llama-gqa", loss, &mut model, cancelled);
}
