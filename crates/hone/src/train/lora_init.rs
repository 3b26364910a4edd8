//! LoRA initialisations that start from the base weight, as PEFT computes them: OLoRA
//! (`init_lora_weights: olora`: `A = R[:r]`, `B = Q[:, :r]` of the QR decomposition `W = Q·R`) and
//! PiSSA (`pissa`, `pissa_niter_N`: with `W ≈ V_r·S_r·U_rᵀ` its top-r singular triplets,
//! `A = √(S_r/s)·U_rᵀ`, `B = V_r·√(S_r/s)`). Both move the top of W into the adapter: the frozen base
//! becomes the residual `W − s·B₀·A₀`, so the model still computes W at step 0. Hone saves such an
//! adapter converted to plain LoRA on the original base, as PEFT's `save_pretrained(...,
//! path_initial_model_for_weight_conversion=...)` does (see [`crate::adapters::Adapter`]'s users in
//! `train::params`): `A' = [A; A₀]`, `B' = [B, −B₀]`, rank and alpha doubled.
//!
//! Hand-written because no well-kept crate Hone depends on does a QR or a truncated SVD, and both
//! only need the top r directions of each matrix (r Householder reflections; a subspace iteration).

use anyhow::{bail, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rayon::prelude::*;

use super::dropout;
use super::linear::Projection;
use super::lora::LoraSettings;
use crate::adapters::InitLoraWeights;
use crate::kernels::matmul::{matmul, MatMut, MatRef, Threads};

/// How a LoRA adapter's A and B start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraInit {
    /// PEFT's default: A Kaiming-uniform, B zero; the base unchanged.
    Kaiming,
    Olora,
    /// PiSSA from the exact top-r singular triplets (`pissa`), or from `niter` subspace
    /// iterations of a random start (`pissa_niter_N`, PEFT's fast SVD).
    Pissa {
        niter: Option<usize>,
    },
}

/// Subspace iterations for an exact `pissa`: until the subspace stops moving, at most this many.
const EXACT_ITERATIONS: usize = 500;

/// Directions iterated beyond the r wanted: the subspace then converges at the rate
/// `(σ_{r+p+1} / σ_r)²` instead of `(σ_{r+1} / σ_r)²`.
const OVERSAMPLING: usize = 16;

/// Subspace iterations in f64 after those in f32, from f32's rounding to f64's.
const F64_ITERATIONS: usize = 4;

impl LoraInit {
    /// From PEFT's `init_lora_weights`. Errors name the value.
    pub fn from_config(init: &InitLoraWeights) -> Result<LoraInit> {
        Ok(match init {
            InitLoraWeights::Default(_) => LoraInit::Kaiming,
            InitLoraWeights::Method(m) if m == "gaussian" => LoraInit::Kaiming,
            InitLoraWeights::Method(m) if m == "olora" => LoraInit::Olora,
            InitLoraWeights::Method(m) if m == "pissa" => LoraInit::Pissa { niter: None },
            InitLoraWeights::Method(m) => match m.strip_prefix("pissa_niter_").map(str::parse) {
                Some(Ok(n)) => LoraInit::Pissa { niter: Some(n) },
                _ => bail!(
                    "init_lora_weights: {m:?} is not supported (Hone starts LoRA as PEFT's default, `olora`, `pissa` \
                     or `pissa_niter_N`)"
                ),
            },
        })
    }

    /// Whether the adapter starts from the weight (and the base becomes the residual).
    pub fn from_weight(self) -> bool {
        self != LoraInit::Kaiming
    }

    /// `(A₀ [r, in], B₀ [out, r])` for the weight `w` (`[out, in]`, row-major) and the adapter's
    /// scale; `seed` draws PiSSA's random start.
    pub fn start(
        self,
        w: &[f32],
        shape: (usize, usize),
        r: usize,
        scale: f32,
        seed: u64,
    ) -> (Vec<f32>, Vec<f32>) {
        match self {
            LoraInit::Kaiming => unreachable!("a Kaiming start does not read the weight"),
            LoraInit::Olora => olora(w, shape, r),
            LoraInit::Pissa { niter } => pissa(w, shape, r, scale, niter, seed),
        }
    }
}

/// Starts every LoRA adapter of `projection` from its weight rows (`settings.init`) and leaves the
/// residual `W − s·B₀·A₀` in their place. Errors when the weight cannot change (kept as stored) or
/// the rank exceeds a side of the weight.
pub(super) fn start_from_weight(
    projection: &mut Projection,
    settings: &LoraSettings,
) -> Result<()> {
    let inp = projection.in_features;
    let Some(values) = projection.weight.values_mut() else {
        bail!(
            "init_lora_weights: {:?} moves part of each base weight into the adapter, but this run keeps the base \
             as stored (quantized or 16-bit); use a base that is expanded to f32 at load (no quantization_bit)",
            settings.config.init_lora_weights
        );
    };
    let mut first = 0;
    for part in &mut projection.parts {
        let out = part.out_features;
        let rows = &mut values[first * inp..(first + out) * inp];
        first += out;
        let Some(lora) = &mut part.lora else {
            continue;
        };
        let r = lora.r;
        if r > out.min(inp) {
            bail!(
                "{}: rank {r} is larger than the layer's smaller side ({}), which OLoRA and PiSSA start from",
                part.path,
                out.min(inp)
            );
        }
        let seed = dropout::stream(settings.seed, path_hash(&part.path));
        let (a0, b0) = settings.init.start(rows, (out, inp), r, lora.scale, seed);
        let minus_scaled_b0: Vec<f32> = b0.iter().map(|v| -lora.scale * v).collect();
        matmul(
            MatMut::new(rows, out, inp),
            MatRef::new(&minus_scaled_b0, out, r),
            MatRef::new(&a0, r, inp),
            true,
            Threads::Pool,
        );
        lora.a.clone_from(&a0);
        lora.b.clone_from(&b0);
        lora.start = Some((a0, b0));
    }
    Ok(())
}

/// FNV-1a of a module path: a stream index per module for PiSSA's random starts.
fn path_hash(path: &str) -> u64 {
    path.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `(R[:r], Q[:, :r])` of `W = Q·R` by Householder reflections with LAPACK's signs (`dgeqrf`:
/// `R[j][j] = −sign(x₀)·‖x‖`), computed in f64; only the first r reflections are needed.
fn olora(w: &[f32], (out, inp): (usize, usize), r: usize) -> (Vec<f32>, Vec<f32>) {
    let r = r.min(out).min(inp);
    let mut a: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let mut reflections = Vec::with_capacity(r);
    for j in 0..r {
        let x: Vec<f64> = (j..out).map(|i| a[i * inp + j]).collect();
        let tail = x[1..].iter().map(|v| v * v).sum::<f64>().sqrt();
        if tail == 0.0 {
            reflections.push((0.0, vec![1.0; 1]));
            continue;
        }
        let beta = -x[0].hypot(tail).copysign(x[0]);
        let tau = (beta - x[0]) / beta;
        let mut v: Vec<f64> = x.iter().map(|xi| xi / (x[0] - beta)).collect();
        v[0] = 1.0;
        // A[j.., j..] -= tau · v · (vᵀ · A[j.., j..]).
        for c in j..inp {
            let dot: f64 = v
                .iter()
                .enumerate()
                .map(|(i, vi)| vi * a[(j + i) * inp + c])
                .sum();
            for (i, vi) in v.iter().enumerate() {
                a[(j + i) * inp + c] -= tau * vi * dot;
            }
        }
        reflections.push((tau, v));
    }
    let lora_a: Vec<f32> = (0..r)
        .flat_map(|i| (0..inp).map(move |c| (i, c)))
        .map(|(i, c)| if c < i { 0.0 } else { a[i * inp + c] as f32 })
        .collect();
    // Q[:, :r] = H₀·H₁·…·H_{r−1} applied to the first r columns of the identity.
    let mut q = vec![0f64; out * r];
    for i in 0..r {
        q[i * r + i] = 1.0;
    }
    for (j, (tau, v)) in reflections.iter().enumerate().rev() {
        for c in 0..r {
            let dot: f64 = v
                .iter()
                .enumerate()
                .map(|(i, vi)| vi * q[(j + i) * r + c])
                .sum();
            for (i, vi) in v.iter().enumerate() {
                q[(j + i) * r + c] -= tau * vi * dot;
            }
        }
    }
    (lora_a, q.iter().map(|&v| v as f32).collect())
}

/// PiSSA's `(A, B)` from W's top-r singular triplets (see the module comment).
fn pissa(
    w: &[f32],
    (out, inp): (usize, usize),
    r: usize,
    scale: f32,
    niter: Option<usize>,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    let r = r.min(out).min(inp);
    let (v, s, uh) = top_singular(w, (out, inp), r, niter, seed);
    let root: Vec<f64> = s.iter().map(|s| (s / f64::from(scale)).sqrt()).collect();
    let lora_a = (0..r)
        .flat_map(|i| (0..inp).map(move |c| (i, c)))
        .map(|(i, c)| (root[i] * uh[i * inp + c]) as f32)
        .collect();
    let lora_b = (0..out)
        .flat_map(|o| (0..r).map(move |i| (o, i)))
        .map(|(o, i)| (v[o * r + i] * root[i]) as f32)
        .collect();
    (lora_a, lora_b)
}

/// `(V_r [out, r], S_r, Uh_r [r, in])`, singular values descending, each left vector's largest
/// entry positive (LAPACK's own signs follow no rule a user can rely on; B·A does not depend on
/// them). A subspace iteration of r + 16 directions from a seeded random start, `niter` times or
/// until the subspace stops moving, its products with W in f32 on the matmul kernel; then a few
/// iterations and the Rayleigh–Ritz projection in f64, so the triplets carry f64's precision.
fn top_singular(
    w: &[f32],
    (out, inp): (usize, usize),
    r: usize,
    niter: Option<usize>,
    seed: u64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let k = (r + OVERSAMPLING).min(out).min(inp);
    let mut rng = StdRng::seed_from_u64(seed);
    let omega: Vec<f64> = (0..inp * k).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut q = orthonormal_columns(w_times(w, &omega, (out, inp), k), out, k);
    let mut last_move = f64::INFINITY;
    for _ in 0..niter.unwrap_or(EXACT_ITERATIONS) {
        let z = orthonormal_columns(wt_times(w, &q, (out, inp), k), inp, k);
        let next = orthonormal_columns(w_times(w, &z, (out, inp), k), out, k);
        let moved = subspace_distance(&q, &next, k);
        q = next;
        // Converged, or down to f32's rounding, where the f64 steps below take over.
        if niter.is_none() && (moved < 1e-13 || moved > 0.9 * last_move) {
            break;
        }
        last_move = moved;
    }
    let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    for _ in 0..F64_ITERATIONS {
        let z = orthonormal_columns(wt_times_f64(&w64, &q, (out, inp), k), inp, k);
        q = orthonormal_columns(w_times_f64(&w64, &z, (out, inp), k), out, k);
    }
    // W ≈ Q·(Qᵀ·W): the small factor's left singular vectors and values from the eigenvectors of
    // its Gram matrix (QᵀW)(QᵀW)ᵀ = (WᵀQ)ᵀ(WᵀQ); the top r of them.
    let wt_q = wt_times_f64(&w64, &q, (out, inp), k);
    let gram = transposed_times(&wt_q, &wt_q, k);
    let (values, vectors) = symmetric_eigen(gram, k);
    let s: Vec<f64> = values[..r].iter().map(|v| v.max(0.0).sqrt()).collect();
    let mut v = vec![0f64; out * r];
    for o in 0..out {
        for i in 0..r {
            v[o * r + i] = (0..k).map(|j| q[o * k + j] * vectors[j * k + i]).sum();
        }
    }
    for i in 0..r {
        let largest =
            (0..out)
                .map(|o| v[o * r + i])
                .fold(0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        if largest < 0.0 {
            (0..out).for_each(|o| v[o * r + i] = -v[o * r + i]);
        }
    }
    // Uh_i = (Wᵀ·V_i)ᵀ / s_i.
    let wt_v = wt_times_f64(&w64, &v, (out, inp), r);
    let mut uh = vec![0f64; r * inp];
    for i in 0..r {
        for c in 0..inp {
            uh[i * inp + c] = if s[i] > 0.0 {
                wt_v[c * r + i] / s[i]
            } else {
                0.0
            };
        }
    }
    (v, s, uh)
}

/// `W·X` for `X` `[in, r]`: `[out, r]`.
fn w_times(w: &[f32], x: &[f64], (out, inp): (usize, usize), r: usize) -> Vec<f64> {
    let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let mut y = vec![0f32; out * r];
    matmul(
        MatMut::new(&mut y, out, r),
        MatRef::new(w, out, inp),
        MatRef::new(&x, inp, r),
        false,
        Threads::Pool,
    );
    y.iter().map(|&v| f64::from(v)).collect()
}

/// `Wᵀ·X` for `X` `[out, r]`: `[in, r]`.
fn wt_times(w: &[f32], x: &[f64], (out, inp): (usize, usize), r: usize) -> Vec<f64> {
    let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let mut y = vec![0f32; inp * r];
    matmul(
        MatMut::new(&mut y, inp, r),
        MatRef::new(w, out, inp).t(),
        MatRef::new(&x, out, r),
        false,
        Threads::Pool,
    );
    y.iter().map(|&v| f64::from(v)).collect()
}

/// [`w_times`] in f64: each output row accumulates rows of `X` (contiguous, so it vectorizes).
fn w_times_f64(w: &[f64], x: &[f64], (_, inp): (usize, usize), r: usize) -> Vec<f64> {
    w.par_chunks(inp)
        .flat_map_iter(|row| {
            let mut y = vec![0f64; r];
            for (wv, x_row) in row.iter().zip(x.chunks_exact(r)) {
                y.iter_mut().zip(x_row).for_each(|(y, xv)| *y += wv * xv);
            }
            y
        })
        .collect()
}

/// [`wt_times`] in f64: bands of W's rows each accumulate `W_bandᵀ·X_band`, then the bands sum.
fn wt_times_f64(w: &[f64], x: &[f64], (_, inp): (usize, usize), r: usize) -> Vec<f64> {
    const BAND: usize = 64;
    w.par_chunks(BAND * inp)
        .zip(x.par_chunks(BAND * r))
        .map(|(rows, x_rows)| {
            let mut y = vec![0f64; inp * r];
            for (row, x_row) in rows.chunks_exact(inp).zip(x_rows.chunks_exact(r)) {
                for (wv, y_row) in row.iter().zip(y.chunks_exact_mut(r)) {
                    y_row
                        .iter_mut()
                        .zip(x_row)
                        .for_each(|(y, xv)| *y += wv * xv);
                }
            }
            y
        })
        .reduce(
            || vec![0f64; inp * r],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                a
            },
        )
}

/// `Aᵀ·B` for `A`, `B` with `r` columns: `[r, r]`.
fn transposed_times(a: &[f64], b: &[f64], r: usize) -> Vec<f64> {
    let mut out = vec![0f64; r * r];
    for (ra, rb) in a.chunks_exact(r).zip(b.chunks_exact(r)) {
        for i in 0..r {
            for j in 0..r {
                out[i * r + j] += ra[i] * rb[j];
            }
        }
    }
    out
}

/// The columns of `x` (`[rows, r]`) made orthonormal: modified Gram–Schmidt, twice (enough for
/// full working precision), on the columns laid out contiguously.
fn orthonormal_columns(x: Vec<f64>, rows: usize, r: usize) -> Vec<f64> {
    let mut columns: Vec<Vec<f64>> = (0..r)
        .map(|i| (0..rows).map(|k| x[k * r + i]).collect())
        .collect();
    for _ in 0..2 {
        for i in 0..r {
            let (done, rest) = columns.split_at_mut(i);
            let column = &mut rest[0];
            for previous in done.iter() {
                let dot: f64 = column.iter().zip(previous).map(|(a, b)| a * b).sum();
                column
                    .iter_mut()
                    .zip(previous)
                    .for_each(|(a, b)| *a -= dot * b);
            }
            let norm = column.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 0.0 {
                column.iter_mut().for_each(|v| *v /= norm);
            }
        }
    }
    (0..rows)
        .flat_map(|k| columns.iter().map(move |c| c[k]))
        .collect()
}

/// `r − ‖Qᵀ·Q'‖²`: the sum of the squared sines of the angles between two r-dimensional
/// subspaces given by orthonormal columns.
fn subspace_distance(q: &[f64], next: &[f64], r: usize) -> f64 {
    let m = transposed_times(q, next, r);
    r as f64 - m.iter().map(|v| v * v).sum::<f64>()
}

/// Eigenvalues (descending) and eigenvectors (the columns of an `[r, r]` matrix) of a symmetric
/// matrix, by cyclic Jacobi rotations.
fn symmetric_eigen(mut a: Vec<f64>, r: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; r * r];
    (0..r).for_each(|i| v[i * r + i] = 1.0);
    for _sweep in 0..100 {
        let off: f64 = (0..r)
            .flat_map(|i| (0..r).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * r + j].powi(2))
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..r {
            for q in p + 1..r {
                let apq = a[p * r + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation that zeroes a[p][q] (Numerical Recipes' `jacobi`).
                let theta = (a[q * r + q] - a[p * r + p]) / (2.0 * apq);
                let sign = if theta < 0.0 { -1.0 } else { 1.0 };
                let t = sign / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..r {
                    let (akp, akq) = (a[k * r + p], a[k * r + q]);
                    a[k * r + p] = c * akp - s * akq;
                    a[k * r + q] = s * akp + c * akq;
                }
                for k in 0..r {
                    let (apk, aqk) = (a[p * r + k], a[q * r + k]);
                    a[p * r + k] = c * apk - s * aqk;
                    a[q * r + k] = s * apk + c * aqk;
                }
                for k in 0..r {
                    let (vkp, vkq) = (v[k * r + p], v[k * r + q]);
                    v[k * r + p] = c * vkp - s * vkq;
                    v[k * r + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..r).collect();
    order.sort_by(|&i, &j| a[j * r + j].total_cmp(&a[i * r + i]));
    let values = order.iter().map(|&i| a[i * r + i]).collect();
    let vectors = (0..r)
        .flat_map(|k| order.iter().map(move |&i| (k, i)))
        .map(|(k, i)| v[k * r + i])
        .collect();
    (values, vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic `[rows, cols]` matrix.
    fn matrix(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect()
    }

    fn product(b: &[f32], a: &[f32], (out, inp): (usize, usize), r: usize) -> Vec<f64> {
        (0..out)
            .flat_map(|o| (0..inp).map(move |c| (o, c)))
            .map(|(o, c)| {
                (0..r)
                    .map(|k| f64::from(b[o * r + k]) * f64::from(a[k * inp + c]))
                    .sum()
            })
            .collect()
    }

    #[test]
    fn olora_is_qr_with_orthonormal_q_and_upper_triangular_r() {
        let (out, inp, r) = (7, 5, 3);
        let w = matrix(out, inp, 1);
        let (a, b) = olora(&w, (out, inp), r);
        for i in 0..r {
            for j in 0..r {
                let dot: f64 = (0..out)
                    .map(|o| f64::from(b[o * r + i] * b[o * r + j]))
                    .sum();
                assert!(
                    (dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-6,
                    "QᵀQ[{i}][{j}] = {dot}"
                );
            }
            (0..i).for_each(|c| assert_eq!(a[i * inp + c], 0.0));
        }
        // Q·R's first r columns are W's (R is triangular, so they need only Q's first r columns).
        let qr = product(&b, &a, (out, inp), r);
        for o in 0..out {
            for c in 0..r {
                assert!((qr[o * inp + c] - f64::from(w[o * inp + c])).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn pissa_takes_the_best_rank_r_part_of_the_weight() {
        // W = 3·u₁v₁ᵀ + 2·u₂v₂ᵀ + 0.1·noise: its best rank-2 part is the two planted terms.
        let (out, inp, r, scale) = (9, 6, 2, 4.0);
        let (u, v, noise) = (matrix(out, 2, 2), matrix(2, inp, 3), matrix(out, inp, 4));
        let w: Vec<f32> = (0..out * inp)
            .map(|k| {
                let (o, c) = (k / inp, k % inp);
                3.0 * u[o * 2] * v[c] + 2.0 * u[o * 2 + 1] * v[inp + c] + 0.01 * noise[k]
            })
            .collect();
        let exact = pissa(&w, (out, inp), r, scale, None, 7);
        let fast = pissa(&w, (out, inp), r, scale, Some(16), 8);
        let exact_ba = product(&exact.1, &exact.0, (out, inp), r);
        let fast_ba = product(&fast.1, &fast.0, (out, inp), r);
        for k in 0..out * inp {
            let planted = f64::from(w[k]) - 0.01 * f64::from(noise[k]);
            assert!(
                (f64::from(scale) * exact_ba[k] - planted).abs() < 0.05,
                "entry {k}"
            );
            assert!((exact_ba[k] - fast_ba[k]).abs() < 1e-4, "entry {k}");
        }
    }
}
