//! A memory plan before launch: the peak resident memory of a training run, predicted from its
//! config, the model file's tensor table and the size of its largest micro-batch, without loading
//! a weight. `hone plan` prints it, and `hone train` prints it and stops before loading when it
//! does not fit.
//!
//! The parts follow what the engine holds: the weights as the run keeps them (f32, as stored,
//! quantized at load, bf16 copies), the trainable tensors' gradients and AdamW's two moments, the
//! activations every block keeps for its backward (or only its input, with recomputation), one
//! block's scratch during the backward, the loss's logits chunk, and the process itself. The
//! byte counts mirror the code that allocates them (`model/block.rs`, `train/precision.rs`,
//! `sft/setup.rs::choose_base_storage`); scripts/bench/memory_plan.py checks them against the
//! peak RSS of real runs.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::adapters::ia3::Ia3Matcher;
use crate::adapters::targets::ModuleMatcher;
use crate::adapters::{AdaloraConfig, OftConfig};
use crate::model::layout::block_linears;
use crate::model::quantize::{is_decoder_linear, BaseQuantization};
use crate::model::{hf_tensor_shapes, ModelConfig, NormPlacement};
use crate::quant::GgmlType;
use crate::train::model::CE_CHUNK;

/// The process before any model: code, the runtime, thread stacks, allocator metadata and the
/// tokenizer (measured: `hone train` of a tiny model on a small dataset peaks near this).
const RUNTIME_BYTES: u64 = 64 << 20;
/// Memory the allocator holds beyond the live activations and scratch, as a fraction of them:
/// mimalloc keeps freed pages (Hone disables purging, `crate::alloc`), and buffers of each
/// block's many sizes do not all reuse each other's. Fitted on the runs scripts/bench/
/// memory_plan.py measures (12–38% there; 25% puts all five within 7%).
const ALLOCATOR_OVERHEAD: f64 = 0.25;

/// How a run holds its base model and trains it: what the plan needs from the config.
pub struct RunShape<'a> {
    pub model: &'a ModelConfig,
    /// Each tensor's type and bytes in the model file, by HF name.
    pub stored: &'a HashMap<String, (GgmlType, u64)>,
    /// Which base tensors train (full and freeze runs).
    pub base_trains: &'a dyn Fn(&str) -> bool,
    /// The adapter's targets, for LoRA, IA3, OFT and AdaLoRA runs.
    pub adapter: Option<&'a AdapterMatcher>,
    /// DoRA: each adapter also has a magnitude per output row, and keeps its rescaled output
    /// for the backward.
    pub dora: bool,
    /// Full and freeze runs save the whole model, so frozen matrices keep their own values beside
    /// their bf16 copies.
    pub keeps_originals: bool,
    /// `quantization_bit`: quantized frozen matrices stay as stored under bf16.
    pub keeps_quantized: bool,
    pub storage: BaseStorage,
    pub bf16: bool,
    pub recompute: bool,
    /// Tokens of the largest training micro-batch.
    pub batch_tokens: usize,
    /// Tokens of the largest evaluation batch (0 without evaluation).
    pub eval_tokens: usize,
    /// The encoded training and evaluation rows, held for the whole run.
    pub dataset: DatasetSize,
}

/// Which modules an adapter run adapts, by method.
pub enum AdapterMatcher {
    Lora(ModuleMatcher),
    Ia3(Ia3Matcher),
    Oft(OftConfig),
    Adalora(AdaloraConfig),
}

impl AdapterMatcher {
    /// Floats the adapter of `module` (`[out, in]`) trains, and keeps per token for its backward;
    /// None when it adapts nothing there.
    fn floats(&self, module: &str, out: usize, inp: usize, dora: bool) -> Option<(u64, u64)> {
        match self {
            AdapterMatcher::Lora(matcher) => {
                let rank = lora_rank(matcher, module)?;
                let magnitudes = if dora { out as u64 } else { 0 };
                let kept = rank + magnitudes;
                Some((rank * (out + inp) as u64 + magnitudes, kept))
            }
            AdapterMatcher::Ia3(matcher) => {
                matcher.is_target(module).ok()?.then_some(())?;
                match matcher.is_feedforward(module).ok()? {
                    true => Some((inp as u64, 0)),
                    false => Some((out as u64, out as u64)),
                }
            }
            // The rotation keeps nothing per token (its backward reads the layer's input).
            AdapterMatcher::Oft(config) => {
                config.selects(module).ok()?.then_some(())?;
                let (blocks, b) = config.geometry(inp);
                let rows = if config.block_share { 1 } else { blocks };
                Some(((rows * b * (b - 1) / 2) as u64, 0))
            }
            // Trained as the LoRA `diag(E)·A`, which keeps its `A'·x`.
            AdapterMatcher::Adalora(config) => {
                config.selects(module).ok()?.then_some(())?;
                let r = config.init_r as u64;
                Some((r * (inp + out + 1) as u64, r))
            }
        }
    }
}

/// What the encoded rows of a run hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DatasetSize {
    pub bytes: u64,
    pub rows: usize,
    pub tokens: usize,
}

impl RunShape<'_> {
    /// Bytes of every tensor in the model file.
    fn file_bytes(&self) -> u64 {
        self.stored.values().map(|&(_, bytes)| bytes).sum()
    }
}

/// How the frozen base is held after loading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum BaseStorage {
    /// Expanded to f32.
    F32,
    /// In the file's own types (a quantized GGUF under `quantization_bit`, bf16 runs, or a base
    /// whose f32 expansion would not fit).
    AsStored,
    /// Decoder matrices quantized at load; the rest as stored.
    Quantized(BaseQuantization),
}

/// The plan: named parts that are live together at the peak, and the memory available.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    pub parts: Vec<Part>,
    pub available_bytes: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Part {
    pub name: &'static str,
    pub bytes: u64,
    pub detail: String,
}

impl MemoryPlan {
    pub fn peak_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }

    /// Whether the peak fits in the memory available (true where none is known).
    pub fn fits(&self) -> bool {
        self.available_bytes.is_none_or(|a| self.peak_bytes() <= a)
    }

    /// `{"peak_memory_bytes", "parts": {name: bytes}, "fits", "available_bytes"}`.
    pub fn to_json(&self) -> Value {
        let parts: serde_json::Map<String, Value> = self
            .parts
            .iter()
            .map(|p| (p.name.to_string(), json!(p.bytes)))
            .collect();
        json!({
            "peak_memory_bytes": self.peak_bytes(),
            "parts": parts,
            "fits": self.fits(),
            "available_bytes": self.available_bytes,
        })
    }

    /// The parts as an aligned table, then the peak and what is available.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for p in &self.parts {
            out.push_str(&format!(
                "  {:<12} {:>10}  {}\n",
                p.name,
                mib(p.bytes),
                p.detail
            ));
        }
        let available = match self.available_bytes {
            Some(a) if self.fits() => format!("fits in the {} available", mib(a)),
            Some(a) => format!("does NOT fit in the {} available", mib(a)),
            None => "available memory unknown".to_string(),
        };
        out.push_str(&format!(
            "  {:<12} {:>10}  {available}",
            "peak",
            mib(self.peak_bytes())
        ));
        out
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The plan of a run shaped as `run`.
pub fn plan(run: &RunShape, available_bytes: Option<u64>) -> MemoryPlan {
    let weights = weights(run);
    let lora = lora_parameters(run);
    let trainable = weights.trainable + lora;
    let per_token = activation_floats_per_layer(run);
    let layers = run.model.num_hidden_layers as u64;
    let tokens = run.batch_tokens as u64;
    let (activations, activation_detail) = if run.recompute {
        let inputs = layers * tokens * run.model.hidden_size as u64;
        (
            4 * (inputs + tokens * per_token),
            format!("{layers} block inputs of {tokens} tokens, one block recomputed"),
        )
    } else {
        (
            4 * layers * tokens * per_token,
            format!("{layers} blocks × {tokens} tokens × {per_token} floats"),
        )
    };
    // With recomputation each block's forward runs again just before its backward, and the
    // allocator keeps both sets of buffers (measured on a 1B shape at 2048 and 4096 tokens).
    let bf16_copy = bf16_copy_bytes(run);
    let scratch = scratch_bytes(run)
        + bf16_copy
        + if run.recompute {
            forward_scratch_bytes(run)
        } else {
            0
        };
    let mut parts = vec![
        Part {
            name: "weights",
            bytes: weights.bytes,
            detail: weights.detail,
        },
        Part {
            name: "file pages",
            bytes: weights.file_pages,
            detail: "the rest of the memory-mapped file, read at load and mapped while a \
                     matrix is used in place"
                .to_string(),
        },
        Part {
            name: "adapters",
            bytes: 4 * lora,
            detail: match (run.adapter, run.dora) {
                (Some(AdapterMatcher::Ia3(_)), _) => format!("{lora} IA3 parameters (f32)"),
                (Some(AdapterMatcher::Oft(_)), _) => format!("{lora} OFT parameters (f32)"),
                (Some(AdapterMatcher::Adalora(_)), _) => {
                    format!("{lora} AdaLoRA parameters (A, E and B, f32)")
                }
                (_, true) => format!("{lora} DoRA parameters (A, B and magnitudes, f32)"),
                _ => format!("{lora} LoRA parameters (f32)"),
            },
        },
        Part {
            name: "gradients",
            bytes: 4 * trainable,
            detail: format!("{trainable} trainable parameters (f32)"),
        },
        Part {
            name: "optimizer",
            bytes: 8 * trainable,
            detail: "AdamW's two moments (f32)".to_string(),
        },
        Part {
            name: "activations",
            bytes: activations,
            detail: activation_detail,
        },
        Part {
            name: "scratch",
            bytes: scratch,
            detail: if bf16_copy > 0 {
                "one block's backward, the loss's logits chunk, a quantized matrix's bf16 copy"
            } else {
                "one block's backward, the loss's logits chunk"
            }
            .to_string(),
        },
        Part {
            name: "allocator",
            bytes: ((activations + scratch) as f64 * ALLOCATOR_OVERHEAD) as u64,
            detail: "freed buffers kept for reuse".to_string(),
        },
        Part {
            name: "dataset",
            bytes: run.dataset.bytes,
            detail: format!(
                "{} rows, {} tokens (ids, labels, example lengths)",
                run.dataset.rows, run.dataset.tokens
            ),
        },
        Part {
            name: "runtime",
            bytes: RUNTIME_BYTES,
            detail: "code, threads, tokenizer".to_string(),
        },
    ];
    parts.retain(|p| p.bytes > 0 || p.name == "activations");
    MemoryPlan {
        parts,
        available_bytes,
    }
}

/// Bytes of the weights as held, how many base parameters train, and the file's pages that stay
/// resident beyond the matrices used in place.
struct Weights {
    bytes: u64,
    trainable: u64,
    file_pages: u64,
    detail: String,
}

fn weights(run: &RunShape) -> Weights {
    let tied = run.model.tie_word_embeddings;
    let (mut bytes, mut trainable, mut in_place) = (0u64, 0u64, 0u64);
    for (name, dims) in hf_tensor_shapes(run.model) {
        let elements: u64 = dims.iter().map(|&d| d as u64).product();
        let trains = (run.base_trains)(&name);
        if trains {
            trainable += elements;
        }
        if dims.len() == 1 {
            bytes += 4 * elements;
            continue;
        }
        // The head's bf16 copy keeps its kernel layout in both orientations (3 bf16 copies).
        let is_head = name == "lm_head.weight" || tied && name == "model.embed_tokens.weight";
        let copy = if is_head { 6 } else { 2 } * elements;
        let held = held_bytes(run, &name, elements);
        let quantized = run.keeps_quantized
            && (matches!(run.storage, BaseStorage::Quantized(_)) && is_decoder_linear(&name)
                || run.storage == BaseStorage::AsStored && is_quantized_type(run, &name));
        let kept = match (trains, run.bf16) {
            (true, false) => 4 * elements,
            (true, true) => 4 * elements + copy,
            (false, false) => held,
            // A quantized frozen matrix stays as stored under `quantization_bit`.
            (false, true) if quantized => held,
            // The untied embedding is only looked up: it keeps its values.
            (false, true) if name == "model.embed_tokens.weight" && !tied => held,
            (false, true) if run.keeps_originals || name == "model.embed_tokens.weight" => {
                held + copy
            }
            (false, true) => copy,
        };
        bytes += kept;
        if !trains && kept != copy && is_mapped(run, &name) {
            in_place += held;
        }
    }
    // The file stays mapped while any matrix is used in place, and every page of it was read.
    let file_pages = if in_place > 0 {
        run.file_bytes().saturating_sub(in_place)
    } else {
        0
    };
    let detail = match (run.storage, run.bf16) {
        (BaseStorage::F32, false) => "base expanded to f32".to_string(),
        (BaseStorage::Quantized(q), _) => format!("decoder matrices as {}", q.describe()),
        (BaseStorage::AsStored, false) => "base as stored in the file".to_string(),
        (_, true) => "bf16 copies of the matrices the products read".to_string(),
    };
    Weights {
        bytes,
        trainable,
        file_pages,
        detail,
    }
}

/// Whether a frozen matrix is used in place from the file's memory map: kept as stored, in a
/// type other than f32 (f32 tensors are copied out).
fn is_mapped(run: &RunShape, name: &str) -> bool {
    // Quantizing at load copies what stays as stored out of the map (`model::quantize`), and so
    // does a bf16 LoRA run with its embedding (`train::precision`).
    let copied_out = run.bf16
        && !run.keeps_originals
        && !run.keeps_quantized
        && name == "model.embed_tokens.weight";
    run.storage == BaseStorage::AsStored
        && !copied_out
        && run
            .stored
            .get(name)
            .is_some_and(|&(ty, _)| ty != GgmlType::F32)
}

/// Bytes of a frozen matrix after loading, before any bf16 copy.
fn held_bytes(run: &RunShape, name: &str, elements: u64) -> u64 {
    let stored = run.stored.get(name).map(|&(_, bytes)| bytes);
    match run.storage {
        BaseStorage::F32 => 4 * elements,
        BaseStorage::Quantized(q) if is_decoder_linear(name) => {
            let ty = q.ggml_type();
            elements / ty.block_size() as u64 * ty.type_size() as u64
        }
        _ => stored.unwrap_or(4 * elements),
    }
}

fn is_quantized_type(run: &RunShape, name: &str) -> bool {
    run.stored
        .get(name)
        .is_some_and(|&(ty, _)| ty.is_quantized())
}

/// Adapter parameters: LoRA's r · (in + out) for every targeted linear layer, plus `out` with
/// DoRA; IA3's `out` (or `in` for a feedforward module).
fn lora_parameters(run: &RunShape) -> u64 {
    let Some(matcher) = run.adapter else {
        return 0;
    };
    hf_tensor_shapes(run.model)
        .into_iter()
        .filter(|(_, dims)| dims.len() == 2)
        .filter_map(|(name, dims)| {
            let module = name.strip_suffix(".weight")?;
            Some(matcher.floats(module, dims[0], dims[1], run.dora)?.0)
        })
        .sum()
}

fn lora_rank(matcher: &ModuleMatcher, module: &str) -> Option<u64> {
    matcher
        .is_target(module)
        .ok()?
        .then(|| matcher.rank(module).ok().map(|r| r as u64))?
}

/// f32 values one block keeps per token for its backward (`model::block::Activations`): its
/// input and mid-block residual, q, k, v, the attention output and its log-sum-exp, the two MLP
/// halves, two RMSNorm scales, each LoRA's `A·x` (and DoRA's output before its rescaling), with a
/// q/k norm the raw q and k and their
/// norms' scales, and with norms after the branches the branch outputs they normalize.
fn activation_floats_per_layer(run: &RunShape) -> u64 {
    let m = run.model;
    let (q, kv) = m.attention_widths();
    // The raw q and k and one norm scale per normalized row of each.
    let qk_norm = match m.qk_norm_widths() {
        Some((q_norm, k_norm)) => q + kv + q / q_norm + kv / k_norm,
        None => 0,
    };
    // With norms after each branch, both branch outputs before their norm.
    let post_norms = match m.norm_placement {
        NormPlacement::Post | NormPlacement::Sandwich | NormPlacement::SandwichGlm4 => {
            2 * m.hidden_size
        }
        NormPlacement::Pre => 0,
    };
    let fixed = 2 * m.hidden_size
        + 2
        + 2 * q
        + 2 * kv
        + m.num_attention_heads
        + 2 * m.intermediate_size
        + qk_norm
        + post_norms;
    let lora: u64 = run.adapter.map_or(0, |matcher| {
        block_linears(m)
            .iter()
            .filter_map(|l| {
                let module = format!("model.layers.0.{}", l.name);
                let floats = matcher.floats(&module, l.out_features, l.in_features, run.dora)?;
                Some(floats.1)
            })
            .sum()
    });
    fixed as u64 + lora
}

/// A block forward's transient buffers: the fused q|k|v output and its split copies, both
/// norms' outputs, the attention projection's output, and the MLP's gate, up and product.
fn forward_scratch_bytes(run: &RunShape) -> u64 {
    let m = run.model;
    let (q, kv) = m.attention_widths();
    let floats = 4 * m.intermediate_size + 3 * m.hidden_size + q + 2 * kv;
    4 * run.batch_tokens as u64 * floats as u64
}

/// Under bf16 with quantized frozen matrices kept as stored, the bf16 copy a product makes of its
/// stacked matrix (`kernels::bf16`): the largest of q|k|v, o, gate|up and down.
fn bf16_copy_bytes(run: &RunShape) -> u64 {
    if !(run.bf16 && run.keeps_quantized) {
        return 0;
    }
    let m = run.model;
    let (q, kv) = m.attention_widths();
    let (h, i) = (m.hidden_size as u64, m.intermediate_size as u64);
    let largest = [(q + 2 * kv) as u64 * h, q as u64 * h, 2 * i * h, i * h]
        .into_iter()
        .max()
        .unwrap_or(0);
    2 * largest
}

/// The largest transient set: one block's backward (the SwiGLU gradient's three MLP-wide
/// buffers, three hidden-wide ones and the running input gradient), the loss's gathered rows,
/// logits chunk and hidden-state gradient, or an evaluation batch's forward.
fn scratch_bytes(run: &RunShape) -> u64 {
    let m = run.model;
    let (h, i) = (m.hidden_size as u64, m.intermediate_size as u64);
    let tokens = run.batch_tokens as u64;
    let block = tokens * (3 * i + 4 * h);
    let chunk = (CE_CHUNK as u64).min(tokens);
    let loss = tokens * 3 * h + chunk * (m.vocab_size as u64 + h);
    let eval = run.eval_tokens as u64 * (3 * i + 3 * h) + chunk * m.vocab_size as u64;
    4 * block.max(loss).max(eval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::{AdapterConfig, TargetModules};
    use crate::quant::bnb::FourBit;

    /// A Llama of 2 layers, hidden 64, MLP 128, 4 heads of 16 (2 key/value), vocabulary 100,
    /// tied: 6 400 embedding and 2 × 40 960 matrix parameters.
    fn model() -> ModelConfig {
        ModelConfig::from_hf_json(&json!({
            "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100, "tie_word_embeddings": true, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 128,
        }))
        .unwrap()
    }

    const MATRICES: u64 = 2 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 64 * 128) + 100 * 64;
    const VECTORS: u64 = 2 * 2 * 64 + 64;

    fn shape<'a>(
        model: &'a ModelConfig,
        stored: &'a HashMap<String, (GgmlType, u64)>,
        trains: &'a dyn Fn(&str) -> bool,
        adapter: Option<&'a AdapterMatcher>,
    ) -> RunShape<'a> {
        RunShape {
            model,
            stored,
            base_trains: trains,
            adapter,
            dora: false,
            keeps_originals: adapter.is_none(),
            keeps_quantized: false,
            storage: BaseStorage::F32,
            bf16: false,
            recompute: false,
            batch_tokens: 100,
            eval_tokens: 0,
            dataset: DatasetSize::default(),
        }
    }

    fn part(plan: &MemoryPlan, name: &str) -> u64 {
        plan.parts
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.bytes)
    }

    #[test]
    fn full_fine_tuning_holds_weights_gradients_and_two_moments() {
        let (m, stored) = (model(), HashMap::new());
        let run = shape(&m, &stored, &|_| true, None);
        let plan = plan(&run, Some(1 << 40));
        let params = MATRICES + VECTORS;
        assert_eq!(part(&plan, "weights"), 4 * params);
        assert_eq!(part(&plan, "gradients"), 4 * params);
        assert_eq!(part(&plan, "optimizer"), 8 * params);
        assert_eq!(
            plan.peak_bytes(),
            plan.parts.iter().map(|p| p.bytes).sum::<u64>()
        );
        assert!(plan.fits());
        assert!(!super::plan(&run, Some(1 << 20)).fits());
    }

    /// OFT trains its blocks' triangles and keeps nothing per token; AdaLoRA trains its
    /// triplets at `init_r` and keeps `A'·x` as LoRA does.
    #[test]
    fn oft_and_adalora_count_their_own_parameters() {
        let (m, stored) = (model(), HashMap::new());
        let base = plan(&shape(&m, &stored, &|_| false, None), None);
        let targets = vec!["q_proj".to_string(), "v_proj".to_string()];
        let oft = AdapterMatcher::Oft(OftConfig::new(0, 16, targets.clone()));
        let with_oft = plan(&shape(&m, &stored, &|_| false, Some(&oft)), None);
        // q and v read 64 inputs: 4 blocks of 16, each 16·15/2 values, in each of 2 layers.
        assert_eq!(part(&with_oft, "adapters"), 4 * 2 * 2 * 4 * 120);
        assert_eq!(part(&with_oft, "activations"), part(&base, "activations"));
        let ada = AdapterMatcher::Adalora(AdaloraConfig::new(4, 2, 8.0, targets));
        let with_ada = plan(&shape(&m, &stored, &|_| false, Some(&ada)), None);
        // q: 4 · (64 + 64 + 1), v: 4 · (64 + 32 + 1), in each of 2 layers.
        assert_eq!(part(&with_ada, "adapters"), 4 * 2 * (516 + 388));
        assert_eq!(
            part(&with_ada, "activations"),
            part(&base, "activations") + 4 * 2 * 100 * 8
        );
    }

    #[test]
    fn lora_trains_only_its_adapters_and_bf16_or_4_bits_shrink_the_frozen_base() {
        let (m, stored) = (model(), HashMap::new());
        let targets = TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]);
        let matcher = ModuleMatcher::new(&AdapterConfig::new(8, 16.0, targets)).unwrap();
        let matcher = AdapterMatcher::Lora(matcher);
        let mut run = shape(&m, &stored, &|_| false, Some(&matcher));
        let f32 = plan(&run, None);
        // q: 8 · (64 + 64), v: 8 · (64 + 32), in each of 2 layers.
        let lora = 2 * 8 * (128 + 96);
        assert_eq!(part(&f32, "adapters"), 4 * lora);
        assert_eq!(part(&f32, "optimizer"), 8 * lora);
        assert_eq!(part(&f32, "weights"), 4 * (MATRICES + VECTORS));
        // DoRA adds a magnitude per output row: q 64, v 32 per layer; and keeps as many floats
        // per token for the backward.
        run.dora = true;
        let dora = plan(&run, None);
        assert_eq!(part(&dora, "adapters"), 4 * (lora + 2 * 96));
        let extra_activations = 4 * 2 * 100 * 96;
        assert_eq!(
            part(&dora, "activations"),
            part(&f32, "activations") + extra_activations
        );
        run.dora = false;

        run.bf16 = true;
        let bf16 = plan(&run, None);
        // Decoder matrices as bf16; the tied embedding keeps f32 and gains the head's copies.
        let decoder = MATRICES - 100 * 64;
        let want = 2 * decoder + (4 + 6) * 100 * 64 + 4 * VECTORS;
        assert_eq!(part(&bf16, "weights"), want);

        run.bf16 = false;
        run.storage = BaseStorage::Quantized(BaseQuantization::FourBit {
            ty: FourBit::Nf4,
            double: true,
        });
        let nf4 = plan(&run, None);
        let want = decoder / 64 * 36 + 4 * 100 * 64 + 4 * VECTORS;
        assert_eq!(part(&nf4, "weights"), want);

        // Under bf16 the quantized matrices stay as stored, and a product rounds its stack to a
        // bf16 copy: gate|up's 2 · 128 · 64 values are the largest.
        run.keeps_quantized = true;
        run.bf16 = true;
        let nf4_bf16 = plan(&run, None);
        let copy = part(&nf4_bf16, "scratch") - part(&nf4, "scratch");
        assert_eq!(copy, 2 * 2 * 128 * 64);
    }

    #[test]
    fn recomputation_keeps_one_hidden_width_per_block_and_token() {
        let (m, stored) = (model(), HashMap::new());
        let mut run = shape(&m, &stored, &|_| true, None);
        let kept = part(&plan(&run, None), "activations");
        run.recompute = true;
        let recomputed = part(&plan(&run, None), "activations");
        let per_layer = activation_floats_per_layer(&run);
        assert_eq!(kept, 4 * 2 * 100 * per_layer);
        assert_eq!(recomputed, 4 * (2 * 100 * 64 + 100 * per_layer));
    }
}
