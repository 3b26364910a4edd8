//! Quantization to Q4_K and Q6_K, as ggml's reference quantizers `quantize_row_q4_K_ref` and
//! `quantize_row_q6_K_ref` (llama-quantize without an importance matrix) compute it.
//!
//! These search for good scales iteratively, so a single differently rounded f32 operation can
//! change which candidate wins: every expression keeps ggml's evaluation order and f32 types.

use super::kquants::scale_min_k4;
use super::{f16_at, f16_bits};

/// Below this a group counts as all zero (ggml's GROUP_MAX_EPS).
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's `nearest_int`: round half to even by adding 1.5 * 2^23 and reading the mantissa.
/// Kept as the bit trick (not `round_ties_even`) so out-of-range inputs give ggml's results too.
fn nearest_int(v: f32) -> i32 {
    ((v + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml's `make_qkx2_quants` for one 32-element sub-block with nmax = 15 levels and the squared
/// error: fits `x ≈ scale * l - min` with `l` in 0..=15, trying `nstep + 1` candidate scales.
/// Returns `(scale, min)` and leaves the levels in `l`.
fn make_qkx2_quants(x: &[f32], weights: &[f32; 32], l: &mut [u8]) -> (f32, f32) {
    const NMAX: i32 = 15;
    const RMIN: f32 = -1.0;
    const RDELTA: f32 = 0.1;
    const NSTEP: i32 = 20;
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..32 {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    let level = |iscale: f32, x: f32, min: f32| nearest_int(iscale * (x - min)).clamp(0, NMAX);
    let mut iscale = NMAX as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..32 {
        l[i] = level(iscale, x[i], min) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut laux = [0u8; 32];
    for is in 0..=NSTEP {
        iscale = (RMIN + RDELTA * is as f32 + NMAX as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..32 {
            let li = level(iscale, x[i], min);
            laux[i] = li as u8;
            let wl = weights[i] * li as f32;
            sum_l += wl;
            sum_l2 += wl * li as f32;
            sum_xl += wl * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..32 {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                l.copy_from_slice(&laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Q4_K: eight 32-element sub-blocks, each with a 6-bit scale and min (see `scale_min_k4`) and
/// 4-bit levels; `d` and `dmin` scale the 6-bit numbers.
pub(super) fn quantize_q4_k(x: &[f32; 256], q: &mut [u8; 144]) {
    let mut levels = [0u8; 256];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|l| av_x + xs[l].abs());
        (scales[j], mins[j]) = make_qkx2_quants(xs, &weights, &mut levels[32 * j..32 * j + 32]);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let packed = &mut q[4..16];
    for j in 0..8 {
        // ggml stores nearest_int in a uint8_t (wrapping) before clamping to 63.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xf) | (lm & 0xf) << 4;
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    q[0..2].copy_from_slice(&f16_bits(max_scale / 63.0));
    q[2..4].copy_from_slice(&f16_bits(max_min / 63.0));
    // Re-derive the levels against the scales as actually stored (rounded to 6 bits and f16).
    let (d_all, dmin_all) = (f16_at(q, 0), f16_at(q, 2));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &q[4..16]);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + dm) / d).clamp(0, 15) as u8;
        }
    }
    let qs = &mut q[16..144];
    for (c, chunk) in levels.chunks_exact(64).enumerate() {
        for l in 0..32 {
            qs[32 * c + l] = chunk[l] | chunk[l + 32] << 4;
        }
    }
}

/// ggml's `make_qx_quants` with rmse_type 1 (weights x²) for one 16-element Q6_K sub-block with
/// nmax = 32: symmetric levels -32..=31, stored offset by 32 in `l`. Returns the scale.
fn make_qx_quants(x: &[f32], l: &mut [u8]) -> f32 {
    const NMAX: i32 = 32;
    let (mut max, mut amax) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, x: f32| nearest_int(iscale * x).clamp(-NMAX, NMAX - 1);
    // Sums of w·x·l and w·l² with w = x², evaluated as ggml does: (w*x)*l and (w*l)*l.
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let li = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * li;
            suml2 += w * li * li;
        }
        (sumlx, suml2)
    };
    let mut iscale = -(NMAX as f32) / max;
    let (sumlx, suml2) = sums(iscale);
    for (l, &v) in l.iter_mut().zip(x) {
        *l = (level(iscale, v) + NMAX) as u8;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(NMAX as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in l.iter_mut().zip(x) {
                *l = (level(iscale, v) + NMAX) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q6_K: ql[128] (low 4 bits), qh[64] (high 2 bits), sixteen i8 sub-block scales, f16 `d`.
pub(super) fn quantize_q6_k(x: &[f32; 256], q: &mut [u8; 210]) {
    let mut levels = [0u8; 256];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for (ib, xs) in x.chunks_exact(16).enumerate() {
        scales[ib] = make_qx_quants(xs, &mut levels[16 * ib..16 * ib + 16]);
        if scales[ib].abs() > max_abs_scale {
            max_abs_scale = scales[ib].abs();
            max_scale = scales[ib];
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        q.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    q[208..210].copy_from_slice(&f16_bits(1.0 / iscale));
    for ib in 0..16 {
        // ggml clamps to 127 only, then stores into an int8_t (wrapping).
        q[192 + ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    let d_all = f16_at(q, 208);
    for j in 0..16 {
        let d = d_all * q[192 + j] as i8 as f32;
        if d == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            levels[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as u8;
        }
    }
    let (ql, qh) = q[..192].split_at_mut(128);
    for (h, chunk) in levels.chunks_exact(128).enumerate() {
        for l in 0..32 {
            let [a, b, c, e] = [chunk[l], chunk[l + 32], chunk[l + 64], chunk[l + 96]];
            ql[64 * h + l] = (a & 0xf) | (c & 0xf) << 4;
            ql[64 * h + l + 32] = (b & 0xf) | (e & 0xf) << 4;
            qh[32 * h + l] = (a >> 4) | (b >> 4) << 2 | (c >> 4) << 4 | (e >> 4) << 6;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::nearest_int;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        let cases = [
            (0.5, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (2.4999, 2),
            (-7.6, -8),
        ];
        for (v, want) in cases {
            assert_eq!(nearest_int(v), want, "{v}");
        }
    }
}
