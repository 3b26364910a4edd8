//! Rotary position embedding tables (cos/sin), with the frequency rescalings the families use.
//!
//! Computed in f32 the way transformers does (inverse frequencies in f32, angle = position · freq in
//! f32), so logits agree with it to float rounding rather than to the difference of two recipes.
//! Tables cover the rotated part of each head only (`rotary_dim / 2` frequencies per position).

use super::config::{ModelConfig, RopeScaling};

/// Inverse frequencies, one per pair of rotated dimensions (`rotary_dim / 2` values); LongRoPE's
/// short set.
pub fn inverse_frequencies(cfg: &ModelConfig) -> Vec<f32> {
    let dim = cfg.rotary_dim;
    let exponent = |i: usize| (2 * i) as f32 / dim as f32;
    let base: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0 / (cfg.rope_theta as f32).powf(exponent(i)))
        .collect();
    match &cfg.rope_scaling {
        None | Some(RopeScaling::Linear { .. }) => base,
        Some(RopeScaling::FreqFactors(factors)) => {
            base.iter().zip(factors).map(|(f, d)| f / d).collect()
        }
        Some(RopeScaling::LongRope { short_factor, .. }) => extended_frequencies(cfg, short_factor),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => {
            let (factor, low, high) = (
                *factor as f32,
                *low_freq_factor as f32,
                *high_freq_factor as f32,
            );
            let old_ctx = *original_max_position_embeddings as f32;
            let low_freq_wavelen = old_ctx / low;
            let high_freq_wavelen = old_ctx / high;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// LongRoPE's frequencies for one factor set, `1 / (ext_i · θ^(2i/d))` in transformers' order of
/// operations.
fn extended_frequencies(cfg: &ModelConfig, ext: &[f32]) -> Vec<f32> {
    let dim = cfg.rotary_dim;
    ext.iter()
        .enumerate()
        .map(|(i, &e)| 1.0 / (e * (cfg.rope_theta as f32).powf((2 * i) as f32 / dim as f32)))
        .collect()
}

/// Which of a model's rotary tables one row of a forward pass rotates with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RopeSet {
    /// LongRoPE's long factor set.
    pub long: bool,
    /// Qwen's dynamic NTK factor (1: the base as configured).
    pub ntk_alpha: u32,
}

/// Qwen's dynamic NTK factor for a sequence of `len` tokens: 1 within `seq_length`, then
/// `2^⌈log2(len / seq_length) + 1⌉ − 1` (3, 7, 15, … as the length doubles).
pub fn ntk_alpha(len: usize, seq_length: usize) -> u32 {
    let context = (len as f64 / seq_length as f64).log2() + 1.0;
    (2f64.powf(context.ceil()) - 1.0).max(1.0) as u32
}

/// A model's rotary tables, row-major `[positions, rotary_dim / 2]` cos and sin, built once for
/// every position it can reach.
#[derive(Clone, Debug)]
pub struct RopeTables {
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The sliding-window layers' own tables, when they rotate differently (Gemma 3:
    /// `local_rope_theta`, no scaling).
    local: Option<(Vec<f32>, Vec<f32>)>,
    /// LongRoPE's long-factor tables and the number of positions the short ones serve.
    long: Option<(Vec<f32>, Vec<f32>, usize)>,
    /// Qwen's dynamic NTK tables, one per factor a sequence within the tables can need: the base
    /// stretched to `θ · α^(d/(d−2))`.
    ntk: Vec<(u32, Vec<f32>, Vec<f32>)>,
    n_positions: usize,
}

impl RopeTables {
    pub fn new(cfg: &ModelConfig, n_positions: usize) -> RopeTables {
        let local = cfg.local_rope_theta.map(|theta| {
            let local = ModelConfig {
                rope_theta: theta,
                rope_scaling: None,
                ..cfg.clone()
            };
            tables(&inverse_frequencies(&local), n_positions, 1.0, 1.0)
        });
        let (pos_scale, magnitude) = match &cfg.rope_scaling {
            Some(RopeScaling::Linear { factor }) => (1.0 / *factor as f32, 1.0),
            Some(RopeScaling::LongRope {
                attention_factor, ..
            }) => (1.0, *attention_factor as f32),
            _ => (1.0, 1.0),
        };
        let long = match &cfg.rope_scaling {
            Some(RopeScaling::LongRope {
                long_factor,
                original_max_position_embeddings,
                ..
            }) => {
                let inv = extended_frequencies(cfg, long_factor);
                let (cos, sin) = tables(&inv, n_positions, 1.0, magnitude);
                Some((cos, sin, *original_max_position_embeddings))
            }
            _ => None,
        };
        let (cos, sin) = tables(&inverse_frequencies(cfg), n_positions, pos_scale, magnitude);
        let ntk = match cfg.dynamic_ntk {
            Some(seq_length) => ntk_tables(cfg, seq_length, n_positions),
            None => Vec::new(),
        };
        RopeTables {
            cos,
            sin,
            local,
            long,
            ntk,
            n_positions,
        }
    }

    /// The positions the tables cover (`max_position_embeddings`).
    pub fn n_positions(&self) -> usize {
        self.n_positions
    }

    /// The tables a call over `positions` rotates with, as transformers picks them for the whole
    /// call: LongRoPE's long ones when any position reaches past the original context; the base
    /// as configured otherwise (Qwen's dynamic NTK is inference-only, see `Llama::rope_sets`).
    pub fn call_set(&self, positions: &[u32]) -> RopeSet {
        RopeSet {
            long: self.reaches_long(positions),
            ntk_alpha: 1,
        }
    }

    /// Whether the model has LongRoPE's two factor sets.
    pub fn has_long(&self) -> bool {
        self.long.is_some()
    }

    /// Whether a forward pass over `positions` rotates with LongRoPE's long factor set.
    pub fn reaches_long(&self, positions: &[u32]) -> bool {
        let furthest = positions.iter().max().map_or(0, |&p| p as usize + 1);
        matches!(&self.long, Some((_, _, short_positions)) if furthest > *short_positions)
    }

    /// The local tables for a sliding-window layer when the model has them, else the global
    /// ones: LongRoPE's long set or a stretched NTK base when `set` says.
    pub fn select_set(&self, set: RopeSet, local: bool) -> (&[f32], &[f32]) {
        if let Some((cos, sin)) = self.local.as_ref().filter(|_| local) {
            return (cos, sin);
        }
        if let Some((_, cos, sin)) = self.ntk.iter().find(|(a, ..)| *a == set.ntk_alpha) {
            return (cos, sin);
        }
        match &self.long {
            Some((cos, sin, _)) if set.long => (cos, sin),
            _ => (&self.cos, &self.sin),
        }
    }
}

/// The NTK tables of every factor above 1 that a sequence of up to `n_positions` tokens needs.
fn ntk_tables(
    cfg: &ModelConfig,
    seq_length: usize,
    n_positions: usize,
) -> Vec<(u32, Vec<f32>, Vec<f32>)> {
    let dim = cfg.rotary_dim as f64;
    let mut out = Vec::new();
    let mut alpha = 3;
    while alpha <= ntk_alpha(n_positions, seq_length) {
        let stretched = ModelConfig {
            rope_theta: cfg.rope_theta * f64::from(alpha).powf(dim / (dim - 2.0)),
            ..cfg.clone()
        };
        let (cos, sin) = tables(&inverse_frequencies(&stretched), n_positions, 1.0, 1.0);
        out.push((alpha, cos, sin));
        alpha = 2 * alpha + 1;
    }
    out
}

/// cos and sin of `position · pos_scale · freq` for every position, times `magnitude`.
fn tables(inv: &[f32], n_positions: usize, pos_scale: f32, magnitude: f32) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(n_positions * inv.len());
    let mut sin = Vec::with_capacity(n_positions * inv.len());
    for p in 0..n_positions {
        let pos = p as f32 * pos_scale;
        for &f in inv {
            let angle = pos * f;
            cos.push(angle.cos() * magnitude);
            sin.push(angle.sin() * magnitude);
        }
    }
    (cos, sin)
}
