//! AdamW and global-norm gradient clipping, computing what `torch.optim.AdamW` and
//! `torch.nn.utils.clip_grad_norm_` compute (same operation order, f32 state, f64 scalars), so a
//! Hone run follows a transformers run step for step.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Elements per rayon task in the element-wise loops: large enough to amortise scheduling.
const PAR_CHUNK: usize = 1 << 14;

/// Hyper-parameters of one parameter group, named as in `torch.optim.AdamW`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    /// Base learning rate, scaled by the schedule's multiplier at each step.
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Decoupled: `p -= lr · weight_decay · p` before the Adam update.
    pub weight_decay: f64,
}

/// Adam moments of one parameter: torch's `exp_avg` and `exp_avg_sq`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamState {
    pub name: String,
    pub exp_avg: Vec<f32>,
    pub exp_avg_sq: Vec<f32>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamGroup {
    pub config: AdamWConfig,
    /// Steps taken. torch counts per parameter, but a group's parameters always step together.
    pub step: u64,
    pub params: Vec<ParamState>,
}

/// The optimizer and all its state; serialising it checkpoints the optimizer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    pub groups: Vec<ParamGroup>,
}

/// A parameter handed to [`AdamW::step`]: its values, updated in place, and its gradient.
pub struct Param<'a> {
    pub name: String,
    pub value: &'a mut [f32],
    pub grad: &'a [f32],
}

impl AdamW {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a group of parameters, given as `(name, element count)`, with zero moments.
    pub fn add_group(&mut self, config: AdamWConfig, params: &[(&str, usize)]) -> Result<()> {
        let mut names: HashSet<&str> = self
            .groups
            .iter()
            .flat_map(|g| &g.params)
            .map(|p| p.name.as_str())
            .collect();
        for &(name, _) in params {
            ensure!(
                names.insert(name),
                "AdamW: parameter {name:?} is registered twice"
            );
        }
        self.groups.push(ParamGroup {
            config,
            step: 0,
            params: params
                .iter()
                .map(|&(name, len)| ParamState {
                    name: name.to_owned(),
                    exp_avg: vec![0.0; len],
                    exp_avg_sq: vec![0.0; len],
                })
                .collect(),
        });
        Ok(())
    }

    /// One optimizer step for every group at learning rate `config.lr · lr_multiplier` (the
    /// schedule's multiplier, see `train::schedule`). `params` must be exactly the registered
    /// parameters, in any order; nothing is updated when they are not.
    pub fn step(&mut self, params: &mut [Param<'_>], lr_multiplier: f64) -> Result<()> {
        let mut index = HashMap::with_capacity(params.len());
        for (i, p) in params.iter().enumerate() {
            ensure!(
                index.insert(p.name.clone(), i).is_none(),
                "AdamW step: parameter {:?} passed twice",
                p.name
            );
            ensure!(
                p.value.len() == p.grad.len(),
                "AdamW step: parameter {:?} has {} values but a gradient of {}",
                p.name,
                p.value.len(),
                p.grad.len()
            );
        }
        let registered: usize = self.groups.iter().map(|g| g.params.len()).sum();
        for state in self.groups.iter().flat_map(|g| &g.params) {
            let i = *index
                .get(state.name.as_str())
                .with_context(|| format!("AdamW step: parameter {:?} is missing", state.name))?;
            ensure!(
                params[i].value.len() == state.exp_avg.len(),
                "AdamW step: parameter {:?} has {} values, registered with {}",
                state.name,
                params[i].value.len(),
                state.exp_avg.len()
            );
        }
        if registered != params.len() {
            let unknown = params.iter().find(|p| {
                self.groups
                    .iter()
                    .flat_map(|g| &g.params)
                    .all(|s| s.name != p.name)
            });
            bail!(
                "AdamW step: parameter {:?} was never registered",
                unknown.map_or("?", |p| p.name.as_str())
            );
        }

        for group in &mut self.groups {
            group.step += 1;
            let coeffs = Coefficients::new(&group.config, group.step, lr_multiplier);
            for state in &mut group.params {
                let p = &mut params[index[state.name.as_str()]];
                p.value
                    .par_chunks_mut(PAR_CHUNK)
                    .zip(p.grad.par_chunks(PAR_CHUNK))
                    .zip(state.exp_avg.par_chunks_mut(PAR_CHUNK))
                    .zip(state.exp_avg_sq.par_chunks_mut(PAR_CHUNK))
                    .for_each(|(((value, grad), m), v)| coeffs.update(value, grad, m, v));
            }
        }
        Ok(())
    }
}

/// A step's scalars, computed in f64 as torch computes them in Python floats, then rounded to f32
/// where torch hands them to an f32 tensor op.
struct Coefficients {
    decay: Option<f32>,
    lerp_weight: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
    neg_step_size: f32,
}

impl Coefficients {
    fn new(config: &AdamWConfig, step: u64, lr_multiplier: f64) -> Self {
        let lr = config.lr * lr_multiplier;
        let (beta1, beta2) = config.betas;
        // powf, as Python's float ** int goes through C pow().
        let bias_correction1 = 1.0 - beta1.powf(step as f64);
        let bias_correction2 = 1.0 - beta2.powf(step as f64);
        Coefficients {
            decay: (config.weight_decay != 0.0).then_some((1.0 - lr * config.weight_decay) as f32),
            lerp_weight: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            eps: config.eps as f32,
            neg_step_size: (-(lr / bias_correction1)) as f32,
        }
    }

    /// torch's single-tensor AdamW, op by op: `p.mul_(1 - lr·wd)`, `exp_avg.lerp_(g, 1 - β1)`,
    /// `exp_avg_sq.mul_(β2).addcmul_(g, g, 1 - β2)`, `denom = exp_avg_sq.sqrt() / bc2_sqrt + eps`,
    /// `p.addcdiv_(exp_avg, denom, -lr / bc1)`.
    fn update(&self, value: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { self.update_avx512(value, grad, m, v) };
        }
        self.update_portable(value, grad, m, v)
    }

    /// [`Self::update_portable`] compiled for AVX-512: the crate is built for baseline x86-64,
    /// where the square roots and divisions ran 4 lanes wide (a tenth of a bf16 full fine-tuning
    /// step). Square root and division round exactly at any width, so the values are the same.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn update_avx512(&self, value: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
        self.update_portable(value, grad, m, v)
    }

    #[inline(always)]
    fn update_portable(&self, value: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32]) {
        for (((p, &g), m), v) in value.iter_mut().zip(grad).zip(m).zip(v) {
            if let Some(decay) = self.decay {
                *p *= decay;
            }
            *m = lerp(*m, g, self.lerp_weight);
            *v = *v * self.beta2 + self.one_minus_beta2 * g * g;
            let denom = v.sqrt() / self.bias_correction2_sqrt + self.eps;
            *p += self.neg_step_size * (*m / denom);
        }
    }
}

/// torch's lerp, which picks the formula that is exact at the nearer end point.
#[inline(always)]
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// Scales all gradients by `min(max_norm / (norm + 1e-6), 1)`, where `norm` is their global L2
/// norm, as `torch.nn.utils.clip_grad_norm_` does; returns that norm (before clipping). As in
/// torch, a non-finite norm is returned and propagates into the gradients.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f32) -> f32 {
    // Partial sums in a fixed order, so the norm is the same on every run and thread count.
    let partial: Vec<f64> = grads
        .iter()
        .flat_map(|g| g.chunks(PAR_CHUNK))
        .collect::<Vec<_>>()
        .par_iter()
        .map(|c| sum_of_squares(c))
        .collect();
    let norm = partial.iter().sum::<f64>().sqrt() as f32;
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    if coef == 1.0 {
        return norm;
    }
    for g in grads.iter_mut() {
        g.par_chunks_mut(PAR_CHUNK)
            .for_each(|c| c.iter_mut().for_each(|x| *x *= coef));
    }
    norm
}

/// `Σ x²` in f64 over 8 interleaved partial sums, added in a fixed order: one running sum is a
/// chain of dependent additions the compiler may not reorder, which made the norm 2% of a full
/// fine-tuning step.
fn sum_of_squares(values: &[f32]) -> f64 {
    const LANES: usize = 8;
    let mut sums = [0f64; LANES];
    let (whole, rest) = values.as_chunks::<LANES>();
    for chunk in whole {
        for (s, &x) in sums.iter_mut().zip(chunk) {
            *s += f64::from(x) * f64::from(x);
        }
    }
    for (s, &x) in sums.iter_mut().zip(rest) {
        *s += f64::from(x) * f64::from(x);
    }
    sums.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: AdamWConfig = AdamWConfig {
        lr: 1e-3,
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 0.0,
    };

    #[test]
    fn parameter_lists_must_match_the_registration() {
        let mut opt = AdamW::new();
        opt.add_group(CONFIG, &[("a", 2), ("b", 1)]).unwrap();
        let err = opt.add_group(CONFIG, &[("a", 2)]).unwrap_err();
        assert!(
            err.to_string().contains("\"a\" is registered twice"),
            "{err}"
        );

        let (mut a, mut b, mut c) = (vec![1.0; 2], vec![1.0; 1], vec![1.0; 1]);
        let g = [0.5; 2];
        let before = opt.clone();
        let mut missing = [Param {
            name: "a".into(),
            value: &mut a,
            grad: &g,
        }];
        let err = opt.step(&mut missing, 1.0).unwrap_err();
        assert!(err.to_string().contains("\"b\" is missing"), "{err}");
        let mut extra = [
            Param {
                name: "a".into(),
                value: &mut a,
                grad: &g,
            },
            Param {
                name: "b".into(),
                value: &mut b,
                grad: &g[..1],
            },
            Param {
                name: "c".into(),
                value: &mut c,
                grad: &g[..1],
            },
        ];
        let err = opt.step(&mut extra, 1.0).unwrap_err();
        assert!(
            err.to_string().contains("\"c\" was never registered"),
            "{err}"
        );
        let mut short_grad = [
            Param {
                name: "a".into(),
                value: &mut a,
                grad: &g[..1],
            },
            Param {
                name: "b".into(),
                value: &mut b,
                grad: &g[..1],
            },
        ];
        let err = opt.step(&mut short_grad, 1.0).unwrap_err();
        assert!(err.to_string().contains("gradient of 1"), "{err}");
        assert_eq!(opt, before, "a rejected step changes nothing");
        assert_eq!((a, b), (vec![1.0; 2], vec![1.0]));
    }

    #[test]
    fn clipping_leaves_small_gradients_alone() {
        let (mut a, mut b) = (vec![0.3f32, 0.0], vec![0.4f32]);
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
        assert!((norm - 0.5).abs() < 1e-7);
        assert_eq!((a, b), (vec![0.3, 0.0], vec![0.4]));
        let (mut a, mut b) = (vec![3.0f32, 0.0], vec![4.0f32]);
        let norm = clip_grad_norm(&mut [&mut a, &mut b], 1.0);
        assert_eq!(norm, 5.0);
        assert!((a[0] - 0.6).abs() < 1e-6 && (b[0] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn state_round_trips_through_serde() {
        let mut opt = AdamW::new();
        opt.add_group(CONFIG, &[("w", 3)]).unwrap();
        let mut w = vec![1.0, -2.0, 0.5];
        let g = [0.1, 0.2, -0.3];
        opt.step(
            &mut [Param {
                name: "w".into(),
                value: &mut w,
                grad: &g,
            }],
            1.0,
        )
        .unwrap();
        let json = serde_json::to_string(&opt).unwrap();
        assert_eq!(serde_json::from_str::<AdamW>(&json).unwrap(), opt);
    }
}
