//! The AVX-512 VNNI build of [`DotQ8Rows`], on the single-row kernel's pieces (`avx512`): per
//! group of 8 weight blocks the heads are collected and converted once; per pair of blocks the
//! quants are unpacked once, then each of up to four activation rows costs one `vpdpbusd`, one
//! conversion, a permute and two multiplies. Four rows keep their accumulators, correction sums
//! and scales in registers beside the weight's; more would spill.

use std::arch::x86_64::*;

use super::avx512::{finish, lanes, pair_quants, supported, weight_heads};
use super::rows::{DotQ8Rows, Q8Rows};
use super::{Block, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
use crate::quant::GgmlType;

pub(super) fn dot_q8_rows(ty: GgmlType) -> Option<DotQ8Rows> {
    if supported() {
        pick!(ty, dot_rows as DotQ8Rows)
    } else {
        None
    }
}

/// Activation rows per pass over the weight row.
const PASS: usize = 4;

fn dot_rows<B: Block>(w: &[u8], x: &Q8Rows, out: &mut [f32]) {
    assert_eq!(out.len(), x.rows(), "one output per activation row");
    assert_eq!(
        w.len(),
        x.blocks() * B::BYTES,
        "weight row is not {} blocks",
        x.blocks()
    );
    // SAFETY: `dot_q8_rows` hands this out only when the CPU has every feature `kernel` enables.
    unsafe { kernel::<B>(w, x, out) }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
fn kernel<B: Block>(w: &[u8], x: &Q8Rows, out: &mut [f32]) {
    // The row's last, partial group of blocks is read from a copy padded with zero blocks, which
    // add nothing (the activations are padded alike).
    let whole = x.blocks() / 8;
    let mut tail = [0u8; 8 * 34];
    let rest = &w[whole * 8 * B::BYTES..];
    tail[..rest.len()].copy_from_slice(rest);
    let group = |g: usize| {
        if g < whole {
            w[g * 8 * B::BYTES..].as_ptr()
        } else {
            tail.as_ptr()
        }
    };
    for (pass, out) in out.chunks_mut(PASS).enumerate() {
        let first = pass * PASS;
        // SAFETY: `group` gives 8 blocks for each of the activations' groups.
        unsafe {
            match out.len() {
                4 => rows_pass::<B, 4>(&group, x, first, out),
                3 => rows_pass::<B, 3>(&group, x, first, out),
                2 => rows_pass::<B, 2>(&group, x, first, out),
                _ => rows_pass::<B, 1>(&group, x, first, out),
            }
        }
    }
}

/// `out[i]` for activation rows `first + i`, `i < R`. `group(g)` points at 8 weight blocks.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma,f16c")]
#[inline]
unsafe fn rows_pass<B: Block, const R: usize>(
    group: &impl Fn(usize) -> *const u8,
    x: &Q8Rows,
    first: usize,
    out: &mut [f32],
) {
    let quants: [_; R] = std::array::from_fn(|i| x.quants(first + i).as_ptr());
    let scales: [_; R] = std::array::from_fn(|i| x.scales(first + i).as_ptr());
    let sums: [_; R] = std::array::from_fn(|i| x.sums(first + i).as_ptr());
    // Pair k's scales from a group's heads: block 2k's in lanes 0..8, 2k + 1's in 8..16.
    let to_pair: [__m512i; 4] = std::array::from_fn(|k| lanes(|l| 4 * k + 2 * (l / 8)));
    // One accumulator a row: R rows are R independent chains of multiply-adds.
    let mut acc = [_mm512_setzero_ps(); R];
    let mut corr = [_mm512_setzero_ps(); R];
    let pairs = x.blocks().div_ceil(2);
    for g in 0..x.groups() {
        let w = group(g);
        // Lane 2j: block j's d_w, lane 2j + 1 its m_w (0 without a minimum).
        let heads = _mm512_cvtph_ps(weight_heads::<B>(w));
        let mut d_x = [_mm512_setzero_ps(); R];
        for i in 0..R {
            let sums = _mm512_load_ps(sums[i].add(g).cast());
            corr[i] = _mm512_fmadd_ps(heads, sums, corr[i]);
            d_x[i] = _mm512_load_ps(scales[i].add(g).cast());
        }
        // Only the pairs that hold blocks (the last group may be partly padding).
        for (k, &to_pair) in to_pair.iter().enumerate().take(pairs - 4 * g) {
            let d_w = _mm512_permutexvar_ps(to_pair, heads);
            let q = pair_quants::<B>(w.add(2 * k * B::BYTES));
            let pair = 4 * g + k;
            for i in 0..R {
                let xq = _mm512_load_si512(quants[i].add(pair).cast());
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, xq);
                let s = _mm512_mul_ps(d_w, _mm512_permutexvar_ps(to_pair, d_x[i]));
                acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, acc[i]);
            }
        }
    }
    for i in 0..R {
        out[i] = finish::<B>(acc[i], corr[i]);
    }
}
