//! The 16-bit float types, one element per "block": F16 (IEEE half) and BF16 (bfloat16).
//!
//! Widening to f32 is exact; narrowing rounds to nearest even, as ggml and numpy do. NaN payloads
//! are outside the contract: the F16C instruction `half` uses quiets signalling NaNs, numpy does not.

use half::f16;

pub(super) fn dequantize_f16(b: &[u8; 2], y: &mut [f32; 1]) {
    y[0] = f16::from_bits(u16::from_le_bytes(*b)).to_f32();
}

pub(super) fn dequantize_bf16(b: &[u8; 2], y: &mut [f32; 1]) {
    y[0] = f32::from_bits((u16::from_le_bytes(*b) as u32) << 16);
}

pub(super) fn quantize_f16(x: &[f32; 1], q: &mut [u8; 2]) {
    *q = super::f16_bits(x[0]);
}

/// ggml's `ggml_compute_fp32_to_bf16`: NaNs become quiet NaNs (keeping sign and top payload bits),
/// everything else rounds to nearest even (overflowing to infinity).
pub(super) fn quantize_bf16(x: &[f32; 1], q: &mut [u8; 2]) {
    let mut bits = x[0].to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        bits = (bits & 0xffff_0000) | 0x0040_0000;
    }
    let rounded = (bits as u64 + 0x7fff + ((bits >> 16) & 1) as u64) >> 16;
    *q = (rounded as u16).to_le_bytes();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bf16(x: f32) -> u16 {
        let mut q = [0; 2];
        quantize_bf16(&[x], &mut q);
        u16::from_le_bytes(q)
    }

    #[test]
    fn bf16_rounds_ties_to_even_and_quiets_nans() {
        assert_eq!(bf16(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even stays
        assert_eq!(bf16(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, odd rounds up
        assert_eq!(bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(bf16(f32::MAX), 0x7f80); // overflows to infinity
        assert_eq!(bf16(f32::from_bits(0x7f80_0001)), 0x7fc0); // signalling NaN made quiet
        assert_eq!(bf16(f32::from_bits(0xffa0_0000)), 0xffe0);
    }

    #[test]
    fn f16_round_trips_every_finite_value() {
        for bits in 0..=u16::MAX {
            if bits & 0x7c00 == 0x7c00 {
                continue; // infinities and NaNs
            }
            let mut y = [0.0];
            dequantize_f16(&bits.to_le_bytes(), &mut y);
            let mut q = [0; 2];
            quantize_f16(&y, &mut q);
            assert_eq!(u16::from_le_bytes(q), bits, "{bits:#06x}");
        }
    }
}
