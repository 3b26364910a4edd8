//! LoKr as PEFT defines it (`peft.LoKrConfig`): `y = W x + s · kron(W1, W2) x` with
//! `s = alpha / r`, W1 `[a, c]` and W2 `[b, d]` whole or rank-r products (PEFT's layout rules,
//! [`LokrConfig::layout`]); W1 (or W1a) starts at zero, the rest kaiming-uniform(a=√5), so training
//! starts from the base model exactly. The Kronecker product is a LoRA update
//! ([`crate::adapters::lokr::kron_lora`]): each step builds that LoRA from the factors, runs LoRA's
//! forward and backward, and takes the factors' gradients from LoRA's.

use anyhow::Result;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::factored::{self, Factored};
use super::lora::Lora;
use super::model::TrainModel;
use crate::adapters::lokr::{split_w2, Factor};
use crate::adapters::{Adapter, LokrConfig, LokrWeights};
use crate::model::norm::Tensor1;

/// One of the two Kronecker factors as trained: whole, or `a [rows, r] · b [r, cols]`.
#[derive(Clone, Debug)]
pub enum TrainedFactor {
    Whole(Tensor1),
    Product { a: Tensor1, b: Tensor1, r: usize },
}

/// One layer's LoKr factors.
#[derive(Clone, Debug)]
pub struct Lokr {
    pub w1: TrainedFactor,
    pub w2: TrainedFactor,
    /// `(a, b, c, d)`: `out = a·b`, `in = c·d`.
    pub dims: (usize, usize, usize, usize),
    pub scale: f32,
}

impl TrainedFactor {
    fn of(f: &Factor) -> TrainedFactor {
        let t = |v: &Vec<f32>| Tensor1::new(v.clone(), true);
        match f {
            Factor::Whole(w) => TrainedFactor::Whole(t(w)),
            Factor::Product { a, b, r } => TrainedFactor::Product {
                a: t(a),
                b: t(b),
                r: *r,
            },
        }
    }

    fn saved(&self) -> Factor {
        match self {
            TrainedFactor::Whole(w) => Factor::Whole(w.value.clone()),
            TrainedFactor::Product { a, b, r } => Factor::Product {
                a: a.value.clone(),
                b: b.value.clone(),
                r: *r,
            },
        }
    }

    /// The factor's tensors, in PEFT's key order (`w`, or `w_a`, `w_b`), with their key index
    /// offsets in `lokr::KEYS` (0, or 1 and 2).
    pub fn tensors_mut(&mut self) -> Vec<(usize, &mut Tensor1)> {
        match self {
            TrainedFactor::Whole(w) => vec![(0, w)],
            TrainedFactor::Product { a, b, .. } => vec![(1, a), (2, b)],
        }
    }

    /// Accumulates this factor's gradient from `dm`, that of the matrix it makes (`[rows, cols]`).
    fn backward(&mut self, dm: &[f32], (rows, cols): (usize, usize)) {
        match self {
            TrainedFactor::Whole(w) => add(w.grad.as_mut(), dm),
            TrainedFactor::Product { a, b, r } => {
                let r = *r;
                // m = a·b: da = dm·bᵀ, db = aᵀ·dm.
                let mut da = vec![0.0; rows * r];
                let mut db = vec![0.0; r * cols];
                for i in 0..rows {
                    for k in 0..r {
                        for j in 0..cols {
                            let g = dm[i * cols + j];
                            da[i * r + k] += g * b.value[k * cols + j];
                            db[k * cols + j] += a.value[i * r + k] * g;
                        }
                    }
                }
                add(a.grad.as_mut(), &da);
                add(b.grad.as_mut(), &db);
            }
        }
    }
}

fn add(grad: Option<&mut Vec<f32>>, d: &[f32]) {
    if let Some(grad) = grad {
        grad.iter_mut().zip(d).for_each(|(g, d)| *g += d);
    }
}

impl Lokr {
    /// PEFT's start (`init_weights: true`) for a `[out, in]` layer under `config`, drawn from
    /// `seed` and `stream` (the module).
    pub fn init(
        config: &LokrConfig,
        (out, inp): (usize, usize),
        (seed, stream): (u64, u64),
    ) -> Lokr {
        let mut rng = StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut kaiming = |n: usize, fan_in: usize| -> Tensor1 {
            let bound = 1.0 / (fan_in as f32).sqrt();
            Tensor1::new(
                (0..n).map(|_| rng.random_range(-bound..bound)).collect(),
                true,
            )
        };
        let zeros = |n: usize| Tensor1::new(vec![0.0; n], true);
        let ((a, b, c, d), w1_whole, w2_whole) = config.layout(out, inp);
        let r = config.r;
        let w1 = match w1_whole {
            true => TrainedFactor::Whole(zeros(a * c)),
            false => TrainedFactor::Product {
                a: zeros(a * r),
                b: kaiming(r * c, c),
                r,
            },
        };
        let w2 = match w2_whole {
            true => TrainedFactor::Whole(kaiming(b * d, d)),
            false => TrainedFactor::Product {
                a: kaiming(b * r, r),
                b: kaiming(r * d, d),
                r,
            },
        };
        Lokr {
            w1,
            w2,
            dims: (a, b, c, d),
            scale: config.scale() as f32,
        }
    }

    /// The factors of a saved adapter.
    pub fn from_weights(w: &LokrWeights) -> Lokr {
        Lokr {
            w1: TrainedFactor::of(&w.w1),
            w2: TrainedFactor::of(&w.w2),
            dims: w.dims,
            scale: w.scale as f32,
        }
    }

    /// The factors as PEFT saves them.
    pub fn weights(&self) -> LokrWeights {
        LokrWeights {
            w1: self.w1.saved(),
            w2: self.w2.saved(),
            dims: self.dims,
            scale: f64::from(self.scale),
        }
    }

    /// W1 `[a, c]`, and W2 split as `X [b, q] · Y [q, d]`.
    fn matrices(&self) -> (Vec<f32>, (Vec<f32>, Vec<f32>, usize)) {
        let (a, b, c, _) = self.dims;
        let w1 = self.w1.saved().matrix(a, c);
        (w1, split_w2(&self.w2.saved(), b))
    }

    /// The update as a LoRA of rank `c·q`, with zeroed gradients.
    pub(super) fn as_lora(&self) -> Lora {
        Lora::from_weights(&self.weights().as_lora(), 0.0)
    }

    /// From the LoRA's gradients to the factors': `B' = kron(W1, X)`, `A' = kron(I_c, Y)`.
    pub(super) fn chain(&mut self, grad_a: &[f32], grad_b: &[f32]) {
        let (a, b, c, d) = self.dims;
        let (w1, (x_m, _, q)) = self.matrices();
        // B'[(i·b + k), (j·q + m)] = W1[i, j] · X[k, m].
        let (mut dw1, mut dx_m) = (vec![0.0; a * c], vec![0.0; b * q]);
        for i in 0..a {
            for k in 0..b {
                let row = &grad_b[(i * b + k) * c * q..(i * b + k + 1) * c * q];
                for j in 0..c {
                    for m in 0..q {
                        let g = row[j * q + m];
                        dw1[i * c + j] += g * x_m[k * q + m];
                        dx_m[k * q + m] += g * w1[i * c + j];
                    }
                }
            }
        }
        // A'[(j·q + m), (j·d + l)] = Y[m, l].
        let mut dy_m = vec![0.0; q * d];
        for j in 0..c {
            for m in 0..q {
                let row = &grad_a[(j * q + m) * c * d + j * d..][..d];
                dy_m[m * d..(m + 1) * d]
                    .iter_mut()
                    .zip(row)
                    .for_each(|(g, v)| *g += v);
            }
        }
        self.w1.backward(&dw1, (a, c));
        match &mut self.w2 {
            // X = I: only Y = W2 trains.
            TrainedFactor::Whole(w) => add(w.grad.as_mut(), &dy_m),
            TrainedFactor::Product { a: wa, b: wb, .. } => {
                add(wa.grad.as_mut(), &dx_m);
                add(wb.grad.as_mut(), &dy_m);
            }
        }
    }
}

/// Gives every module of `model` that `config` targets its LoKr factors: those of `start` (an
/// adapter the run continues) or PEFT's start drawn from `seed`.
pub fn attach(
    model: &mut TrainModel,
    config: &LokrConfig,
    start: Option<&Adapter>,
    seed: u64,
) -> Result<()> {
    let make = |path: &str, (inp, out): (usize, usize), stream: u64| {
        let saved = (start.is_some(), start.and_then(|a| a.lokr.get(path)));
        let dims = |w: &LokrWeights| (w.out_features(), w.in_features());
        let lokr = match factored::continued((path, (inp, out)), saved, dims, "LoKr factors")? {
            Some(w) => Lokr::from_weights(w),
            None => Lokr::init(config, (out, inp), (seed, stream)),
        };
        Ok(Factored::Lokr(lokr))
    };
    factored::attach(model, |path| config.selects(path), make)
}
