//! Quantizing an unquantized base at load, for QLoRA on a Hugging Face (or f16/bf16 GGUF) model:
//! the decoder layers' matrices become 4-bit (bitsandbytes' NF4/FP4) or 8-bit (Q8_0) blocks, as
//! transformers' bitsandbytes integration replaces every `nn.Linear` but the LM head. Embeddings,
//! the LM head, norms and biases stay as loaded.
//!
//! One matrix at a time is widened to f32 and quantized, so the peak is the quantized base plus
//! one f32 matrix and the file's pages, never the f32 model; the file's map is released after.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use candle_core::Tensor;

use super::linear::Weight;
use crate::kernels::stored::{StoredMatrix, WeightBytes};
use crate::quant::bnb::{self, FourBit};
use crate::quant::{self, GgmlType};

/// The format the base's matrices are quantized to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseQuantization {
    /// bitsandbytes' 4-bit blocks of 64, optionally with double-quantized absmax values.
    FourBit { ty: FourBit, double: bool },
    /// ggml's Q8_0: blocks of 32 int8 values with an f16 scale (bitsandbytes' 8-bit LLM.int8
    /// keeps outlier columns in 16 bits instead; Hone has no such mixed product).
    Q8_0,
}

impl BaseQuantization {
    /// The storage type the matrices get.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            BaseQuantization::FourBit {
                ty: FourBit::Nf4, ..
            } => GgmlType::Nf4,
            BaseQuantization::FourBit {
                ty: FourBit::Fp4, ..
            } => GgmlType::Fp4,
            BaseQuantization::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// How a log line names it: `NF4 (double quantization)`, `Q8_0`.
    pub fn describe(self) -> String {
        match self {
            BaseQuantization::FourBit { double: true, .. } => {
                format!("{} (double quantization)", self.ggml_type().name())
            }
            _ => self.ggml_type().name().to_string(),
        }
    }

    fn quantize(self, values: &[f32]) -> Result<Vec<u8>> {
        match self {
            BaseQuantization::FourBit { ty, double } => {
                Ok(bnb::quantize(values, ty, double).to_blocks())
            }
            BaseQuantization::Q8_0 => quant::quantize(GgmlType::Q8_0, values),
        }
    }
}

/// Whether `name` (an HF tensor name) is a matrix that bitsandbytes would quantize: a linear
/// layer's weight inside a decoder layer.
pub fn is_decoder_linear(name: &str) -> bool {
    name.starts_with("model.layers.") && name.ends_with("_proj.weight")
}

/// Quantizes every decoder-layer matrix of `weights` to `to`, returning the bytes they took
/// before and take after.
pub fn quantize_decoder_matrices(
    weights: &mut HashMap<String, Weight>,
    to: BaseQuantization,
) -> Result<(usize, usize)> {
    let ty = to.ggml_type();
    let mut names: Vec<String> = weights
        .keys()
        .filter(|n| is_decoder_linear(n))
        .cloned()
        .collect();
    names.sort();
    let (mut before, mut after) = (0, 0);
    for name in names {
        let weight = weights.get_mut(&name).expect("listed above");
        let (rows, cols, values, bytes) = match &*weight {
            Weight::F32(t) => {
                let (rows, cols) = t.dims2()?;
                let values = t.flatten_all()?.to_vec1::<f32>()?;
                (rows, cols, values, rows * cols * 4)
            }
            Weight::Stored(m) => (m.rows(), m.cols(), m.to_f32(), m.n_bytes()),
        };
        ensure!(
            cols.is_multiple_of(ty.block_size()),
            "{name}: rows of {cols} values are not whole {} blocks of {}, so the matrix cannot be \
             quantized to {}",
            ty.name(),
            ty.block_size(),
            ty.name()
        );
        let quantized = to.quantize(&values)?;
        after += quantized.len();
        before += bytes;
        let matrix = StoredMatrix::new(ty, rows, cols, WeightBytes::Owned(Arc::new(quantized)))
            .with_context(|| format!("{name}: quantizing to {}", ty.name()))?;
        *weight = Weight::Stored(matrix);
    }
    // Every page of the file was read; what stays as stored (the embedding, the head) is copied
    // out so the map, and those pages, are released.
    for weight in weights.values_mut() {
        if let Weight::Stored(m) = weight {
            *m = m.clone().into_owned();
        }
    }
    Ok((before, after))
}

/// Replaces every decoder-layer matrix of an f32 model by its quantization to `to`, dequantized:
/// the weights an adapter trained on the quantized base saw, to merge it into.
pub fn round_trip_decoder_matrices(
    weights: &mut HashMap<String, Tensor>,
    to: BaseQuantization,
) -> Result<()> {
    let ty = to.ggml_type();
    for (name, t) in weights.iter_mut().filter(|(n, _)| is_decoder_linear(n)) {
        let values = t.flatten_all()?.to_vec1::<f32>()?;
        let bytes = to
            .quantize(&values)
            .with_context(|| format!("{name}: quantizing to {}", ty.name()))?;
        let back = quant::dequantize(ty, &bytes, values.len())?;
        *t = Tensor::from_vec(back, t.dims(), t.device())?;
    }
    Ok(())
}

/// Whether a model file's tensor table ([`super::memory::stored_tensors`]) holds quantized matrices (a
/// quantized GGUF), so that `quantization_bit` trains on them as stored rather than quantizing
/// them.
pub fn is_quantized(stored: &HashMap<String, (GgmlType, u64)>) -> bool {
    stored.values().any(|(ty, _)| ty.is_quantized())
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn matrix(rows: usize, cols: usize) -> Weight {
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 31 % 67) as f32 - 33.0) * 0.01)
            .collect();
        Weight::F32(Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap())
    }

    #[test]
    fn quantizes_the_decoder_projections_only() {
        let mut weights: HashMap<String, Weight> = [
            ("model.layers.0.self_attn.q_proj.weight", matrix(4, 128)),
            ("model.layers.0.mlp.down_proj.weight", matrix(2, 64)),
            ("model.layers.0.input_layernorm.weight", matrix(1, 64)),
            ("model.embed_tokens.weight", matrix(8, 64)),
            ("lm_head.weight", matrix(8, 64)),
        ]
        .into_iter()
        .map(|(n, w)| (n.to_string(), w))
        .collect();
        let to = BaseQuantization::FourBit {
            ty: FourBit::Nf4,
            double: true,
        };
        let (before, after) = quantize_decoder_matrices(&mut weights, to).unwrap();
        assert_eq!(before, (4 * 128 + 2 * 64) * 4);
        assert_eq!(after, (8 + 2) * bnb::BLOCK_BYTES);
        for (name, w) in &weights {
            let nf4 = matches!(w, Weight::Stored(m) if m.ggml_type() == GgmlType::Nf4);
            assert_eq!(nf4, name.ends_with("_proj.weight"), "{name}");
        }
    }

    /// Each value comes back within the type's step of its block's largest magnitude: half a
    /// step of 127 levels for Q8_0 (plus its f16 scale's rounding), half the widest gap between
    /// NF4 codes (0.30, between -1 and -0.70).
    #[test]
    fn quantized_matrices_come_back_within_the_types_rounding() {
        for (to, bound) in [
            (BaseQuantization::Q8_0, 0.5 / 127.0 + 1.0 / 2048.0),
            (
                BaseQuantization::FourBit {
                    ty: FourBit::Nf4,
                    double: false,
                },
                0.31 / 2.0,
            ),
        ] {
            let original = matrix(6, 128);
            let Weight::F32(t) = &original else {
                unreachable!()
            };
            let want = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let name = "model.layers.3.mlp.up_proj.weight".to_string();
            let mut weights = HashMap::from([(name.clone(), original)]);
            quantize_decoder_matrices(&mut weights, to).unwrap();
            let Weight::Stored(m) = &weights[&name] else {
                panic!("not quantized")
            };
            let block = m.ggml_type().block_size();
            for (got, want) in m.to_f32().chunks(block).zip(want.chunks(block)) {
                let amax = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        (g - w).abs() <= bound * amax,
                        "{to:?}: {w} came back as {g}"
                    );
                }
            }
        }
    }

    #[test]
    fn refuses_rows_of_partial_blocks() {
        let mut weights = HashMap::from([(
            "model.layers.0.self_attn.o_proj.weight".to_string(),
            matrix(2, 96),
        )]);
        let err = quantize_decoder_matrices(&mut weights, BaseQuantization::Q8_0);
        assert!(err.is_ok(), "96 is whole Q8_0 blocks");
        let mut weights = HashMap::from([(
            "model.layers.0.self_attn.o_proj.weight".to_string(),
            matrix(2, 96),
        )]);
        let to = BaseQuantization::FourBit {
            ty: FourBit::Fp4,
            double: false,
        };
        let err = quantize_decoder_matrices(&mut weights, to)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("o_proj") && err.contains("FP4 blocks of 64"),
            "{err}"
        );
    }
}
