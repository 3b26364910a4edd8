//! `y = x · Wᵀ` for a few rows of `x` — a decoding step, one token per sequence of a batch.
//!
//! A general GEMM packs W into panels before multiplying, a copy of the whole weight matrix per
//! call: for two to sixteen rows that copy costs far more than the arithmetic (measured with the
//! `gemm` crate behind candle: a batch of 8 took 5× the time of one row, the packing dominating).
//! Here each row of W (contiguous in PyTorch's `[out, in]` layout) is read once and dotted with
//! every row of x while it is in L1, so a step reads the weights once whatever the batch.
//!
//! The dot products are written in 16 independent lanes so the compiler vectorizes them; the
//! loop is compiled a second time with AVX-512 and FMA enabled and chosen at run time (the crate
//! is built for baseline x86-64, where that width would otherwise be unused). A step is bound by
//! streaming W from memory: fused multiply-adds gained ~8% at one row, nothing at eight.

use super::pool;

/// Up to this many rows go through here; more amortize a GEMM's packing.
pub const MAX_ROWS: usize = 16;

/// Output columns per parallel task: enough work to outweigh scheduling.
const COLUMNS_PER_TASK: usize = 64;

/// `y[m, n] = x[m, k] · w[n, k]ᵀ`, row-major.
pub fn matmul_transposed(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "x is not [{m}, {k}]");
    assert_eq!(w.len(), n * k, "w is not [{n}, {k}]");
    // Column-major output (`[n, m]`) lets each task own a contiguous slice; transposed at the end.
    let mut yt = vec![0f32; n * m];
    let tasks: Vec<(&mut [f32], &[f32])> = yt
        .chunks_mut(COLUMNS_PER_TASK * m)
        .zip(w.chunks(COLUMNS_PER_TASK * k))
        .collect();
    // The spinning pool, like the other loops of a decoding step: see `pool`.
    pool::for_each(tasks, &|(yt, w)| columns(yt, x, w, m, k));
    let mut y = vec![0f32; m * n];
    for (j, column) in yt.chunks_exact(m).enumerate() {
        for (r, &value) in column.iter().enumerate() {
            y[r * n + j] = value;
        }
    }
    y
}

/// `yt[j, r] = w[j] · x[r]` for the rows `w` of a task.
fn columns(yt: &mut [f32], x: &[f32], w: &[f32], m: usize, k: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU has AVX-512F and FMA, the features the function enables.
        unsafe { columns_avx512(yt, x, w, m, k) };
        return;
    }
    columns_generic::<false>(yt, x, w, m, k);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn columns_avx512(yt: &mut [f32], x: &[f32], w: &[f32], m: usize, k: usize) {
    columns_generic::<true>(yt, x, w, m, k);
}

/// `FUSED`: multiply-adds as single fused instructions (only where the CPU has FMA: elsewhere
/// `mul_add` is a slow library call).
#[inline(always)]
fn columns_generic<const FUSED: bool>(yt: &mut [f32], x: &[f32], w: &[f32], m: usize, k: usize) {
    let quads = m / 4;
    for (out, w_row) in yt.chunks_exact_mut(m).zip(w.chunks_exact(k)) {
        for q in 0..quads {
            let rows = &x[4 * q * k..4 * (q + 1) * k];
            out[4 * q..4 * q + 4].copy_from_slice(&dot4_with::<FUSED>(rows, w_row, k));
        }
        for r in 4 * quads..m {
            out[r] = dot_with::<FUSED>(&x[r * k..(r + 1) * k], w_row);
        }
    }
}

/// The dot products of four consecutive rows of `x4` (`[4, k]`) with `w`, each equal to [`dot`]
/// of that row: each 16-wide piece of `w` is loaded once for the four, and their in-order sums
/// of lanes, long chains of dependent adds, overlap.
#[inline(always)]
pub fn dot4(x4: &[f32], w: &[f32], k: usize) -> [f32; 4] {
    dot4_with::<false>(x4, w, k)
}

#[inline(always)]
fn dot4_with<const FUSED: bool>(x4: &[f32], w: &[f32], k: usize) -> [f32; 4] {
    let (x0, rest) = x4.split_at(k);
    let (x1, rest) = rest.split_at(k);
    let (x2, x3) = rest.split_at(k);
    // Four named accumulators: as one `[[f32; 16]; 4]` they were kept in memory, each
    // multiply-add waiting on a store and a load.
    let (mut acc0, mut acc1, mut acc2, mut acc3) = ([0f32; 16], [0f32; 16], [0f32; 16], [0f32; 16]);
    let chunks = w
        .chunks_exact(16)
        .zip(x0.chunks_exact(16))
        .zip(x1.chunks_exact(16))
        .zip(x2.chunks_exact(16))
        .zip(x3.chunks_exact(16));
    for ((((w, a0), a1), a2), a3) in chunks {
        for l in 0..16 {
            acc0[l] = madd::<FUSED>(a0[l], w[l], acc0[l]);
            acc1[l] = madd::<FUSED>(a1[l], w[l], acc1[l]);
            acc2[l] = madd::<FUSED>(a2[l], w[l], acc2[l]);
            acc3[l] = madd::<FUSED>(a3[l], w[l], acc3[l]);
        }
    }
    let full = k / 16 * 16;
    let tail = |x: &[f32]| (full..k).map(|j| x[j] * w[j]).sum::<f32>();
    [
        sum_lanes(acc0) + tail(x0),
        sum_lanes(acc1) + tail(x1),
        sum_lanes(acc2) + tail(x2),
        sum_lanes(acc3) + tail(x3),
    ]
}

/// The sum of 16 lanes as a tree of halves: four dependent vector adds, where adding them in
/// order is a chain of fifteen scalar ones (in attention over a long cache, ~a third of the time).
#[inline(always)]
fn sum_lanes(lanes: [f32; 16]) -> f32 {
    let eight: [f32; 8] = std::array::from_fn(|l| lanes[l] + lanes[l + 8]);
    let four: [f32; 4] = std::array::from_fn(|l| eight[l] + eight[l + 4]);
    (four[0] + four[2]) + (four[1] + four[3])
}

/// Dot product in 16 independent lanes, so the compiler vectorizes it (a single running sum
/// would have to be added in order).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with::<false>(a, b)
}

#[inline(always)]
fn dot_with<const FUSED: bool>(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..16 {
            lanes[l] = madd::<FUSED>(x[l], y[l], lanes[l]);
        }
    }
    sum_lanes(lanes) + tail
}

/// `a · b + c`, rounded once when `FUSED`.
#[inline(always)]
fn madd<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_the_naive_product_for_every_small_shape() {
        let value = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) / 250.0;
        for (m, k, n) in [
            (1, 5, 3),
            (3, 16, 70),
            (8, 37, 129),
            (16, 576, 65),
            (2, 1, 1),
        ] {
            let x: Vec<f32> = (0..m * k).map(value).collect();
            let w: Vec<f32> = (0..n * k).map(|i| value(i + 13)).collect();
            let y = matmul_transposed(&x, &w, m, k, n);
            // Both builds of the loop, whichever one this CPU dispatches to (yt is [n, m]).
            let (mut plain, mut fused) = (vec![0f32; n * m], vec![0f32; n * m]);
            columns_generic::<false>(&mut plain, &x, &w, m, k);
            columns_generic::<true>(&mut fused, &x, &w, m, k);
            for r in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|i| x[r * k + i] as f64 * w[j * k + i] as f64)
                        .sum();
                    for got in [y[r * n + j], plain[j * m + r], fused[j * m + r]] {
                        assert!(
                            (got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{m}x{k}x{n} [{r},{j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
