//! The tensors a config implies, under their HF names and shapes, in the order transformers'
//! `state_dict()` lists them (module definition order), so checkpoints Hone writes list
//! tensors the way transformers' own do.

use super::config::ModelConfig;

/// Every weight and bias of the model `cfg` describes, with its shape, in `state_dict()` order.
/// A tied LM head is the embedding matrix and is not listed separately, as transformers saves it.
pub fn hf_tensor_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q_dim, kv_dim) = cfg.attention_widths();
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, h])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let linear = |name: &str, rows: usize, cols: usize, bias: bool| {
            let weight = (format!("{p}.{name}.weight"), vec![rows, cols]);
            let bias = bias.then(|| (format!("{p}.{name}.bias"), vec![rows]));
            [Some(weight), bias].into_iter().flatten()
        };
        out.extend(linear("self_attn.q_proj", q_dim, h, cfg.attention_bias));
        out.extend(linear("self_attn.k_proj", kv_dim, h, cfg.attention_bias));
        out.extend(linear("self_attn.v_proj", kv_dim, h, cfg.attention_bias));
        out.extend(linear("self_attn.o_proj", h, q_dim, cfg.o_proj_bias));
        if let Some((q_norm, k_norm)) = cfg.qk_norm_widths() {
            out.push((format!("{p}.self_attn.q_norm.weight"), vec![q_norm]));
            out.push((format!("{p}.self_attn.k_norm.weight"), vec![k_norm]));
        }
        out.extend(linear("mlp.gate_proj", i, h, cfg.mlp_bias));
        out.extend(linear("mlp.up_proj", i, h, cfg.mlp_bias));
        out.extend(linear("mlp.down_proj", h, i, cfg.mlp_bias));
        for &(_, norm, _) in cfg.norm_placement.norms() {
            out.push((format!("{p}.{norm}.weight"), vec![h]));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, h]));
    }
    out
}
