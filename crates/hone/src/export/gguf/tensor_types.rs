//! Which ggml type each tensor of an export gets, as llama.cpp's own tools decide it.
//!
//! f32/f16/bf16/q8_0 follow `convert_hf_to_gguf.py`: 1-D tensors and norms stay f32, every other
//! weight takes the requested type, and a q8_0 weight whose rows are not whole 32-value blocks falls
//! back to f16. q4_0/q4_k_m follow `llama-quantize` (`llama_tensor_get_type` in
//! `src/llama-quant.cpp`): the output head (the token embedding when the head is tied) gets q6_k,
//! q4_k_m gives q6_k to `attn_v` and `ffn_down` in the layers `use_more_bits` picks, and a tensor
//! whose rows are not whole blocks of its type falls back (q4_k → q5_0, q6_k → q8_0, then f16).

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};

use crate::quant::GgmlType;

/// The quantizations `hone export` writes, named as llama.cpp names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufQuant {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4KM,
}

impl GgufQuant {
    pub const ALL: [GgufQuant; 6] = [
        GgufQuant::F32,
        GgufQuant::F16,
        GgufQuant::Bf16,
        GgufQuant::Q8_0,
        GgufQuant::Q4_0,
        GgufQuant::Q4KM,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GgufQuant::F32 => "f32",
            GgufQuant::F16 => "f16",
            GgufQuant::Bf16 => "bf16",
            GgufQuant::Q8_0 => "q8_0",
            GgufQuant::Q4_0 => "q4_0",
            GgufQuant::Q4KM => "q4_k_m",
        }
    }

    /// `general.file_type`: llama.cpp's `llama_ftype` value.
    pub fn file_type(self) -> u32 {
        match self {
            GgufQuant::F32 => 0,
            GgufQuant::F16 => 1,
            GgufQuant::Q4_0 => 2,
            GgufQuant::Q8_0 => 7,
            GgufQuant::Q4KM => 15,
            GgufQuant::Bf16 => 32,
        }
    }
}

impl fmt::Display for GgufQuant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GgufQuant {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match GgufQuant::ALL
            .iter()
            .find(|q| q.name() == s.to_ascii_lowercase())
        {
            Some(q) => Ok(*q),
            None => {
                let names: Vec<&str> = GgufQuant::ALL.iter().map(|q| q.name()).collect();
                bail!(
                    "unknown quantization {s:?} (Hone writes {})",
                    names.join(", ")
                )
            }
        }
    }
}

/// Where a tensor sits in the model, as far as the type rules care.
#[derive(Debug, Clone, Copy)]
pub struct TensorPlace<'a> {
    /// llama.cpp tensor name, e.g. `blk.3.attn_v.weight`.
    pub name: &'a str,
    /// Row-major shape; the last dimension is the row that blocks must divide.
    pub shape: &'a [usize],
    pub n_layers: usize,
    /// The model has its own `output.weight` (not tied to the token embedding).
    pub has_output: bool,
}

/// The ggml type `quant` stores this tensor as.
pub fn tensor_type(quant: GgufQuant, place: &TensorPlace) -> GgmlType {
    let name = place.name;
    let kept_f32 = place.shape.len() < 2
        || !name.ends_with(".weight")
        || name.ends_with("_norm.weight")
        || name == "rope_freqs.weight";
    if kept_f32 {
        return GgmlType::F32;
    }
    let row = place.shape[place.shape.len() - 1];
    let wanted = match quant {
        GgufQuant::F32 => return GgmlType::F32,
        GgufQuant::F16 => return GgmlType::F16,
        GgufQuant::Bf16 => return GgmlType::BF16,
        GgufQuant::Q8_0 => GgmlType::Q8_0,
        GgufQuant::Q4_0 | GgufQuant::Q4KM => llama_quantize_type(quant, place),
    };
    fallback(wanted, row)
}

/// `llama_tensor_get_type` before its row-size fallback, for the llama architecture.
fn llama_quantize_type(quant: GgufQuant, place: &TensorPlace) -> GgmlType {
    let name = place.name;
    let is_head = name == "output.weight" || (!place.has_output && name == "token_embd.weight");
    if is_head {
        return GgmlType::Q6K;
    }
    if quant == GgufQuant::Q4_0 {
        return GgmlType::Q4_0;
    }
    let more_bits_here = || layer_of(name).is_some_and(|i| use_more_bits(i, place.n_layers));
    if (name.contains("attn_v.weight") || name.contains("ffn_down")) && more_bits_here() {
        GgmlType::Q6K
    } else {
        GgmlType::Q4K
    }
}

/// llama.cpp's choice of layers that get more bits: the first and last eighth, and every third
/// layer between.
pub fn use_more_bits(layer: usize, n_layers: usize) -> bool {
    let eighth = n_layers / 8;
    layer < eighth || layer >= 7 * n_layers / 8 || (layer - eighth) % 3 == 2
}

/// The layer index of a `blk.N.*` name.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// A type whose blocks fit rows of `row` values: `wanted`, or llama.cpp's fallback for it. llama.cpp
/// refuses a q4_0/q8_0 tensor with such rows; Hone stores it as f16, as `convert_hf_to_gguf.py` does.
fn fallback(wanted: GgmlType, row: usize) -> GgmlType {
    if row.is_multiple_of(wanted.block_size()) {
        return wanted;
    }
    let next = match wanted {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q6K => GgmlType::Q8_0,
        _ => GgmlType::F16,
    };
    if row.is_multiple_of(next.block_size()) {
        next
    } else {
        GgmlType::F16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(quant: GgufQuant, name: &str, shape: &[usize], has_output: bool) -> GgmlType {
        tensor_type(
            quant,
            &TensorPlace {
                name,
                shape,
                n_layers: 30,
                has_output,
            },
        )
    }

    #[test]
    fn quant_names_parse_and_refuse_unknown() {
        for q in GgufQuant::ALL {
            assert_eq!(q.name().parse::<GgufQuant>().unwrap(), q);
        }
        assert_eq!("Q4_K_M".parse::<GgufQuant>().unwrap(), GgufQuant::Q4KM);
        let err = "q3_k".parse::<GgufQuant>().unwrap_err().to_string();
        assert!(err.contains("q3_k") && err.contains("q4_k_m"), "{err}");
    }

    #[test]
    fn norms_biases_and_vectors_stay_f32() {
        for q in GgufQuant::ALL {
            assert_eq!(ty(q, "blk.0.attn_norm.weight", &[576], true), GgmlType::F32);
            assert_eq!(ty(q, "blk.0.attn_q.bias", &[576], true), GgmlType::F32);
            assert_eq!(ty(q, "rope_freqs.weight", &[32], true), GgmlType::F32);
        }
    }

    #[test]
    fn convert_types_with_q8_0_falling_back_to_f16() {
        assert_eq!(
            ty(GgufQuant::F16, "blk.0.attn_q.weight", &[16, 16], true),
            GgmlType::F16
        );
        assert_eq!(
            ty(GgufQuant::Bf16, "output.weight", &[9, 7], true),
            GgmlType::BF16
        );
        assert_eq!(
            ty(GgufQuant::Q8_0, "token_embd.weight", &[600, 64], false),
            GgmlType::Q8_0
        );
        assert_eq!(
            ty(GgufQuant::Q8_0, "blk.1.ffn_down.weight", &[32, 80], true),
            GgmlType::F16
        );
    }

    #[test]
    fn q4_k_m_mix_for_the_default_model_geometry() {
        // SmolLM2-135M: 576-wide rows (not whole 256 blocks), ffn_down rows of 1536 (6 blocks).
        let q = GgufQuant::Q4KM;
        // Tied head: the embedding is the head, q6_k falls back to q8_0.
        assert_eq!(
            ty(q, "token_embd.weight", &[49152, 576], false),
            GgmlType::Q8_0
        );
        assert_eq!(
            ty(q, "blk.5.attn_q.weight", &[576, 576], false),
            GgmlType::Q5_0
        );
        // Layer 0 is in the first eighth (30 / 8 = 3 layers): more bits.
        assert_eq!(
            ty(q, "blk.0.attn_v.weight", &[192, 576], false),
            GgmlType::Q8_0
        );
        assert_eq!(
            ty(q, "blk.0.ffn_down.weight", &[576, 1536], false),
            GgmlType::Q6K
        );
        // Layer 4: (4 - 3) % 3 != 2, so the default type; layer 5: (5 - 3) % 3 == 2.
        assert_eq!(
            ty(q, "blk.4.ffn_down.weight", &[576, 1536], false),
            GgmlType::Q4K
        );
        assert_eq!(
            ty(q, "blk.5.ffn_down.weight", &[576, 1536], false),
            GgmlType::Q6K
        );
        // Layers from 7 * 30 / 8 = 26 on: more bits.
        assert_eq!(
            ty(q, "blk.26.ffn_down.weight", &[576, 1536], false),
            GgmlType::Q6K
        );
        assert_eq!(
            ty(q, "blk.25.ffn_down.weight", &[576, 1536], false),
            GgmlType::Q4K
        );
        // Whole 256 rows keep the k-quants; an untied head gets q6_k and the embedding q4_k.
        assert_eq!(ty(q, "output.weight", &[600, 512], true), GgmlType::Q6K);
        assert_eq!(ty(q, "token_embd.weight", &[600, 512], true), GgmlType::Q4K);
        assert_eq!(
            ty(q, "blk.9.attn_k.weight", &[64, 512], true),
            GgmlType::Q4K
        );
        // Rows that fit no block size end as f16.
        assert_eq!(ty(q, "blk.9.attn_k.weight", &[16, 16], true), GgmlType::F16);
    }

    #[test]
    fn q4_0_mix() {
        let q = GgufQuant::Q4_0;
        assert_eq!(ty(q, "output.weight", &[600, 512], true), GgmlType::Q6K);
        assert_eq!(ty(q, "output.weight", &[600, 64], true), GgmlType::Q8_0);
        assert_eq!(ty(q, "token_embd.weight", &[600, 64], true), GgmlType::Q4_0);
        assert_eq!(
            ty(q, "blk.0.ffn_down.weight", &[64, 512], true),
            GgmlType::Q4_0
        );
        assert_eq!(
            ty(q, "blk.0.ffn_down.weight", &[32, 80], true),
            GgmlType::F16
        );
    }

    #[test]
    fn more_bits_layers_match_llama_cpp() {
        let picked: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        assert_eq!(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }
}
