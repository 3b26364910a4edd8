//! LLaMA-Adapter in training: each adapted layer's prompt and gate (PEFT's `adaption_prompt`
//! N(0, 1) and `adaption_gate` 0), the prompt's keys and values through the layer's own frozen
//! k_proj and v_proj for each step, and their gradients back to the prompt. The attention over
//! them is `model::adaption`'s, inside the block.

use rand::{rngs::StdRng, SeedableRng};

use super::linear::{Projection, Saved};
use super::prompt::normal;
use crate::model::adaption::{keys_values, AdaptionGrads, AdaptionKv};
use crate::model::norm::Tensor1;
use crate::model::ModelConfig;

/// One adapted layer's trained tensors.
#[derive(Clone, Debug)]
pub struct AdaptionParam {
    /// `[len, hidden]`.
    pub prompt: Tensor1,
    /// `[1]`.
    pub gate: Tensor1,
}

/// The trained prompts of the top layers.
#[derive(Clone, Debug)]
pub struct Adaption {
    pub first_layer: usize,
    pub len: usize,
    /// From `first_layer` up.
    pub layers: Vec<AdaptionParam>,
}

/// What a step's keys and values keep for the backward: each layer's projection state.
pub struct AdaptionSaved {
    saved: Vec<Saved>,
}

impl Adaption {
    /// PEFT's start for the top `layers` layers of `cfg`: prompts from N(0, 1), gates 0; or
    /// `start`, an adapter's prompts and gates in layer order.
    pub fn new(
        cfg: &ModelConfig,
        (len, layers): (usize, usize),
        start: Option<Vec<(Vec<f32>, f32)>>,
        seed: u64,
    ) -> Adaption {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6164_6170);
        let start = start.unwrap_or_else(|| {
            (0..layers)
                .map(|_| (normal(len * cfg.hidden_size, &mut rng), 0.0))
                .collect()
        });
        Adaption {
            first_layer: cfg.num_hidden_layers - layers,
            len,
            layers: start
                .into_iter()
                .map(|(prompt, gate)| AdaptionParam {
                    prompt: Tensor1::new(prompt, true),
                    gate: Tensor1::new(vec![gate], true),
                })
                .collect(),
        }
    }

    /// The prompts' keys and values, each through its layer's q|k|v product (`qkv[l]`, no
    /// dropout), and what the backward needs.
    pub fn forward(&self, cfg: &ModelConfig, qkv: &[&Projection]) -> (AdaptionKv, AdaptionSaved) {
        let (q_width, kv_width) = widths(cfg);
        let mut kv = Vec::with_capacity(self.layers.len());
        let mut saved = Vec::with_capacity(self.layers.len());
        for (layer, projection) in self.layers.iter().zip(qkv) {
            let mut out = vec![0.0; self.len * (q_width + 2 * kv_width)];
            saved.push(projection.forward(&layer.prompt.value, &mut out, None));
            kv.push(keys_values(&out, cfg));
        }
        let gates = self.layers.iter().map(|l| l.gate.value[0]).collect();
        let kv = AdaptionKv {
            first_layer: self.first_layer,
            len: self.len,
            kv,
            gates,
        };
        (kv, AdaptionSaved { saved })
    }

    /// Accumulates the prompts' and gates' gradients from each adapted layer's `grads` (by layer
    /// index), back through the q|k|v products `qkv[l]`.
    pub fn backward(
        &mut self,
        cfg: &ModelConfig,
        qkv: &mut [&mut Projection],
        grads: &std::collections::BTreeMap<usize, AdaptionGrads>,
        saved: &AdaptionSaved,
    ) {
        let (q_width, kv_width) = widths(cfg);
        let row = q_width + 2 * kv_width;
        let layers = self.layers.iter_mut().zip(qkv.iter_mut()).zip(&saved.saved);
        for (i, ((layer, projection), saved)) in layers.enumerate() {
            let Some(g) = grads.get(&(self.first_layer + i)) else {
                continue;
            };
            let mut dqkv = vec![0.0; self.len * row];
            for (t, out) in dqkv.chunks_exact_mut(row).enumerate() {
                let token = t * kv_width..(t + 1) * kv_width;
                out[q_width..q_width + kv_width].copy_from_slice(&g.keys[token.clone()]);
                out[q_width + kv_width..].copy_from_slice(&g.values[token]);
            }
            let mut dprompt = vec![0.0; layer.prompt.value.len()];
            projection.backward(&dqkv, &layer.prompt.value, saved, &mut dprompt);
            if let Some(grad) = &mut layer.prompt.grad {
                grad.iter_mut().zip(&dprompt).for_each(|(g, d)| *g += d);
            }
            if let Some(grad) = &mut layer.gate.grad {
                grad[0] += g.gate;
            }
        }
    }
}

/// The queries' and the keys' widths in a q|k|v product's row.
fn widths(cfg: &ModelConfig) -> (usize, usize) {
    (
        cfg.num_attention_heads * cfg.head_dim,
        cfg.num_key_value_heads * cfg.head_dim,
    )
}
