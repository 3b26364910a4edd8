//! Dequantization of the 256-element "K-quant" super-blocks: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
//!
//! Each super-block holds an f16 scale `d` (and for Q2/Q4/Q5 an f16 `dmin`) and per-sub-block
//! 4-, 6- or 8-bit scales. The byte layouts are ggml's `block_q*_K` structs; element order follows
//! `dequantize_row_q*_K`. The f32 arithmetic is done in ggml's order (scale the sub-block scale
//! first, then the quant, then subtract the minimum), two roundings and no fused multiply-add,
//! which is what makes the results bit-exact with ggml and gguf-py.

use super::f16_at;

/// Q2_K: scales[16] (low nibble scale, high nibble min), qs[64] (2 bits), d, dmin.
/// Element `128h + 32s + l` is bits `2s..2s+2` of `qs[32h + l]`; sub-blocks are 16 elements.
pub(super) fn dequantize_q2_k(b: &[u8; 84], y: &mut [f32; 256]) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (i, y) in y.chunks_exact_mut(16).enumerate() {
        let sc = scales[i];
        let dl = d * (sc & 0xf) as f32;
        let ml = dmin * (sc >> 4) as f32;
        let (h, s) = (i / 8, (i / 2) % 4);
        let q = &qs[32 * h + 16 * (i % 2)..][..16];
        for (y, &q) in y.iter_mut().zip(q) {
            *y = dl * ((q >> (2 * s)) & 3) as f32 - ml;
        }
    }
}

/// The sixteen 6-bit Q3_K scales, packed as low nibbles in bytes 0..8 and 2-bit high parts in
/// bytes 8..12, stored with an offset of 32.
fn q3_k_scales(p: &[u8]) -> [i8; 16] {
    std::array::from_fn(|i| {
        let lo = if i < 8 { p[i] & 0xf } else { p[i - 8] >> 4 };
        let hi = (p[8 + i % 4] >> (2 * (i / 4))) & 3;
        (lo | hi << 4) as i8 - 32
    })
}

/// Q3_K: hmask[32] (third bit), qs[64] (low 2 bits, as Q2_K), scales[12], d.
/// Element `32b + l` takes its third bit from bit `b` of `hmask[l]`; a clear bit subtracts 4.
pub(super) fn dequantize_q3_k(b: &[u8; 110], y: &mut [f32; 256]) {
    let (hmask, qs) = (&b[0..32], &b[32..96]);
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    for (i, y) in y.chunks_exact_mut(16).enumerate() {
        let dl = d * scales[i] as f32;
        let (h, s, half) = (i / 8, (i / 2) % 4, 16 * (i % 2));
        let (q, bit) = (&qs[32 * h + half..][..16], i / 2);
        for (l, y) in y.iter_mut().enumerate() {
            let low = ((q[l] >> (2 * s)) & 3) as i8;
            let high = if hmask[half + l] >> bit & 1 != 0 {
                0
            } else {
                4
            };
            *y = dl * (low - high) as f32;
        }
    }
}

/// Scale and minimum of sub-block `j` (0..8) from the 12 packed bytes of Q4_K / Q5_K: 6 bits
/// each, `j < 4` in the low bits of bytes j and j+4, `j >= 4` split over byte j+4 and the top
/// bits of bytes j-4 and j (ggml's `get_scale_min_k4`).
pub(super) fn scale_min_k4(j: usize, p: &[u8]) -> (u8, u8) {
    if j < 4 {
        (p[j] & 63, p[j + 4] & 63)
    } else {
        (
            (p[j + 4] & 0xf) | (p[j - 4] >> 6) << 4,
            (p[j + 4] >> 4) | (p[j] >> 6) << 4,
        )
    }
}

/// Q4_K: d, dmin, scales[12], qs[128]. Sub-block `j` (32 elements) is the low (even `j`) or high
/// (odd `j`) nibbles of `qs[32 * (j / 2)..][..32]`.
pub(super) fn dequantize_q4_k(b: &[u8; 144], y: &mut [f32; 256]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (j, y) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let (dl, ml) = (d * sc as f32, dmin * m as f32);
        let (q, shift) = (&qs[32 * (j / 2)..][..32], 4 * (j % 2));
        for (y, &q) in y.iter_mut().zip(q) {
            *y = dl * ((q >> shift) & 0xf) as f32 - ml;
        }
    }
}

/// Q5_K: as Q4_K with qh[32] before qs: the fifth bit of element `l` of sub-block `j` is bit `j`
/// of `qh[l]`.
pub(super) fn dequantize_q5_k(b: &[u8; 176], y: &mut [f32; 256]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (j, y) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(j, scales);
        let (dl, ml) = (d * sc as f32, dmin * m as f32);
        let (q, shift) = (&qs[32 * (j / 2)..][..32], 4 * (j % 2));
        for (l, y) in y.iter_mut().enumerate() {
            let v = ((q[l] >> shift) & 0xf) | ((qh[l] >> j) & 1) << 4;
            *y = dl * v as f32 - ml;
        }
    }
}

/// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (i8), d. In each 128-element
/// half `h`, element `32k + l` takes nibble `k / 2` of `ql[64h + 32(k % 2) + l]` and bits
/// `2k..2k+2` of `qh[32h + l]`; values are offset by 32.
pub(super) fn dequantize_q6_k(b: &[u8; 210], y: &mut [f32; 256]) {
    let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for (i, y) in y.chunks_exact_mut(16).enumerate() {
        let dl = d * scales[i] as i8 as f32;
        let (h, k, half) = (i / 8, (i / 2) % 4, 16 * (i % 2));
        let low = &ql[64 * h + 32 * (k % 2) + half..][..16];
        let high = &qh[32 * h + half..][..16];
        let shift = 4 * (k / 2);
        for (l, y) in y.iter_mut().enumerate() {
            let v = ((low[l] >> shift) & 0xf) | ((high[l] >> (2 * k)) & 3) << 4;
            *y = dl * (v as i32 - 32) as f32;
        }
    }
}
