//! Merging an adapter into a model's f32 weights (HF tensor names), as PEFT's
//! `merge_and_unload(safe_merge=True)` does: `W += scale · B · A` for each target module (DoRA then
//! rescales each row to its magnitude), or IA3's vector multiplied into W's rows and bias (or
//! columns), or OFT's rotations, `W · blockdiag(R)ᵀ`; refusing a result that is not finite;
//! biases saved with the adapter replace the model's.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use super::{dora, Adapter, LoraWeights, PeftConfig};
use crate::model::ModelConfig;

/// Refuses an adapter of a method that cannot be merged into the weights.
pub fn check_mergeable(config: &PeftConfig) -> Result<()> {
    if !config.is_mergeable() {
        bail!(
            "a {} adapter cannot be merged into the weights (PEFT cannot either): what it adds is attended at run \
             time; use it with --adapter (generate, chat, serve, eval)",
            config.method()
        );
    }
    Ok(())
}

/// Merge `adapter` into `weights`. Errors name the module when the adapter does not fit the model.
pub fn merge(
    weights: &mut HashMap<String, Tensor>,
    cfg: &ModelConfig,
    adapter: &Adapter,
) -> Result<()> {
    check_mergeable(&adapter.config)?;
    let dims = |name: &str| weights.get(name).map(|w| w.dims().to_vec());
    let adapter = &*adapter.resolved(dims)?;
    check_fits(cfg, adapter, dims)?;
    for (module, lora) in &adapter.modules {
        let name = format!("{module}.weight");
        let w = &weights[&name];
        let merged = (w + delta(lora, w.device())?)?;
        let mut values = merged.flatten_all()?.to_vec1::<f32>()?;
        if let Some(magnitude) = &lora.magnitude {
            dora::rescale_rows(&mut values, lora.in_features, magnitude);
        }
        if !values.iter().all(|v| v.is_finite()) {
            bail!("{module}: merging the adapter gives non-finite weights (NaN or infinity); the adapter is broken");
        }
        weights.insert(name, Tensor::from_vec(values, merged.dims(), w.device())?);
    }
    for (module, vector) in &adapter.scales {
        merge_ia3(weights, module, vector)?;
    }
    for (module, rotation) in &adapter.oft {
        let name = format!("{module}.weight");
        let w = &weights[&name];
        let (dims, device) = (w.dims().to_vec(), w.device().clone());
        let mut values = w.flatten_all()?.to_vec1::<f32>()?;
        rotation.merge_into(&mut values, dims[1]);
        if !values.iter().all(|v| v.is_finite()) {
            bail!("{module}: merging the adapter gives non-finite weights (NaN or infinity); the adapter is broken");
        }
        weights.insert(name, Tensor::from_vec(values, dims, &device)?);
    }
    for (name, bias) in &adapter.biases {
        let replacement = Tensor::from_slice(bias, bias.len(), weights[name].device())?;
        weights.insert(name.clone(), replacement);
    }
    Ok(())
}

/// Multiplies IA3's `vector` into `module`'s weight (and, scaling outputs, its bias).
fn merge_ia3(
    weights: &mut HashMap<String, Tensor>,
    module: &str,
    vector: &super::Ia3Vector,
) -> Result<()> {
    let name = format!("{module}.weight");
    let w = &weights[&name];
    let (dims, device) = (w.dims().to_vec(), w.device().clone());
    let mut values = w.flatten_all()?.to_vec1::<f32>()?;
    let bias_name = format!("{module}.bias");
    let mut bias = match weights.get(&bias_name) {
        Some(b) if !vector.feedforward => Some(b.to_vec1::<f32>()?),
        _ => None,
    };
    vector.merge_into(&mut values, bias.as_deref_mut());
    if !values
        .iter()
        .chain(bias.iter().flatten())
        .all(|v| v.is_finite())
    {
        bail!("{module}: merging the adapter gives non-finite weights (NaN or infinity); the adapter is broken");
    }
    weights.insert(name, Tensor::from_vec(values, dims, &device)?);
    if let Some(bias) = bias {
        let len = bias.len();
        weights.insert(bias_name, Tensor::from_vec(bias, len, &device)?);
    }
    Ok(())
}

/// Checks that every update of `adapter` has a module of its shape in the model, whose tensors'
/// shapes `dims` gives by HF name; errors name the module.
pub fn check_fits(
    cfg: &ModelConfig,
    adapter: &Adapter,
    dims: impl Fn(&str) -> Option<Vec<usize>>,
) -> Result<()> {
    let adapter = &*adapter.resolved(&dims)?;
    let weight_dims = |module: &str| -> Result<Vec<usize>> {
        let name = format!("{module}.weight");
        dims(&name).with_context(|| {
            format!(
                "{module}: the model has no such module (no tensor {name}); {}",
                other_base(adapter)
            )
        })
    };
    for (module, lora) in &adapter.modules {
        // A tied head is the embedding matrix: a head-only update cannot be merged into it.
        if module == "lm_head" && cfg.tie_word_embeddings {
            bail!("{module}: the model ties its output head to the token embeddings, so a LoRA update of the head alone cannot be merged");
        }
        let w = weight_dims(module)?;
        let (out, inp, r) = (lora.out_features, lora.in_features, lora.r);
        if w != [out, inp] {
            bail!(
                "{module}: the adapter's update is [{out}, {inp}] (lora_B [{out}, {r}] · lora_A [{r}, {inp}]) but \
                 the model's weight is {w:?}; {}",
                other_base(adapter)
            );
        }
    }
    for (module, vector) in &adapter.scales {
        let w = weight_dims(module)?;
        let (side, width) = match vector.feedforward {
            true => ("input", w.get(1)),
            false => ("output", w.first()),
        };
        if width != Some(&vector.values.len()) {
            bail!(
                "{module}: the adapter's IA3 vector scales {} {side} features but the model's weight is {w:?}; {}",
                vector.values.len(),
                other_base(adapter)
            );
        }
    }
    for (module, rotation) in &adapter.oft {
        let w = weight_dims(module)?;
        if let Err(problem) = rotation.fits(w[w.len() - 1]) {
            bail!(
                "{module}: the adapter's OFT rotation does not fit: {problem}; {}",
                other_base(adapter)
            );
        }
    }
    for (name, bias) in &adapter.biases {
        let Some(old) = dims(name) else {
            bail!(
                "{name}: the adapter replaces this bias but the model has none; {}",
                other_base(adapter)
            );
        };
        if old != [bias.len()] {
            bail!(
                "{name}: the adapter's bias has {} values but the model's is {old:?}; {}",
                bias.len(),
                other_base(adapter)
            );
        }
    }
    Ok(())
}

/// `scale · B · A`, `[out, in]`.
fn delta(lora: &LoraWeights, device: &candle_core::Device) -> Result<Tensor> {
    let a = Tensor::from_slice(&lora.a, (lora.r, lora.in_features), device)?;
    let b = Tensor::from_slice(&lora.b, (lora.out_features, lora.r), device)?;
    Ok(b.matmul(&a)?.affine(lora.scale, 0.0)?)
}

fn other_base(adapter: &Adapter) -> String {
    match adapter.config.base_model_name_or_path() {
        Some(base) => format!("this adapter was made for a different base model ({base})"),
        None => "this adapter was made for a different base model".into(),
    }
}
