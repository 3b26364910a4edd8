//! Plain-Rust kernels, for any target. Each super-block is unpacked into 256 small signed quants,
//! multiplied with the activations in sixteen 16-element groups (loops the compiler vectorizes),
//! and the group sums combined with the integer sub-block scales; the f32 super-block scales are
//! applied once per block. Element order is that of `quant::kquants`' dequantizers.

use super::{blocks, f16_at, q3k_scales, scales_mins_k4, Q8KBlock};

/// `Σ_l q[16g + l]·y[16g + l]` for each group `g`.
fn group_sums(q: &[i8; 256], y: &[i8; 256]) -> [i32; 16] {
    let mut sums = [0i32; 16];
    for ((sum, q), y) in sums
        .iter_mut()
        .zip(q.chunks_exact(16))
        .zip(y.chunks_exact(16))
    {
        *sum = q.iter().zip(y).map(|(&a, &b)| a as i32 * b as i32).sum();
    }
    sums
}

/// `Σ_g scales[g]·values[g]`.
fn weighted(scales: impl IntoIterator<Item = i32>, values: impl IntoIterator<Item = i32>) -> i32 {
    scales.into_iter().zip(values).map(|(s, v)| s * v).sum()
}

/// Each byte of `qs` (32 per 128 elements) holds four 2-bit quants: element `128h + 32s + l` is
/// bits `2s..2s + 2` of `qs[32h + l]` (Q2_K's quants, and Q3_K's low bits).
fn unpack_2bit(qs: &[u8], q: &mut [i8; 256]) {
    for (q, qs) in q.chunks_exact_mut(128).zip(qs.chunks_exact(32)) {
        for (s, q) in q.chunks_exact_mut(32).enumerate() {
            for (q, &b) in q.iter_mut().zip(qs) {
                *q = (b >> (2 * s) & 3) as i8;
            }
        }
    }
}

/// Each byte of `qs` (32 per 64 elements) holds two 4-bit quants: element `64c + l` is the low
/// nibble of `qs[32c + l]`, element `64c + 32 + l` the high one (Q4_K's and Q5_K's low bits).
fn unpack_4bit(qs: &[u8], q: &mut [i8; 256]) {
    for (q, qs) in q.chunks_exact_mut(64).zip(qs.chunks_exact(32)) {
        let (lo, hi) = q.split_at_mut(32);
        for ((lo, hi), &b) in lo.iter_mut().zip(hi).zip(qs) {
            *lo = (b & 0xf) as i8;
            *hi = (b >> 4) as i8;
        }
    }
}

/// `Σ_g m[g]·(bsums[2g] + bsums[2g + 1])`: the activations of each 32-element sub-block summed and
/// weighted by its minimum.
fn min_sum_32(mins: u64, y: &Q8KBlock) -> i32 {
    let pairs = y.bsums.chunks_exact(2).map(|b| b[0] as i32 + b[1] as i32);
    weighted(mins.to_le_bytes().map(i32::from), pairs)
}

/// Q2_K: `w = d·sc·q − dmin·m` per 16 elements, `sc` and `m` the nibbles of `scales[g]`.
pub(super) fn q2k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in blocks::<84>(w, x).iter().zip(x) {
        let mut q = [0i8; 256];
        unpack_2bit(&b[16..80], &mut q);
        let scales = &b[..16];
        let dot = weighted(
            scales.iter().map(|&s| (s & 0xf) as i32),
            group_sums(&q, &y.qs),
        );
        let min = weighted(
            scales.iter().map(|&s| (s >> 4) as i32),
            y.bsums.map(i32::from),
        );
        sum += y.d * (f16_at(b, 80) * dot as f32 - f16_at(b, 82) * min as f32);
    }
    sum
}

/// Q3_K: `w = d·(sc − 32)·(q − 4·(1 − h))` per 16 elements, `h` element `32b + l`'s bit `b` of
/// `hmask[l]`.
pub(super) fn q3k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in blocks::<110>(w, x).iter().zip(x) {
        let mut q = [0i8; 256];
        unpack_2bit(&b[32..96], &mut q);
        let hmask = &b[..32];
        for (k, q) in q.chunks_exact_mut(32).enumerate() {
            for (q, &h) in q.iter_mut().zip(hmask) {
                *q -= if h >> k & 1 != 0 { 0 } else { 4 };
            }
        }
        let scales = q3k_scales(b[96..108].try_into().unwrap());
        let dot = weighted(scales.map(|s| s as i32 - 32), group_sums(&q, &y.qs));
        sum += y.d * f16_at(b, 108) * dot as f32;
    }
    sum
}

/// Q4_K: `w = d·sc·q − dmin·m` per 32 elements, 6-bit `sc` and `m`.
pub(super) fn q4k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in blocks::<144>(w, x).iter().zip(x) {
        let mut q = [0i8; 256];
        unpack_4bit(&b[16..144], &mut q);
        let (scales, mins) = scales_mins_k4(b[4..16].try_into().unwrap());
        let sums = group_sums(&q, &y.qs);
        let pairs = sums.chunks_exact(2).map(|s| s[0] + s[1]);
        let dot = weighted(scales.to_le_bytes().map(i32::from), pairs);
        let min = min_sum_32(mins, y);
        sum += y.d * (f16_at(b, 0) * dot as f32 - f16_at(b, 2) * min as f32);
    }
    sum
}

/// Q5_K: Q4_K with a fifth bit, bit `j` of `qh[l]` for element `l` of sub-block `j`.
pub(super) fn q5k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in blocks::<176>(w, x).iter().zip(x) {
        let mut q = [0i8; 256];
        unpack_4bit(&b[48..176], &mut q);
        let qh = &b[16..48];
        for (j, q) in q.chunks_exact_mut(32).enumerate() {
            for (q, &h) in q.iter_mut().zip(qh) {
                *q |= ((h >> j & 1) << 4) as i8;
            }
        }
        let (scales, mins) = scales_mins_k4(b[4..16].try_into().unwrap());
        let sums = group_sums(&q, &y.qs);
        let pairs = sums.chunks_exact(2).map(|s| s[0] + s[1]);
        let dot = weighted(scales.to_le_bytes().map(i32::from), pairs);
        let min = min_sum_32(mins, y);
        sum += y.d * (f16_at(b, 0) * dot as f32 - f16_at(b, 2) * min as f32);
    }
    sum
}

/// Q6_K: `w = d·sc·(q − 32)` per 16 elements, `q` a nibble of `ql` with two bits of `qh` above
/// it: in each 128-element half, element `32k + l` takes the low (`k < 2`) or high nibble of
/// `ql[64h + 32(k % 2) + l]` and bits `2k..2k + 2` of `qh[32h + l]`.
pub(super) fn q6k(w: &[u8], x: &[Q8KBlock]) -> f32 {
    let mut sum = 0f32;
    for (b, y) in blocks::<210>(w, x).iter().zip(x) {
        let mut q = [0i8; 256];
        let (ql, qh) = (&b[..128], &b[128..192]);
        for ((q, ql), qh) in q
            .chunks_exact_mut(128)
            .zip(ql.chunks_exact(64))
            .zip(qh.chunks_exact(32))
        {
            for (k, q) in q.chunks_exact_mut(32).enumerate() {
                let ql = &ql[32 * (k % 2)..][..32];
                for ((q, &lo), &hi) in q.iter_mut().zip(ql).zip(qh) {
                    let v = (lo >> (4 * (k / 2)) & 0xf) | (hi >> (2 * k) & 3) << 4;
                    *q = v as i8 - 32;
                }
            }
        }
        let scales = b[192..208].iter().map(|&s| s as i8 as i32);
        let dot = weighted(scales, group_sums(&q, &y.qs));
        sum += y.d * f16_at(b, 208) * dot as f32;
    }
    sum
}
