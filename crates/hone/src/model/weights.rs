//! Loading a model's config and f32 weights from any source, under HF tensor names.
//!
//! GGUF files name tensors llama.cpp's way (`blk.N.attn_q.weight`) and store q/k projection rows
//! permuted for llama.cpp's interleaved rotary layout; both are undone here so the rest of Hone sees
//! one layout, the HF one.

use std::collections::HashMap;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

use super::config::{ModelConfig, RopeScaling};
use crate::io::gguf::GgufFile;
use crate::io::safetensors;
use crate::io::source::ModelSource;

/// Config and f32 weights keyed by HF tensor name.
pub fn load(
    source: &ModelSource,
    device: &Device,
) -> Result<(ModelConfig, HashMap<String, Tensor>)> {
    match source {
        ModelSource::HfDir(dir) => {
            let cfg = ModelConfig::from_hf_file(&dir.join("config.json"))?;
            let files = safetensors::checkpoint_files(dir)?;
            let weights = safetensors::load_f32(&files, device)?;
            Ok((cfg, weights))
        }
        ModelSource::Gguf(path) => {
            let gguf = GgufFile::open(path)?;
            load_gguf(&gguf, device)
        }
    }
}

/// Config and weights of an open GGUF file.
pub fn load_gguf(
    gguf: &GgufFile,
    device: &Device,
) -> Result<(ModelConfig, HashMap<String, Tensor>)> {
    let mut cfg = ModelConfig::from_gguf(gguf)?;
    let mut weights = HashMap::new();
    for info in &gguf.tensors {
        if info.name == "rope_freqs.weight" {
            let (factors, _) = gguf.tensor_f32(&info.name)?;
            cfg.rope_scaling = Some(RopeScaling::FreqFactors(factors));
            continue;
        }
        let Some(hf_name) = hf_name(&info.name) else {
            continue;
        };
        let (mut data, shape) = gguf.tensor_f32(&info.name)?;
        let row_len: usize = shape[1..].iter().product();
        if hf_name.contains("self_attn.q_proj") {
            data = unpermute_rows(&data, cfg.num_attention_heads, row_len);
        } else if hf_name.contains("self_attn.k_proj") {
            data = unpermute_rows(&data, cfg.num_key_value_heads, row_len);
        }
        let t = Tensor::from_vec(data, shape, device)
            .with_context(|| format!("{}: tensor {}", gguf.path.display(), info.name))?;
        weights.insert(hf_name, t);
    }
    Ok((cfg, weights))
}

/// The HF name of a llama.cpp tensor name; None for tensors Hone does not use.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let fixed = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    let hf_module = LAYER_NAMES.iter().find(|(g, _)| *g == module)?.1;
    Some(format!("model.layers.{layer}.{hf_module}.{kind}"))
}

/// The llama.cpp name of an HF tensor name (the inverse of [`hf_name`]); None for tensors llama.cpp
/// has no name for.
pub fn gguf_name(hf_name: &str) -> Option<String> {
    let fixed = match hf_name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = tail.rsplit_once('.')?;
    let gguf_module = LAYER_NAMES.iter().find(|(_, h)| *h == module)?.0;
    Some(format!("blk.{layer}.{gguf_module}.{kind}"))
}

/// llama.cpp module names within a block and their HF equivalents.
pub const LAYER_NAMES: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// Undo llama.cpp's q/k permutation. Within each head, GGUF row `i * 2 + j` holds HF row
/// `j * half + i` (HF keeps the two rotated halves apart; llama.cpp interleaves them).
pub fn unpermute_rows(data: &[f32], n_heads: usize, row_len: usize) -> Vec<f32> {
    permute_rows_with(data, n_heads, row_len, |half, r| (r % half) * 2 + r / half)
}

/// Apply llama.cpp's q/k permutation (the inverse of [`unpermute_rows`]), for writing GGUF.
pub fn permute_rows(data: &[f32], n_heads: usize, row_len: usize) -> Vec<f32> {
    permute_rows_with(data, n_heads, row_len, |half, r| (r % 2) * half + r / 2)
}

/// Output row `r` of each head is copied from input row `src(half, r)` of that head.
fn permute_rows_with(
    data: &[f32],
    n_heads: usize,
    row_len: usize,
    src: impl Fn(usize, usize) -> usize,
) -> Vec<f32> {
    let n_rows = data.len() / row_len;
    let head_dim = n_rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_heads {
        for r in 0..head_dim {
            let from = (h * head_dim + src(half, r)) * row_len;
            let to = (h * head_dim + r) * row_len;
            out[to..to + row_len].copy_from_slice(&data[from..from + row_len]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_hf_names() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight").unwrap(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias").unwrap(),
            "model.layers.0.self_attn.k_proj.bias"
        );
        assert_eq!(
            hf_name("blk.11.ffn_down.weight").unwrap(),
            "model.layers.11.mlp.down_proj.weight"
        );
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }

    #[test]
    fn hf_names_map_back_to_gguf_names() {
        for name in [
            "token_embd.weight",
            "output_norm.weight",
            "output.weight",
            "blk.0.attn_q.bias",
            "blk.12.ffn_gate.weight",
        ] {
            assert_eq!(gguf_name(&hf_name(name).unwrap()).unwrap(), name);
        }
        assert_eq!(gguf_name("model.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn permutation_matches_llama_cpp_and_round_trips() {
        // One head of dim 4, rows of length 1: HF rows [a0 a1 | b0 b1] interleave to [a0 b0 a1 b1].
        let hf = [0.0, 1.0, 10.0, 11.0];
        assert_eq!(permute_rows(&hf, 1, 1), vec![0.0, 10.0, 1.0, 11.0]);
        let data: Vec<f32> = (0..2 * 8 * 3).map(|x| x as f32).collect();
        assert_eq!(unpermute_rows(&permute_rows(&data, 2, 3), 2, 3), data);
    }
}
