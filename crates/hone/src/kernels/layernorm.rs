//! LayerNorm with bias, y = (x − mean(x)) · rsqrt(var(x) + eps) · w + b per row, as PyTorch's
//! `nn.LayerNorm` computes it in f32 (StarCoder2's norms).
//!
//! The forward saves one `rstd` per row; the backward recomputes the row's mean, which costs one
//! pass over the row instead of a second saved vector.

use rayon::prelude::*;

use super::for_each_row;

/// Rows per work item in the backward: weight and bias gradients are summed in f32 within a
/// block, then block partials in f64 in a fixed order, as in the RMSNorm kernel.
const BLOCK_ROWS: usize = 32;

fn mean(x: &[f32]) -> f32 {
    x.iter().sum::<f32>() / x.len() as f32
}

/// `x` is `[n, d]` with `d = w.len() = b.len()` and `n = rstd.len()`; writes `y` and `rstd`.
pub fn forward(x: &[f32], w: &[f32], b: &[f32], eps: f32, y: &mut [f32], rstd: &mut [f32]) {
    let d = w.len();
    assert!(d > 0 && b.len() == d && x.len() == rstd.len() * d && y.len() == x.len());
    let row = |((y, x), r): ((&mut [f32], &[f32]), &mut f32)| {
        let mu = mean(x);
        let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / d as f32;
        *r = 1.0 / (var + eps).sqrt();
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = (x - mu) * *r * w + b;
        }
    };
    for_each_row(y, x, rstd, d, row);
}

/// Writes `dx` (`[n, d]`) and, when given, adds the weight and bias gradients into `dw` and `db`
/// (`[d]` each: a LoRA run with PEFT's `bias: all` trains the bias alone).
pub fn backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    dx: &mut [f32],
    (dw, db): (Option<&mut [f32]>, Option<&mut [f32]>),
) {
    let d = w.len();
    assert!(d > 0 && x.len() == rstd.len() * d && dy.len() == x.len() && dx.len() == x.len());
    let want = dw.is_some() || db.is_some();
    let block = BLOCK_ROWS * d;
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(block)
        .zip(x.par_chunks(block))
        .zip(dy.par_chunks(block))
        .zip(rstd.par_chunks(BLOCK_ROWS))
        .map(|(((dx, x), dy), rstd)| {
            let (mut pw, mut pb) = match want {
                true => (vec![0.0; d], vec![0.0; d]),
                false => (Vec::new(), Vec::new()),
            };
            for (((dx, x), dy), &r) in dx
                .chunks_exact_mut(d)
                .zip(x.chunks_exact(d))
                .zip(dy.chunks_exact(d))
                .zip(rstd)
            {
                let mu = mean(x);
                // With x̂ = (x − μ)·r and g = dy·w: dx = r·(g − mean(g) − x̂·mean(g·x̂)).
                let (mut g_mean, mut gx_mean) = (0.0, 0.0);
                for ((&g, &x), &w) in dy.iter().zip(x).zip(w) {
                    g_mean += g * w;
                    gx_mean += g * w * (x - mu) * r;
                }
                (g_mean, gx_mean) = (g_mean / d as f32, gx_mean / d as f32);
                for (((dx, &g), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(w) {
                    *dx = r * (g * w - g_mean - (x - mu) * r * gx_mean);
                }
                for (((pw, pb), &g), &x) in pw.iter_mut().zip(&mut pb).zip(dy).zip(x) {
                    *pw += g * (x - mu) * r;
                    *pb += g;
                }
            }
            (pw, pb)
        })
        .collect();
    for (target, pick) in [(dw, 0), (db, 1)] {
        if let Some(target) = target {
            let mut sum = vec![0f64; d];
            for part in &partials {
                let part = if pick == 0 { &part.0 } else { &part.1 };
                for (s, &p) in sum.iter_mut().zip(part) {
                    *s += p as f64;
                }
            }
            for (t, s) in target.iter_mut().zip(sum) {
                *t = (*t as f64 + s) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::central_difference;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const EPS: f64 = 1e-5;

    /// The loss Σ r·y in f64, straight from the formula.
    fn loss(x: &[f64], w: &[f64], b: &[f64], r: &[f64]) -> f64 {
        let d = w.len();
        let mut total = 0.0;
        for (x, r) in x.chunks(d).zip(r.chunks(d)) {
            let mu = x.iter().sum::<f64>() / d as f64;
            let var = x.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + EPS).sqrt();
            total += (0..d)
                .map(|j| r[j] * ((x[j] - mu) * rstd * w[j] + b[j]))
                .sum::<f64>();
        }
        total
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (n, d) = (35, 19);
        let mut rng = StdRng::seed_from_u64(3);
        let mut sample = |len: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..len).map(|_| rng.random_range(lo..hi)).collect()
        };
        let (x, w, b, dy) = (
            sample(n * d, -2.0, 2.0),
            sample(d, 0.5, 1.5),
            sample(d, -0.5, 0.5),
            sample(n * d, -1.0, 1.0),
        );
        let (mut y, mut rstd) = (vec![0.0; n * d], vec![0.0; n]);
        forward(&x, &w, &b, EPS as f32, &mut y, &mut rstd);
        let mut dx = vec![0.0; n * d];
        let (mut dw, mut db) = (vec![0.5; d], vec![0.25; d]);
        backward(&dy, &x, &w, &rstd, &mut dx, (Some(&mut dw), Some(&mut db)));

        let f64s = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<_>>();
        let (mut x64, mut w64, mut b64, r64) = (f64s(&x), f64s(&w), f64s(&b), f64s(&dy));
        for i in 0..n * d {
            let mut unit = vec![0.0; n * d];
            unit[i] = 1.0;
            assert!((loss(&x64, &w64, &b64, &unit) - y[i] as f64).abs() < 1e-5);
        }
        for (i, &got) in dx.iter().enumerate() {
            let fd = central_difference(&mut x64, i, |x| loss(x, &w64, &b64, &r64));
            assert!((fd - got as f64).abs() < 1e-4, "dx[{i}]: {fd} vs {got}");
        }
        // The gradients are accumulated onto what was there (0.5 and 0.25).
        for (j, &got) in dw.iter().enumerate() {
            let fd = central_difference(&mut w64, j, |w| loss(&x64, w, &b64, &r64));
            assert!(
                (fd + 0.5 - got as f64).abs() < 1e-4,
                "dw[{j}]: {fd} vs {got}"
            );
        }
        for (j, &got) in db.iter().enumerate() {
            let fd = central_difference(&mut b64, j, |b| loss(&x64, &w64, b, &r64));
            assert!(
                (fd + 0.25 - got as f64).abs() < 1e-4,
                "db[{j}]: {fd} vs {got}"
            );
        }
        let mut dx_frozen = vec![0.0; n * d];
        backward(&dy, &x, &w, &rstd, &mut dx_frozen, (None, None));
        assert_eq!(dx, dx_frozen);
    }
}
