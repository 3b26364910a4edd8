//! The 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//!
//! Block layouts are ggml's (`block_q4_0` etc.): an f16 scale `d` (and for the `_1` types an f16
//! minimum `m`), for the 5-bit types a little-endian u32 of high bits `qh`, then the low bits.
//! Element `j` of the first half lives in the low nibble of `qs[j]`, element `j + 16` in its high
//! nibble. Quantizers reproduce `quantize_row_*_ref` operation for operation, so the rounding of
//! every f32 step (and hence every byte) matches ggml and gguf-py.

use super::{f16_at, f16_bits};

pub(super) fn dequantize_q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0xf) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

pub(super) fn dequantize_q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0xf) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

pub(super) fn dequantize_q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let lo = (qs[j] & 0xf) as u32 | ((qh >> j) & 1) << 4;
        let hi = (qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = (lo as i32 - 16) as f32 * d;
        y[j + 16] = (hi as i32 - 16) as f32 * d;
    }
}

pub(super) fn dequantize_q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let lo = (qs[j] & 0xf) as u32 | ((qh >> j) & 1) << 4;
        let hi = (qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = lo as f32 * d + m;
        y[j + 16] = hi as f32 * d + m;
    }
}

pub(super) fn dequantize_q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for (y, &q) in y.iter_mut().zip(&b[2..34]) {
        *y = q as i8 as f32 * d;
    }
}

/// ggml's `d ? 1.0f/d : 0.0f`: an all-zero block quantizes to zeros instead of NaNs.
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// The value of largest magnitude, keeping its sign; the first one wins a tie, as in ggml.
fn signed_absmax(x: &[f32; 32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Written with ggml's comparisons rather than `f32::min`, which may pick either of -0.0 and 0.0
/// (and the sign of the stored minimum is a byte of the output).
fn min_max(x: &[f32; 32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Packs 32 quants of up to 5 bits: low nibbles into `qs` (element j and j+16 share a byte),
/// bit 4 of element j into bit j of the returned `qh`.
fn pack_nibbles(l: &[u8; 32], qs: &mut [u8]) -> u32 {
    let mut qh = 0u32;
    for j in 0..16 {
        qs[j] = (l[j] & 0xf) | (l[j + 16] & 0xf) << 4;
        qh |= ((l[j] >> 4) as u32 & 1) << j | ((l[j + 16] >> 4) as u32 & 1) << (j + 16);
    }
    qh
}

pub(super) fn quantize_q4_0(x: &[f32; 32], q: &mut [u8; 18]) {
    let d = signed_absmax(x) / -8.0;
    let id = inverse(d);
    let l = x.map(|v| ((v * id + 8.5) as i8).min(15) as u8);
    q[..2].copy_from_slice(&f16_bits(d));
    pack_nibbles(&l, &mut q[2..]);
}

pub(super) fn quantize_q4_1(x: &[f32; 32], q: &mut [u8; 20]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse(d);
    let l = x.map(|v| (((v - min) * id + 0.5) as i8).min(15) as u8);
    q[..2].copy_from_slice(&f16_bits(d));
    q[2..4].copy_from_slice(&f16_bits(min));
    pack_nibbles(&l, &mut q[4..]);
}

pub(super) fn quantize_q5_0(x: &[f32; 32], q: &mut [u8; 22]) {
    let d = signed_absmax(x) / -16.0;
    let id = inverse(d);
    let l = x.map(|v| ((v * id + 16.5) as i8).min(31) as u8);
    q[..2].copy_from_slice(&f16_bits(d));
    let qh = pack_nibbles(&l, &mut q[6..]);
    q[2..6].copy_from_slice(&qh.to_le_bytes());
}

pub(super) fn quantize_q5_1(x: &[f32; 32], q: &mut [u8; 24]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse(d);
    // ggml does not clamp here: (max - min) * id rounds to at most 31.
    let l = x.map(|v| ((v - min) * id + 0.5) as u8);
    q[..2].copy_from_slice(&f16_bits(d));
    q[2..4].copy_from_slice(&f16_bits(min));
    let qh = pack_nibbles(&l, &mut q[8..]);
    q[4..8].copy_from_slice(&qh.to_le_bytes());
}

pub(super) fn quantize_q8_0(x: &[f32; 32], q: &mut [u8; 34]) {
    let amax = x
        .iter()
        .fold(0f32, |a, &v| if a > v.abs() { a } else { v.abs() });
    let d = amax / 127.0;
    let id = inverse(d);
    q[..2].copy_from_slice(&f16_bits(d));
    for (q, &v) in q[2..].iter_mut().zip(x) {
        // `round` is C's roundf: halves go away from zero.
        *q = (v * id).round() as i8 as u8;
    }
}
