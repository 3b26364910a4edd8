//! The linear layers of a decoder block, per family: each layer's HF module name, the product it
//! belongs to, its shape and bias; and the MLP's activation between its two products (gated or
//! not). Inference (`model::llama`), training (`train::model`, the one `model::block`), the tensor list of
//! a checkpoint and LoRA's `all-linear` all read this one place, so a family whose checkpoints fuse
//! q|k|v (Phi-3) or gate|up (Phi-3, GLM-4), or whose MLP has no gate (StarCoder2), is one switch
//! here, not one in each of them.

use super::config::{ModelConfig, ALL_LINEAR_NAMES};
use crate::kernels::glu;

/// The products of a block, in the order they run. Layers of one slot read the same input and run
/// as one product, their weights stacked by rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    Qkv,
    O,
    GateUp,
    Down,
}

pub const SLOTS: [Slot; 4] = [Slot::Qkv, Slot::O, Slot::GateUp, Slot::Down];

/// One linear layer of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLinear {
    /// HF module name within the layer, e.g. `self_attn.q_proj`.
    pub name: &'static str,
    pub slot: Slot,
    pub out_features: usize,
    pub in_features: usize,
    pub bias: bool,
}

/// Every block linear layer that `all-linear` can select, in any family (module paths within a
/// layer), each once.
pub fn all_block_linears() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for n in ALL_LINEAR_NAMES {
        for name in [n.q, n.k, n.v, n.qkv, n.o, n.gate, n.up, n.gate_up, n.down] {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// The block's linear layers in slot order (within a slot, in the order their rows stack).
pub fn block_linears(cfg: &ModelConfig) -> Vec<BlockLinear> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let (q, kv) = cfg.attention_widths();
    let names = cfg.architecture.linear_names();
    let linear = |name, slot, out_features, in_features, bias| BlockLinear {
        name,
        slot,
        out_features,
        in_features,
        bias,
    };
    let qkv_bias = cfg.attention_bias;
    let mut out = Vec::with_capacity(7);
    if cfg.architecture.fused_qkv() {
        out.push(linear(names.qkv, Slot::Qkv, q + 2 * kv, h, qkv_bias));
    } else {
        out.push(linear(names.q, Slot::Qkv, q, h, qkv_bias));
        out.push(linear(names.k, Slot::Qkv, kv, h, qkv_bias));
        out.push(linear(names.v, Slot::Qkv, kv, h, qkv_bias));
    }
    out.push(linear(names.o, Slot::O, h, q, cfg.o_proj_bias));
    let bias = cfg.mlp_bias;
    if !cfg.architecture.gated_mlp() {
        // StarCoder2's `c_proj(act(c_fc(x)))`: the GateUp slot holds the one input projection.
        out.push(linear(names.up, Slot::GateUp, i, h, bias));
        out.push(linear(names.down, Slot::Down, h, i, bias));
        return out;
    }
    if cfg.architecture.fused_gate_up() {
        out.push(linear(names.gate_up, Slot::GateUp, 2 * i, h, bias));
    } else {
        out.push(linear(names.gate, Slot::GateUp, i, h, bias));
        out.push(linear(names.up, Slot::GateUp, i, h, bias));
    }
    out.push(linear(names.down, Slot::Down, h, i, bias));
    out
}

/// The layers of one slot.
pub fn slot_linears(cfg: &ModelConfig, slot: Slot) -> Vec<BlockLinear> {
    block_linears(cfg)
        .into_iter()
        .filter(|l| l.slot == slot)
        .collect()
}

/// The short names (`q_proj`, …, or Phi-3's `qkv_proj`, …) of the block's linear layers: what
/// LLaMA-Factory's `lora_target: all` expands to for this model.
pub fn linear_module_names(cfg: &ModelConfig) -> Vec<&'static str> {
    block_linears(cfg)
        .iter()
        .map(|l| l.name.rsplit('.').next().unwrap_or(l.name))
        .collect()
}

/// The MLP's activation of the GateUp slot's product (`[tokens, 2·intermediate]` gate|up, or
/// StarCoder2's ungated `[tokens, intermediate]`): `[tokens, intermediate]`, the Down slot's input.
pub fn mlp_activation(cfg: &ModelConfig, gate_up: &[f32]) -> Vec<f32> {
    if !cfg.architecture.gated_mlp() {
        let mut act = vec![0.0; gate_up.len()];
        glu::activate(cfg.hidden_act, gate_up, &mut act);
        return act;
    }
    let mut act = vec![0.0; gate_up.len() / 2];
    glu::forward(cfg.hidden_act, gate_up, cfg.intermediate_size, &mut act);
    act
}
