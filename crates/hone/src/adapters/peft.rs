//! Reading a PEFT adapter directory, and the tensor names PEFT uses in `adapter_model.safetensors`:
//! `base_model.model.<module>.lora_A.weight` `[r, in]`, `....lora_B.weight` `[out, r]`, DoRA's
//! `....lora_magnitude_vector` `[out]`, IA3's `....ia3_l` (`[out, 1]`, or `[1, in]` for a
//! feedforward module), and with
//! `bias` "all" / "lora_only" the trained biases, `base_model.model.<module>.base_layer.bias` for a
//! LoRA-wrapped module and `base_model.model.<module>.bias` for any other.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;

use super::adalora;
use super::adaption::{GATE_KEY, PROMPT_KEY};
use super::loha;
use super::lokr::{self, Factor};
use super::oft;
use super::vera::{LAMBDA_B, LAMBDA_D, SHARED_A, SHARED_B};
use super::{
    AdaloraWeights, Adapter, AdaptionPrompt, Ia3Vector, LohaWeights, LokrWeights, LoraWeights,
    OftWeights, PeftConfig, VeraWeights,
};
use crate::io::safetensors;
use crate::model::config::hone_name;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// What older PEFT versions saved by default: a pickle, which Hone never loads.
const PICKLED_WEIGHTS_FILE: &str = "adapter_model.bin";
/// PeftModel wraps the transformers model, which it calls `base_model.model`.
pub(super) const KEY_PREFIX: &str = "base_model.model.";
const LORA_A: &str = ".lora_A.weight";
const LORA_B: &str = ".lora_B.weight";
/// DoRA's magnitudes (PEFT drops the `.weight` of its `DoraLinearLayer` from the key).
pub(super) const MAGNITUDE: &str = ".lora_magnitude_vector";
/// IA3's vector.
pub(super) const IA3: &str = ".ia3_l";
/// A prompt-learning adapter's one tensor (saved without the key prefix).
pub(super) const PROMPT_EMBEDDINGS: &str = "prompt_embeddings";
/// A wrapped module's own bias, as PEFT names it.
pub(super) const WRAPPED_BIAS: &str = ".base_layer.bias";

/// Read a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
pub fn read_adapter(dir: &Path) -> Result<Adapter> {
    if !dir.is_dir() {
        bail!("{}: no such adapter directory", dir.display());
    }
    let config = read_config(&dir.join(CONFIG_FILE))?;
    let weights = weights_file(dir)?;
    let tensors = safetensors::load_f32(std::slice::from_ref(&weights), &Device::Cpu)?;
    let mut flat = BTreeMap::new();
    for (name, t) in tensors {
        let values = t
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .with_context(|| format!("{}: tensor {name}", weights.display()))?;
        flat.insert(name, (t.dims().to_vec(), values));
    }
    let adapter = assemble(config, flat).map_err(|e| anyhow!("{}: {e:#}", weights.display()))?;
    adapter
        .validate()
        .map_err(|e| anyhow!("{}: {e:#}", weights.display()))?;
    Ok(adapter)
}

/// The config of adapter directory `dir` alone (its tensors left unread), or None when it has no
/// `adapter_config.json`: a caller that goes on to read the adapter reports that itself.
pub fn read_config_if_present(dir: &Path) -> Result<Option<PeftConfig>> {
    let path = dir.join(CONFIG_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    read_config(&path).map(Some)
}

/// Read and validate `adapter_config.json`; errors are `path:line: field: problem`.
pub fn read_config(path: &Path) -> Result<PeftConfig> {
    if !path.is_file() {
        let dir = path.parent().unwrap_or(Path::new("."));
        bail!(
            "{}: no {CONFIG_FILE} in this adapter directory (a PEFT adapter has {CONFIG_FILE} and {WEIGHTS_FILE})",
            dir.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let located = |e: anyhow::Error| {
        let msg = format!("{e:#}");
        let field = msg.split(':').next().unwrap_or_default();
        match line_of_key(&text, field) {
            Some(line) => anyhow!("{}:{line}: {msg}", path.display()),
            None => anyhow!("{}: {msg}", path.display()),
        }
    };
    let config = PeftConfig::from_json(&text).map_err(located)?;
    config.validate().map_err(located)?;
    Ok(config)
}

/// The 1-based line where `"key":` first appears in JSON text.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let quoted = format!("\"{key}\"");
    text.lines()
        .position(|line| {
            line.find(&quoted)
                .is_some_and(|i| line[i + quoted.len()..].trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

fn weights_file(dir: &Path) -> Result<std::path::PathBuf> {
    let path = dir.join(WEIGHTS_FILE);
    if path.is_file() {
        return Ok(path);
    }
    let pickled = dir.join(PICKLED_WEIGHTS_FILE);
    if pickled.is_file() {
        bail!(
            "{}: pickled PyTorch weights are refused (loading them can execute arbitrary code). Convert the adapter \
             to safetensors first, e.g. `python -c \"from transformers import AutoModelForCausalLM as M; from peft \
             import PeftModel; PeftModel.from_pretrained(M.from_pretrained('BASE'), '{}').save_pretrained('OUT_DIR', \
             safe_serialization=True)\"`",
            pickled.display(),
            dir.display()
        );
    }
    bail!(
        "{}: no {WEIGHTS_FILE} in this adapter directory",
        dir.display()
    )
}

/// What one tensor of the file is.
enum Part {
    A(String),
    B(String),
    Magnitude(String),
    Ia3(String),
    /// A bias, by HF tensor name.
    Bias(String),
    /// LLaMA-Adapter's prompt or gate, by attention module.
    AdaptionPrompt(String),
    AdaptionGate(String),
    /// VeRA's vectors, by module.
    VeraD(String),
    VeraB(String),
    /// One of LoHa's four factors (its index in `loha::KEYS`), by module.
    Hada(String, usize),
    /// One of LoKr's factors (its index in `lokr::KEYS`), by module.
    Kron(String, usize),
    /// OFT's rotation, by module.
    Oft(String),
    /// One of AdaLoRA's A, E, B (its index in `adalora::KEYS`), by module.
    Svd(String, usize),
}

fn classify(key: &str) -> Result<Part> {
    let Some(rest) = key.strip_prefix(KEY_PREFIX) else {
        bail!("tensor {key}: not a PEFT adapter tensor name (they start with {KEY_PREFIX:?})");
    };
    if let Some(module) = rest.strip_suffix(LORA_A) {
        return Ok(Part::A(module.into()));
    }
    if let Some(module) = rest.strip_suffix(LORA_B) {
        return Ok(Part::B(module.into()));
    }
    if let Some(module) = rest.strip_suffix(MAGNITUDE) {
        return Ok(Part::Magnitude(module.into()));
    }
    if let Some(module) = rest.strip_suffix(IA3) {
        return Ok(Part::Ia3(module.into()));
    }
    if let Some(module) = rest.strip_suffix(PROMPT_KEY) {
        return Ok(Part::AdaptionPrompt(module.into()));
    }
    if let Some(module) = rest.strip_suffix(GATE_KEY) {
        return Ok(Part::AdaptionGate(module.into()));
    }
    for (index, suffix) in loha::KEYS.iter().enumerate() {
        if let Some(module) = rest.strip_suffix(suffix) {
            return Ok(Part::Hada(module.into(), index));
        }
    }
    for (index, suffix) in lokr::KEYS.iter().enumerate() {
        if let Some(module) = rest.strip_suffix(suffix) {
            return Ok(Part::Kron(module.into(), index));
        }
    }
    for (index, suffix) in adalora::KEYS.iter().enumerate() {
        if let Some(module) = rest.strip_suffix(suffix) {
            return Ok(Part::Svd(module.into(), index));
        }
    }
    if let Some(module) = rest.strip_suffix(oft::KEY) {
        return Ok(Part::Oft(module.into()));
    }
    if let Some(module) = rest.strip_suffix(LAMBDA_D) {
        return Ok(Part::VeraD(module.into()));
    }
    if let Some(module) = rest.strip_suffix(LAMBDA_B) {
        return Ok(Part::VeraB(module.into()));
    }
    if let Some(module) = rest.strip_suffix(WRAPPED_BIAS) {
        return Ok(Part::Bias(format!("{module}.bias")));
    }
    if rest.ends_with(".bias") {
        return Ok(Part::Bias(rest.into()));
    }
    bail!(
        "tensor {key}: not supported (Hone reads LoRA, DoRA and IA3 adapters of linear layers: lora_A / lora_B \
         weights, lora_magnitude_vector, ia3_l and biases; LLaMA-Adapter's adaption_prompt and adaption_gate; \
         VeRA's vera_A, vera_B and vectors; LoHa's hada factors; LoKr's lokr factors; OFT's oft_R; AdaLoRA's lora_A, lora_E, lora_B; this looks like another PEFT method or a LoRA variant)"
    )
}

/// A module of an adapter under Hone's name: a multimodal checkpoint's under the text model's
/// name (Hone runs only its language model; an adapted vision module is refused), a remote-code
/// family's under transformers' Llama names.
fn text_module(module: &str) -> Result<String> {
    hone_name(module).with_context(|| {
        format!(
            "{module}: the adapter adapts the vision tower or projector, which Hone does not run"
        )
    })
}

type Flat = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Pair each module's lora_A and lora_B, check their shapes, and give them the config's scale;
/// take IA3's vectors with the side they scale.
fn assemble(config: PeftConfig, mut tensors: Flat) -> Result<Adapter> {
    let prompt = match tensors.remove(PROMPT_EMBEDDINGS) {
        Some((shape, _)) if shape.len() != 2 => {
            bail!("tensor {PROMPT_EMBEDDINGS}: [num_virtual_tokens, width], not {shape:?}")
        }
        Some((_, values)) => Some(values),
        None => None,
    };
    let shared = (tensors.remove(SHARED_A), tensors.remove(SHARED_B));
    let mut a_parts = BTreeMap::new();
    let mut b_parts = BTreeMap::new();
    let mut biases = BTreeMap::new();
    let mut magnitudes = BTreeMap::new();
    let mut scales = BTreeMap::new();
    let mut adaption_prompts = BTreeMap::new();
    let mut gates = BTreeMap::new();
    let (mut lambdas_d, mut lambdas_b) = (BTreeMap::new(), BTreeMap::new());
    let mut hada = BTreeMap::new();
    let mut kron = BTreeMap::new();
    let mut rotations = BTreeMap::new();
    let mut svd = BTreeMap::new();
    for (key, (shape, values)) in tensors {
        let part = classify(&key)?;
        let expected_dims = match part {
            Part::Bias(_) | Part::Magnitude(_) | Part::AdaptionGate(_) => 1,
            Part::VeraD(_) | Part::VeraB(_) => 1,
            Part::AdaptionPrompt(_) => 3,
            _ => 2,
        };
        if shape.len() != expected_dims {
            bail!("tensor {key}: expected {expected_dims} dimensions, found shape {shape:?}");
        }
        match part {
            Part::A(module) => {
                a_parts.insert(module, (shape, values));
            }
            Part::B(module) => {
                b_parts.insert(module, (shape, values));
            }
            Part::Magnitude(module) => {
                magnitudes.insert(module, values);
            }
            Part::Ia3(module) => {
                let vector = Ia3Vector {
                    values,
                    feedforward: shape[0] == 1 && shape[1] != 1,
                };
                if !vector.shape().eq(&shape[..]) {
                    bail!("tensor {key}: an IA3 vector is [out, 1] or [1, in], not {shape:?}");
                }
                scales.insert(text_module(&module)?, vector);
            }
            Part::Bias(name) => {
                biases.insert(text_module(&name)?, values);
            }
            Part::AdaptionPrompt(module) if shape[0] == 1 => {
                adaption_prompts.insert(module, values);
            }
            Part::AdaptionGate(module) if shape[0] == 1 => {
                gates.insert(module, values[0]);
            }
            Part::AdaptionPrompt(_) => {
                bail!("tensor {key}: [1, adapter_len, hidden], not {shape:?}")
            }
            Part::AdaptionGate(_) => bail!("tensor {key}: [1], not {shape:?}"),
            Part::VeraD(module) => {
                lambdas_d.insert(text_module(&module)?, values);
            }
            Part::VeraB(module) => {
                lambdas_b.insert(text_module(&module)?, values);
            }
            Part::Kron(module, index) => {
                let factors = kron
                    .entry(text_module(&module)?)
                    .or_insert_with(|| [None, None, None, None, None, None]);
                factors[index] = Some((shape, values));
            }
            Part::Svd(module, index) => {
                let triplet = svd
                    .entry(text_module(&module)?)
                    .or_insert_with(|| [None, None, None]);
                triplet[index] = Some((shape, values));
            }
            Part::Oft(module) => {
                let Some(block_size) = oft::block_size_of(shape[1]) else {
                    bail!("tensor {key}: [blocks, b(b-1)/2] for some block size b, not {shape:?}");
                };
                let (cayley, coft) = match &config {
                    PeftConfig::Oft(c) => (c.cayley(), c.coft_eps()),
                    _ => (crate::kernels::rotation::Cayley::Neumann(5), None),
                };
                let weights = OftWeights {
                    triangles: values,
                    block_size,
                    cayley,
                    coft,
                };
                rotations.insert(text_module(&module)?, weights);
            }
            Part::Hada(module, index) => {
                let factors = hada
                    .entry(text_module(&module)?)
                    .or_insert_with(|| [None, None, None, None]);
                factors[index] = Some((shape, values));
            }
        }
    }
    let mut adaption = BTreeMap::new();
    for (module, prompt) in adaption_prompts {
        let Some(gate) = gates.remove(&module) else {
            bail!("{module}: adaption_prompt without adaption_gate");
        };
        adaption.insert(module, AdaptionPrompt { prompt, gate });
    }
    if let Some(module) = gates.keys().next() {
        bail!("{module}: adaption_gate without adaption_prompt");
    }
    let vera = vera_weights(shared, lambdas_d, lambdas_b)?;
    let scale = match &config {
        PeftConfig::Loha(c) => c.scale(),
        PeftConfig::Lokr(c) => c.scale(),
        _ => 1.0,
    };
    let lokr = kron
        .into_iter()
        .map(|(module, factors)| Ok((module.clone(), lokr_weights(&module, factors, scale)?)))
        .collect::<Result<_>>()?;
    let adalora_scale = match &config {
        PeftConfig::Adalora(c) => c.scale(),
        _ => 1.0,
    };
    let adalora = svd
        .into_iter()
        .map(|(module, t)| Ok((module.clone(), adalora_weights(&module, t, adalora_scale)?)))
        .collect::<Result<_>>()?;
    let loha = hada
        .into_iter()
        .map(|(module, factors)| Ok((module.clone(), loha_weights(&module, factors, scale)?)))
        .collect::<Result<_>>()?;
    let mut modules = BTreeMap::new();
    let matcher = config.lora().map(|c| c.matcher()).transpose()?;
    for (module, (a_shape, a)) in a_parts {
        let Some(matcher) = &matcher else {
            bail!("{module}: has LoRA weights but the config's peft_type is \"IA3\"");
        };
        let Some((b_shape, b)) = b_parts.remove(&module) else {
            bail!("{module}: lora_A without lora_B");
        };
        let (r, in_features) = (a_shape[0], a_shape[1]);
        let out_features = b_shape[0];
        if b_shape[1] != r {
            bail!("{module}: lora_A is {a_shape:?} and lora_B {b_shape:?}: their ranks differ");
        }
        let scale = matcher.scale(&module)?;
        let magnitude = magnitudes.remove(&module);
        let module = text_module(&module)?;
        let weights = LoraWeights {
            a,
            b,
            r,
            in_features,
            out_features,
            scale,
            magnitude,
        };
        modules.insert(module, weights);
    }
    if let Some(module) = b_parts.keys().next() {
        bail!("{module}: lora_B without lora_A");
    }
    if let Some(module) = magnitudes.keys().next() {
        bail!("{module}: lora_magnitude_vector without lora_A and lora_B");
    }
    Ok(Adapter {
        config,
        modules,
        scales,
        biases,
        prompt,
        adaption,
        vera,
        loha,
        lokr,
        oft: rotations,
        adalora,
    })
}

/// One module's AdaLoRA triplets, checked to be `lora_A [k, in]`, `lora_E [k, 1]`,
/// `lora_B [out, k]`.
fn adalora_weights(module: &str, t: [Option<Tensor>; 3], scale: f64) -> Result<AdaloraWeights> {
    let [Some((sa, a)), Some((se, e)), Some((sb, b))] = t else {
        bail!("{module}: AdaLoRA needs lora_A, lora_E and lora_B together");
    };
    let k = sa[0];
    if se != [k, 1] || sb[1] != k {
        bail!("{module}: lora_A {sa:?}, lora_E {se:?} and lora_B {sb:?} are not [k, in], [k, 1] and [out, k]");
    }
    Ok(AdaloraWeights {
        a,
        e,
        b,
        r: k,
        in_features: sa[1],
        out_features: sb[0],
        scale,
    })
}

/// One module's LoKr factors: W1 whole or `w1_a [a, r] · w1_b [r, c]`, W2 whole or
/// `w2_a [b, r] · w2_b [r, d]`, each given one way only.
fn lokr_weights(module: &str, factors: [Option<Tensor>; 6], scale: f64) -> Result<LokrWeights> {
    let [w1, w1a, w1b, w2, w2a, w2b] = factors;
    let factor = |whole: Option<Tensor>, a: Option<Tensor>, b: Option<Tensor>, name: &str| {
        match (whole, a, b) {
            (Some((shape, w)), None, None) => Ok((Factor::Whole(w), (shape[0], shape[1]))),
            (None, Some((sa, a)), Some((sb, b))) if sa[1] == sb[0] => {
                let r = sa[1];
                Ok((Factor::Product { a, b, r }, (sa[0], sb[1])))
            }
            _ => Err(anyhow!(
                "{module}: lokr_{name} needs lokr_{name} alone or lokr_{name}_a [rows, r] with lokr_{name}_b [r, cols]"
            )),
        }
    };
    let (w1, (a, c)) = factor(w1, w1a, w1b, "w1")?;
    let (w2, (b, d)) = factor(w2, w2a, w2b, "w2")?;
    Ok(LokrWeights {
        w1,
        w2,
        dims: (a, b, c, d),
        scale,
    })
}

/// One module's four LoHa factors, checked to be `[out, r]`, `[r, in]`, `[out, r]`, `[r, in]`.
fn loha_weights(module: &str, factors: [Option<Tensor>; 4], scale: f64) -> Result<LohaWeights> {
    let [Some(w1a), Some(w1b), Some(w2a), Some(w2b)] = factors else {
        bail!("{module}: needs all of hada_w1_a, hada_w1_b, hada_w2_a and hada_w2_b");
    };
    let (out, r, inp) = (w1a.0[0], w1a.0[1], w1b.0[1]);
    let fits = w1b.0 == [r, inp] && w2a.0 == [out, r] && w2b.0 == [r, inp];
    if !fits {
        bail!(
            "{module}: hada_w1_a {:?}, hada_w1_b {:?}, hada_w2_a {:?}, hada_w2_b {:?} are not [out, r], [r, in], \
             [out, r], [r, in]",
            w1a.0,
            w1b.0,
            w2a.0,
            w2b.0
        );
    }
    Ok(LohaWeights {
        w1a: w1a.1,
        w1b: w1b.1,
        w2a: w2a.1,
        w2b: w2b.1,
        r,
        in_features: inp,
        out_features: out,
        scale,
    })
}

type Tensor = (Vec<usize>, Vec<f32>);

/// VeRA's tensors: the shared projections and each module's pair of vectors (None when the file
/// has none of them).
fn vera_weights(
    (a, b): (Option<Tensor>, Option<Tensor>),
    d: BTreeMap<String, Vec<f32>>,
    mut scales: BTreeMap<String, Vec<f32>>,
) -> Result<Option<VeraWeights>> {
    let (Some((a_shape, a)), Some((b_shape, b))) = (a, b) else {
        if let Some(module) = d.keys().chain(scales.keys()).next() {
            bail!("{module}: VeRA vectors without {SHARED_A} and {SHARED_B} (save_projection: false is not supported)");
        }
        return Ok(None);
    };
    if a_shape.len() != 2 || b_shape.len() != 2 || a_shape[0] != b_shape[1] {
        bail!("tensor {SHARED_A} {a_shape:?} and {SHARED_B} {b_shape:?}: not [r, in] and [out, r]");
    }
    let mut lambdas = BTreeMap::new();
    for (module, d) in d {
        let Some(b) = scales.remove(&module) else {
            bail!("{module}: vera_lambda_d without vera_lambda_b");
        };
        lambdas.insert(module, (d, b));
    }
    if let Some(module) = scales.keys().next() {
        bail!("{module}: vera_lambda_b without vera_lambda_d");
    }
    Ok(Some(VeraWeights {
        a,
        b,
        r: a_shape[0],
        max_in: a_shape[1],
        max_out: b_shape[0],
        lambdas,
    }))
}
