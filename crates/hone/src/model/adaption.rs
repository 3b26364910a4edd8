//! LLaMA-Adapter (PEFT's `ADAPTION_PROMPT`): in each of the top layers, every query also attends a
//! learned prompt of `len` embeddings — their keys and values made by the layer's own frozen
//! k_proj and v_proj, unrotated — with a softmax of its own, and adds that attention scaled by a
//! learned gate (zero at the start, so the model starts as it was) to the layer's attention
//! output, before o_proj. Forward and backward side by side.
//!
//! No cache is involved: a query attends the same `len` keys at any position, in a prefill or a
//! decode step alike.

use anyhow::{bail, Context, Result};

use super::ModelConfig;
use crate::adapters::{adaption, Adapter, PeftConfig};
use crate::kernels::attention::AttnShape;
use crate::kernels::columns::columns;

/// The adaption prompts' keys and values of every adapted layer, and their gates.
#[derive(Clone, Debug, PartialEq)]
pub struct AdaptionKv {
    /// The first adapted layer; the rest follow it to the top.
    pub first_layer: usize,
    /// Prompt length (PEFT's `adapter_len`).
    pub len: usize,
    /// Per adapted layer, `[len, kv heads · head_dim]` keys then as many values.
    pub kv: Vec<(Vec<f32>, Vec<f32>)>,
    /// Per adapted layer, the gate.
    pub gates: Vec<f32>,
}

/// One layer's prompt keys and values, and its gate.
#[derive(Clone, Copy, Debug)]
pub struct AdaptionLayer<'a> {
    pub keys: &'a [f32],
    pub values: &'a [f32],
    pub gate: f32,
    pub len: usize,
}

/// The gradients of one layer's prompt keys, values and gate.
#[derive(Clone, Debug, Default)]
pub struct AdaptionGrads {
    pub keys: Vec<f32>,
    pub values: Vec<f32>,
    pub gate: f32,
}

impl AdaptionKv {
    /// A LLaMA-Adapter adapter's prompts as keys and values (None for other adapters), each
    /// through its layer's q|k|v product, `qkv(layer, prompt, rows)` (`[rows, q | k | v]`),
    /// after checking it fits `cfg`.
    pub fn of(
        adapter: &Adapter,
        cfg: &ModelConfig,
        qkv: impl Fn(usize, &[f32], usize) -> Result<Vec<f32>>,
    ) -> Result<Option<AdaptionKv>> {
        let PeftConfig::Adaption(config) = &adapter.config else {
            return Ok(None);
        };
        let (len, layers) = (config.adapter_len(), config.adapter_layers());
        let Some(first_layer) = cfg.num_hidden_layers.checked_sub(layers) else {
            bail!(
                "adapter_layers: {layers}, but the model has {} layers",
                cfg.num_hidden_layers
            );
        };
        let mut kv = Vec::with_capacity(layers);
        let mut gates = Vec::with_capacity(layers);
        for layer in first_layer..cfg.num_hidden_layers {
            let module = adaption::module(layer);
            let p = adapter.adaption.get(&module).with_context(|| {
                format!("{module}: no adaption_prompt (PEFT adapts the top adapter_layers layers)")
            })?;
            if p.prompt.len() != len * cfg.hidden_size {
                bail!(
                    "{module}.adaption_prompt: not [1, {len}, {}] (adapter_len, the model's hidden size): is it an \
                     adapter for another base model?",
                    cfg.hidden_size
                );
            }
            kv.push(keys_values(&qkv(layer, &p.prompt, len)?, cfg));
            gates.push(p.gate);
        }
        Ok(Some(AdaptionKv {
            first_layer,
            len,
            kv,
            gates,
        }))
    }

    /// Layer `layer`'s prompt, when it is adapted.
    pub fn layer(&self, layer: usize) -> Option<AdaptionLayer<'_>> {
        let i = layer.checked_sub(self.first_layer)?;
        let (keys, values) = self.kv.get(i)?;
        Some(AdaptionLayer {
            keys,
            values,
            gate: self.gates[i],
            len: self.len,
        })
    }
}

/// The keys and the values of a q|k|v product's output `[rows, q | k | v]`.
pub fn keys_values(qkv: &[f32], cfg: &ModelConfig) -> (Vec<f32>, Vec<f32>) {
    let (q_width, kv_width) = (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    );
    let row = q_width + 2 * kv_width;
    (
        columns(qkv, row, q_width, kv_width),
        columns(qkv, row, q_width + kv_width, kv_width),
    )
}

/// The prompt's softmax weights of query `q` (one head, rotated) against kv head `g`'s keys.
fn weights(q: &[f32], p: &AdaptionLayer, g: usize, shape: AttnShape) -> Vec<f32> {
    let (hd, width) = (shape.head_dim, shape.kv_heads * shape.head_dim);
    let scores: Vec<f32> = (0..p.len)
        .map(|j| dot(q, &p.keys[j * width + g * hd..][..hd]) * shape.scale)
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Adds `gate · softmax(q·Kᵀ·scale)·V` of every token's query heads (`q` and `out` `[tokens,
/// heads · head_dim]`, `rows` tokens per entry of `prompts`, each row's own prompt or none).
pub fn forward(q: &[f32], out: &mut [f32], prompts: &[Option<AdaptionLayer>], shape: AttnShape) {
    let (hd, nh) = (shape.head_dim, shape.heads);
    let group = nh / shape.kv_heads;
    let width = shape.kv_heads * hd;
    let row = shape.seq * nh * hd;
    for (r, p) in prompts.iter().enumerate() {
        let Some(p) = p else { continue };
        let (q, out) = (&q[r * row..][..row], &mut out[r * row..][..row]);
        for (i, (qh, oh)) in q.chunks_exact(hd).zip(out.chunks_exact_mut(hd)).enumerate() {
            let g = i % nh / group;
            let w = weights(qh, p, g, shape);
            for (j, &wj) in w.iter().enumerate() {
                let v = &p.values[j * width + g * hd..][..hd];
                oh.iter_mut()
                    .zip(v)
                    .for_each(|(o, &v)| *o += p.gate * wj * v);
            }
        }
    }
}

/// Backward of [`forward`] for a pass whose every row has prompt `p` (a training batch): from
/// `dout`, the gradient of the attention output the term was added to, adds the term's gradient
/// with respect to the queries into `dq` and returns those of the prompt's keys, values and gate.
pub fn backward(
    q: &[f32],
    dout: &[f32],
    dq: &mut [f32],
    p: &AdaptionLayer,
    shape: AttnShape,
) -> AdaptionGrads {
    let (hd, nh) = (shape.head_dim, shape.heads);
    let group = nh / shape.kv_heads;
    let width = shape.kv_heads * hd;
    let mut grads = AdaptionGrads {
        keys: vec![0.0; p.len * width],
        values: vec![0.0; p.len * width],
        gate: 0.0,
    };
    let heads = q
        .chunks_exact(hd)
        .zip(dout.chunks_exact(hd))
        .zip(dq.chunks_exact_mut(hd));
    for (i, ((qh, dh), dqh)) in heads.enumerate() {
        let g = i % nh / group;
        let w = weights(qh, p, g, shape);
        // dp_j = gate · dout·v_j; the gate's gradient is Σ_j p_j dout·v_j.
        let dv: Vec<f32> = (0..p.len)
            .map(|j| dot(dh, &p.values[j * width + g * hd..][..hd]))
            .collect();
        let pdv: f32 = w.iter().zip(&dv).map(|(w, d)| w * d).sum();
        grads.gate += pdv;
        for (j, (&wj, &dvj)) in w.iter().zip(&dv).enumerate() {
            let at = j * width + g * hd;
            let values = &mut grads.values[at..at + hd];
            values
                .iter_mut()
                .zip(dh)
                .for_each(|(v, &d)| *v += p.gate * wj * d);
            // Through the softmax: ds_j = p_j (dp_j − Σ_k p_k dp_k), then the scale.
            let ds = p.gate * wj * (dvj - pdv) * shape.scale;
            let key = &p.keys[at..at + hd];
            dqh.iter_mut().zip(key).for_each(|(d, &k)| *d += ds * k);
            let keys = &mut grads.keys[at..at + hd];
            keys.iter_mut().zip(qh).for_each(|(k, &q)| *k += ds * q);
        }
    }
    grads
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
