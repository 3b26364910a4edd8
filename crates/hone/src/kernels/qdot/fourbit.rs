//! Dot products of weight rows in bitsandbytes' 4-bit types (NF4, FP4: a QLoRA base quantized at
//! load) with f32 activations, for the few-row products of evaluation and generation during a
//! run. Each 64-value block is decoded through its 16-entry code table into registers, multiplied
//! with the activations, and scaled by the block's absmax once.
//!
//! A portable loop the compiler vectorizes: training's many-row products decode tiles for the GEMM
//! instead ([`crate::kernels::stored`]), so this path is not where a QLoRA run spends its time.

use super::float16::DotF32;
use crate::quant::bnb::{FourBit, BLOCK, BLOCK_BYTES};
use crate::quant::GgmlType;

/// The dot product for `ty` (NF4 or FP4); None for any other type.
pub fn dot_f32(ty: GgmlType) -> Option<DotF32> {
    match ty {
        GgmlType::Nf4 => Some(dot_nf4 as DotF32),
        GgmlType::Fp4 => Some(dot_fp4 as DotF32),
        _ => None,
    }
}

fn dot_nf4(w: &[u8], x: &[f32]) -> f32 {
    dot(FourBit::Nf4.codes(), w, x)
}

fn dot_fp4(w: &[u8], x: &[f32]) -> f32 {
    dot(FourBit::Fp4.codes(), w, x)
}

fn dot(codes: &[f32; 16], w: &[u8], x: &[f32]) -> f32 {
    assert_eq!(
        w.len() / BLOCK_BYTES * BLOCK,
        x.len(),
        "weight row is not {} 4-bit values",
        x.len()
    );
    let mut total = 0f32;
    for (block, x) in w.chunks_exact(BLOCK_BYTES).zip(x.chunks_exact(BLOCK)) {
        let absmax = f32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        let mut lanes = [0f32; 16];
        for (bytes, x) in block[4..].chunks_exact(8).zip(x.chunks_exact(16)) {
            for (j, &byte) in bytes.iter().enumerate() {
                lanes[2 * j] += codes[(byte >> 4) as usize] * x[2 * j];
                lanes[2 * j + 1] += codes[(byte & 0xf) as usize] * x[2 * j + 1];
            }
        }
        total += lanes.iter().sum::<f32>() * absmax;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::bnb;

    #[test]
    fn equals_the_dot_product_with_the_dequantized_row() {
        let w: Vec<f32> = (0..192)
            .map(|i| ((i * 29 % 83) as f32 - 41.0) * 0.02)
            .collect();
        let x: Vec<f32> = (0..192)
            .map(|i| ((i * 13 % 37) as f32 - 18.0) * 0.1)
            .collect();
        for (ty, four) in [(GgmlType::Nf4, FourBit::Nf4), (GgmlType::Fp4, FourBit::Fp4)] {
            let q = bnb::quantize(&w, four, false);
            let want: f64 = q
                .dequantize(four)
                .iter()
                .zip(&x)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let got = dot_f32(ty).unwrap()(&q.to_blocks(), &x);
            assert!(
                (f64::from(got) - want).abs() < 1e-4,
                "{ty:?}: {got} vs {want}"
            );
        }
    }
}
