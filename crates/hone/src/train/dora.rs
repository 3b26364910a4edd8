//! DoRA's forward and backward for one part of a [`Projection`] (the weight decomposition and
//! PEFT's conventions are in [`crate::adapters::dora`]), beside LoRA's in `train::linear`.
//!
//! With `u` the part's input (`x`, or `dropout(x)` in training with `lora_dropout`), `z = u·W_pᵀ`,
//! `l = s·(u·Aᵀ)·Bᵀ` and `g = m / ‖W_p + s·B·A‖` per output row (a constant for the gradient),
//! PEFT adds `(g − 1)·z + g·l` to the base output `x·W_pᵀ + b`. Without dropout `u = x`: the part's
//! output is `g·(z + l) + b`, and `z` is the base product already in `y`. Backward, with
//! `c = z + l`: `dm = Σ_tokens dy·c / ‖W_p + s·B·A‖`; LoRA's backward on `g·dy`; and the input
//! gradient of the base path, `(g·dy)·W_p` without dropout (the projection scales those columns of
//! `dy` before its one input product, [`scale_base_gradient`]) or `dy·W_p + dropout'(((g − 1)·dy)·W_p)`
//! with it (one more product on the part's rows, as PEFT's autograd computes it).

use std::ops::Range;

use rayon::prelude::*;

use super::dropout;
use super::linear::{lora_backward, lora_down, lora_input, lora_up, Part};
use super::lora::Lora;
use crate::adapters::dora::{adapted_row_norms, factors};
use crate::kernels::columns::{column_sums, columns, scale_columns, Columns};
use crate::kernels::matmul::{MatMut, MatRef};
use crate::kernels::matrix::MatrixRef;
use crate::model::norm::Tensor1;

/// Where a part's weight rows are: `products` is what the products read (a bf16 copy under mixed
/// precision), `stored` the weight itself, which the norms read.
#[derive(Clone, Copy)]
pub(super) struct PartWeights<'a> {
    pub products: MatrixRef<'a>,
    pub stored: MatrixRef<'a>,
    /// The part's rows of the stacked matrices (its columns of `y`).
    pub start: usize,
    pub rows: usize,
}

impl PartWeights<'_> {
    fn range(&self) -> Range<usize> {
        self.start..self.start + self.rows
    }
}

/// What DoRA's backward needs of its forward, besides LoRA's `s·u·Aᵀ`.
#[derive(Debug)]
pub(super) struct DoraSaved {
    /// `g = m / ‖W_p + s·B·A‖` per output row.
    factors: Vec<f32>,
    /// `1 / ‖W_p + s·B·A‖` per output row.
    inv_norms: Vec<f32>,
    /// `c = z + l`, `[tokens, out_p]`.
    directional: Vec<f32>,
    /// Whether the input went through dropout.
    dropped: bool,
}

/// The magnitudes a new DoRA adapter starts from: the norms of its weight rows with the initial
/// update (zero, unless B was given), as PEFT's `DoraLinearLayer.update_layer`.
pub(super) fn init_magnitudes(parts: &mut [Part], stored: MatrixRef) {
    let mut start = 0;
    for part in parts {
        let rows = part.out_features;
        if let Some(lora) = part.lora.as_mut().filter(|l| l.magnitude.is_none()) {
            let norms = norms(lora, stored, start);
            lora.magnitude = Some(Tensor1::new(norms, true));
        }
        start += rows;
    }
}

/// `‖W_p + s·B·A‖` per output row, the part's rows read from `stored` from row `start` on.
fn norms(lora: &Lora, stored: MatrixRef, start: usize) -> Vec<f32> {
    adapted_row_norms(lora.low_rank(), lora.in_features, &|rows, out| {
        stored.rows_into(start + rows.start..start + rows.end, out)
    })
}

/// Adds the part's DoRA term to `y` (`[tokens, y_cols]`, holding `x·Wᵀ` without biases); returns
/// LoRA's `s·u·Aᵀ` and what the backward needs.
pub(super) fn forward(
    lora: &Lora,
    w: PartWeights,
    x: &[f32],
    y: &mut [f32],
    y_cols: usize,
    dropout_seed: Option<u64>,
) -> (Vec<f32>, DoraSaved) {
    let (n, out_p) = (x.len() / lora.in_features, lora.out_features);
    let magnitude = &lora.magnitude.as_ref().expect("a DoRA adapter").value;
    let norms = norms(lora, w.stored, w.start);
    let inv_norms: Vec<f32> = norms.iter().map(|v| 1.0 / v).collect();
    let factors = factors(magnitude, &norms);
    let u = lora_input(lora, x, dropout_seed);
    let xa = lora_down(lora, &u);
    let mut directional = vec![0f32; n * out_p];
    lora_up(lora, &xa, MatMut::new(&mut directional, n, out_p), false);
    let dropped = lora.dropout > 0.0 && dropout_seed.is_some();
    let z = dropped.then(|| {
        let mut z = vec![0f32; n * out_p];
        w.products.with_rows(w.range(), |m| m.forward(&u, &mut z));
        z
    });
    y.par_chunks_mut(y_cols)
        .zip(directional.par_chunks_mut(out_p))
        .enumerate()
        .for_each(|(t, (y_row, c_row))| {
            let y_part = &mut y_row[w.start..w.start + out_p];
            for o in 0..out_p {
                let z = z.as_ref().map_or(y_part[o], |z| z[t * out_p + o]);
                let l = c_row[o];
                y_part[o] += (factors[o] - 1.0) * z + factors[o] * l;
                c_row[o] = z + l;
            }
        });
    let saved = DoraSaved {
        factors,
        inv_norms,
        directional,
        dropped,
    };
    (xa, saved)
}

/// `dy` with each undropped DoRA part's columns times its factors, for the projection's one input
/// product; None when no part needs it.
pub(super) fn scale_base_gradient<'a>(
    parts: impl Iterator<Item = (usize, Option<&'a DoraSaved>)>,
    dy: &[f32],
    dy_cols: usize,
) -> Option<Vec<f32>> {
    let scaled: Vec<(usize, &DoraSaved)> = parts
        .filter_map(|(start, saved)| Some((start, saved.filter(|s| !s.dropped)?)))
        .collect();
    if scaled.is_empty() {
        return None;
    }
    let mut out = dy.to_vec();
    for (start, saved) in scaled {
        scale_columns(&mut out, dy_cols, start, &saved.factors);
    }
    Some(out)
}

/// The part's gradients from `dy` (`[tokens, dy_cols]`, its columns from `w.start`): the
/// magnitude's, A's and B's (LoRA's backward on `g·dy`), and what the base path adds to `dx` beyond
/// the projection's own input product.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    lora: &mut Lora,
    w: PartWeights,
    dy: &[f32],
    dy_cols: usize,
    x: &[f32],
    xa: &[f32],
    saved: &DoraSaved,
    dropout_seed: u64,
    dx: &mut [f32],
) {
    let (n, out_p) = (x.len() / lora.in_features, lora.out_features);
    let dy_part = Columns {
        data: dy,
        stride: dy_cols,
        start: w.start,
    };
    let directional = Columns {
        data: &saved.directional,
        stride: out_p,
        start: 0,
    };
    let sums = column_sums(out_p, dy_part, Some(directional));
    let magnitude = lora.magnitude.as_mut().expect("a DoRA adapter");
    let grad = magnitude.grad.as_mut().expect("the magnitude trains");
    for ((g, s), inv) in grad.iter_mut().zip(sums).zip(&saved.inv_norms) {
        *g += (s * f64::from(*inv)) as f32;
    }
    let mut scaled_dy = columns(dy, dy_cols, w.start, out_p);
    scale_columns(&mut scaled_dy, out_p, 0, &saved.factors);
    lora_backward(
        lora,
        MatRef::new(&scaled_dy, n, out_p),
        x,
        xa,
        dropout_seed,
        dx,
    );
    if saved.dropped {
        let mut dz = columns(dy, dy_cols, w.start, out_p);
        let less_one: Vec<f32> = saved.factors.iter().map(|g| g - 1.0).collect();
        scale_columns(&mut dz, out_p, 0, &less_one);
        let mut du = vec![0f32; x.len()];
        w.products
            .with_rows(w.range(), |m| m.backward_input(&dz, &mut du, false));
        dropout::backward_accumulate(&du, lora.dropout, dropout_seed, dx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::matrix::Matrix;
    use crate::train::linear::Projection;

    const TOKENS: usize = 5;
    const IN: usize = 6;
    /// The plain part's rows, then the DoRA part's.
    const OUT0: usize = 3;
    const OUT1: usize = 4;
    const OUT: usize = OUT0 + OUT1;
    const R: usize = 2;
    const SCALE: f32 = 1.5;
    const P: f32 = 0.3;
    const SEED: u64 = 7;

    /// Deterministic values in [−1, 1).
    fn values(seed: u64, n: usize) -> Vec<f32> {
        (0..n).map(|i| dropout::uniform(seed, i)).collect()
    }

    /// The trainable values the reference differentiates: x, A, B and m.
    #[derive(Clone)]
    struct Point {
        x: Vec<f64>,
        a: Vec<f64>,
        b: Vec<f64>,
        m: Vec<f64>,
    }

    /// `Σ r ⊙ y` of a q|v-like projection whose second part has a DoRA adapter with dropout, in
    /// f64, the norm held at `norms` (the constant the gradient treats it as).
    fn reference(
        p: &Point,
        w: &[f64],
        bias: &[f64],
        mask: &[f64],
        norms: &[f64],
        r: &[f64],
    ) -> f64 {
        let mut loss = 0.0;
        for t in 0..TOKENS {
            let x = &p.x[t * IN..(t + 1) * IN];
            let u: Vec<f64> = x.iter().zip(&mask[t * IN..]).map(|(x, m)| x * m).collect();
            let ua: Vec<f64> = (0..R)
                .map(|k| (0..IN).map(|i| u[i] * p.a[k * IN + i]).sum())
                .collect();
            for o in 0..OUT {
                let row = &w[o * IN..(o + 1) * IN];
                let mut y = bias[o] + (0..IN).map(|i| x[i] * row[i]).sum::<f64>();
                if o >= OUT0 {
                    let j = o - OUT0;
                    let g = p.m[j] / norms[j];
                    let z: f64 = (0..IN).map(|i| u[i] * row[i]).sum();
                    let l: f64 =
                        (0..R).map(|k| ua[k] * p.b[j * R + k]).sum::<f64>() * f64::from(SCALE);
                    y += (g - 1.0) * z + g * l;
                }
                loss += r[t * OUT + o] * y;
            }
        }
        loss
    }

    fn widen(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&v| f64::from(v)).collect()
    }

    #[test]
    fn the_dropout_path_matches_finite_differences_with_the_norm_held() {
        let w = values(1, OUT * IN);
        let bias = values(2, OUT);
        let (x, r) = (values(3, TOKENS * IN), values(4, TOKENS * OUT));
        let (a, b) = (values(5, R * IN), values(6, OUT1 * R));
        let m: Vec<f32> = values(7, OUT1).iter().map(|v| 2.0 + v).collect();
        let lora = Lora {
            r: R,
            in_features: IN,
            out_features: OUT1,
            scale: SCALE,
            dropout: P,
            a: a.clone(),
            b: b.clone(),
            grad_a: vec![0.0; a.len()],
            grad_b: vec![0.0; b.len()],
            magnitude: Some(Tensor1::new(m.clone(), true)),
            start: None,
        };
        let part = |out_features, bias: &[f32], lora| Part {
            path: String::new(),
            out_features,
            weight_grad: None,
            bias: Some(Tensor1::new(bias.to_vec(), false)),
            lora,
            ia3: None,
            factored: None,
            oft: None,
        };
        let mut projection = Projection {
            in_features: IN,
            weight: Matrix::F32 {
                values: w.clone(),
                cols: IN,
            },
            bf16: None,
            parts: vec![
                part(OUT0, &bias[..OUT0], None),
                part(OUT1, &bias[OUT0..], Some(lora)),
            ],
        };
        let mut y = vec![0f32; TOKENS * OUT];
        let saved = projection.forward(&x, &mut y, Some(SEED));
        let mut dx = vec![0f32; x.len()];
        projection.backward(&r, &x, &saved, &mut dx);

        let mask = widen(&dropout::apply(
            &vec![1.0; x.len()],
            P,
            dropout::stream(SEED, 1),
        ));
        let update = crate::adapters::dora::LowRank {
            a: &a,
            b: &b,
            r: R,
            scale: SCALE,
        };
        let held = adapted_row_norms(update, IN, &|rows, out: &mut [f32]| {
            out.copy_from_slice(&w[(OUT0 + rows.start) * IN..(OUT0 + rows.end) * IN])
        });
        let (w, bias, r, held) = (widen(&w), widen(&bias), widen(&r), widen(&held));
        let point = Point {
            x: widen(&x),
            a: widen(&a),
            b: widen(&b),
            m: widen(&m),
        };
        let f = |p: &Point| reference(p, &w, &bias, &mask, &held, &r);
        let ours_y: f64 = y.iter().zip(&r).map(|(&y, r)| f64::from(y) * r).sum();
        assert!(
            (ours_y - f(&point)).abs() < 1e-4,
            "forward {ours_y} vs {}",
            f(&point)
        );

        let lora = projection.parts[1].lora.as_ref().unwrap();
        let magnitude = lora.magnitude.as_ref().unwrap().grad.as_ref().unwrap();
        let analytic: [(&str, &[f32]); 4] = [
            ("x", &dx),
            ("a", &lora.grad_a),
            ("b", &lora.grad_b),
            ("m", magnitude),
        ];
        for (name, grad) in analytic {
            for (i, &g) in grad.iter().enumerate() {
                let h = 1e-4;
                let moved = |delta: f64| {
                    let mut p = point.clone();
                    let v = match name {
                        "x" => &mut p.x,
                        "a" => &mut p.a,
                        "b" => &mut p.b,
                        _ => &mut p.m,
                    };
                    v[i] += delta;
                    f(&p)
                };
                let numeric = (moved(h) - moved(-h)) / (2.0 * h);
                assert!(
                    (f64::from(g) - numeric).abs() < 1e-4 * (1.0 + numeric.abs()),
                    "d{name}[{i}]: {g} vs {numeric}"
                );
            }
        }
    }
}
