//! The tensors a config implies, under their HF names and shapes, in the order transformers'
//! `state_dict()` lists them (module definition order), so checkpoints Hone writes list
//! tensors the way transformers' own do.

use super::config::ModelConfig;
use super::layout::{block_linears, BlockLinear, Slot};

/// A norm's weight, and its bias in a LayerNorm family.
fn norm_tensors(cfg: &ModelConfig, module: &str) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let mut out = vec![(format!("{module}.weight"), vec![h])];
    if cfg.architecture.layer_norm() {
        out.push((format!("{module}.bias"), vec![h]));
    }
    out
}

/// Every weight and bias of the model `cfg` describes, with its shape, in `state_dict()` order.
/// A tied LM head is the embedding matrix and is not listed separately, as transformers saves it.
pub fn hf_tensor_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let linears = block_linears(cfg);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let tensors = |l: &BlockLinear| {
            let weight = (
                format!("{p}.{}.weight", l.name),
                vec![l.out_features, l.in_features],
            );
            let bias = l
                .bias
                .then(|| (format!("{p}.{}.bias", l.name), vec![l.out_features]));
            [Some(weight), bias].into_iter().flatten()
        };
        let (attention, mlp): (Vec<_>, Vec<_>) = linears
            .iter()
            .partition(|l| matches!(l.slot, Slot::Qkv | Slot::O));
        out.extend(attention.into_iter().flat_map(tensors));
        if let Some((q_norm, k_norm)) = cfg.qk_norm_widths() {
            out.push((format!("{p}.self_attn.q_norm.weight"), vec![q_norm]));
            out.push((format!("{p}.self_attn.k_norm.weight"), vec![k_norm]));
        }
        out.extend(mlp.into_iter().flat_map(tensors));
        for &(_, norm, _) in cfg.norm_placement.norms() {
            out.extend(norm_tensors(cfg, &format!("{p}.{norm}")));
        }
    }
    out.extend(norm_tensors(cfg, "model.norm"));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    out
}
