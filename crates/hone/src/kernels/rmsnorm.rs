//! RMSNorm, y = x · rsqrt(mean(x²) + eps) · w per row, exactly as transformers' `LlamaRMSNorm` in f32.
//!
//! The forward saves one `rstd` per row so the backward need not recompute the row's mean square.

use rayon::prelude::*;

use super::for_each_row;

/// Rows per work item in the backward: the weight gradient is summed in f32 within a block, then
/// block partials are added in f64 in a fixed order, so it is accurate for long batches and
/// identical whatever the thread count.
const BLOCK_ROWS: usize = 32;

/// `x` is `[n, d]` with `d = w.len()` and `n = rstd.len()`; writes `y` (`[n, d]`) and `rstd`.
pub fn forward(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    let d = w.len();
    assert!(d > 0 && x.len() == rstd.len() * d && y.len() == x.len());
    let row = |((y, x), r): ((&mut [f32], &[f32]), &mut f32)| {
        *r = 1.0 / (dot(x, x) / d as f32 + eps).sqrt();
        let r = *r;
        // (x · rstd) · w, in transformers' order, so y rounds as it does there.
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = x * r * w;
        }
    };
    for_each_row(y, x, rstd, d, row);
}

/// Writes `dx` (`[n, d]`) and, when given, adds the weight gradient into `dw` (`[d]`).
pub fn backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
) {
    let d = w.len();
    assert!(d > 0 && x.len() == rstd.len() * d && dy.len() == x.len() && dx.len() == x.len());
    let want_dw = dw.is_some();
    let block = BLOCK_ROWS * d;
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .zip(dy.par_chunks(block))
        .zip(rstd.par_chunks(BLOCK_ROWS))
        .map(|(((dx, x), dy), rstd)| {
            let mut part = if want_dw { vec![0.0; d] } else { Vec::new() };
            for (((dx, x), dy), &r) in dx
                .chunks_exact_mut(d)
                .zip(x.chunks_exact(d))
                .zip(dy.chunks_exact(d))
                .zip(rstd)
            {
                row_backward(dy, x, w, r, dx);
                for ((p, &g), &x) in part.iter_mut().zip(dy).zip(x) {
                    *p += g * (x * r);
                }
            }
            part
        })
        .collect();
    if let Some(dw) = dw {
        let mut sum = vec![0f64; d];
        for part in &partials {
            for (s, &p) in sum.iter_mut().zip(part) {
                *s += p as f64;
            }
        }
        for (dw, s) in dw.iter_mut().zip(sum) {
            *dw = (*dw as f64 + s) as f32;
        }
    }
}

/// With x̂ = x·r and g = dy·w: dx = r·(g − x̂·mean(g·x̂)) = r·g − x·(r³·Σ g·x / d).
fn row_backward(dy: &[f32], x: &[f32], w: &[f32], r: f32, dx: &mut [f32]) {
    for ((dx, &g), &w) in dx.iter_mut().zip(dy).zip(w) {
        *dx = g * w;
    }
    let c = r * r * r * dot(dx, x) / x.len() as f32;
    for (dx, &x) in dx.iter_mut().zip(x) {
        *dx = r * *dx - c * x;
    }
}

/// Σ a·b over 16 independent f32 lanes: float adds do not reassociate, so a single running sum
/// would stay scalar; the lanes let LLVM vectorize and also shorten each rounding chain.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let (ca, cb) = (a.chunks_exact(L), b.chunks_exact(L));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in ca.zip(cb) {
        for i in 0..L {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::central_difference;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const EPS: f64 = 1e-5;

    /// The loss Σ r·y in f64, straight from the formula.
    fn loss(x: &[f64], w: &[f64], r: &[f64]) -> f64 {
        let d = w.len();
        let mut total = 0.0;
        for (x, r) in x.chunks(d).zip(r.chunks(d)) {
            let rstd = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / d as f64 + EPS).sqrt();
            total += (0..d).map(|j| r[j] * x[j] * rstd * w[j]).sum::<f64>();
        }
        total
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (n, d) = (3, 19);
        let mut rng = StdRng::seed_from_u64(1);
        let mut sample = |len: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..len).map(|_| rng.random_range(lo..hi)).collect()
        };
        let (x, w, dy) = (
            sample(n * d, -2.0, 2.0),
            sample(d, 0.5, 1.5),
            sample(n * d, -1.0, 1.0),
        );
        let (mut y, mut rstd) = (vec![0.0; n * d], vec![0.0; n]);
        forward(&x, &w, EPS as f32, &mut y, &mut rstd);
        let mut dx = vec![0.0; n * d];
        let mut dw = vec![0.5; d];
        backward(&dy, &x, &w, &rstd, &mut dx, Some(&mut dw));

        let f64s = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let (mut x64, mut w64, r64) = (f64s(&x), f64s(&w), f64s(&dy));
        // y itself: the loss with r = a unit vector is one output.
        for i in 0..n * d {
            let mut unit = vec![0.0; n * d];
            unit[i] = 1.0;
            assert!((loss(&x64, &w64, &unit) - y[i] as f64).abs() < 1e-6);
        }
        for (i, &got) in dx.iter().enumerate() {
            let fd = central_difference(&mut x64, i, |x| loss(x, &w64, &r64));
            assert!((fd - got as f64).abs() < 1e-5, "dx[{i}]: {fd} vs {got}");
        }
        for (j, &got) in dw.iter().enumerate() {
            let fd = central_difference(&mut w64, j, |w| loss(&x64, w, &r64));
            // dw started at 0.5: the gradient is accumulated, not written.
            assert!(
                (fd + 0.5 - got as f64).abs() < 1e-5,
                "dw[{j}]: {fd} vs {got}"
            );
        }

        // A frozen weight costs nothing and changes nothing in dx.
        let mut dx_frozen = vec![0.0; n * d];
        backward(&dy, &x, &w, &rstd, &mut dx_frozen, None);
        assert_eq!(dx, dx_frozen);
    }
}
