//! Rotary position embedding tables (cos/sin), with the frequency rescalings Llama models use.
//!
//! Computed in f32 the way transformers does (inverse frequencies in f32, angle = position · freq in
//! f32), so logits agree with it to float rounding rather than to the difference of two recipes.

use super::config::{ModelConfig, RopeScaling};

/// Inverse frequencies, one per pair of rotated dimensions (`head_dim / 2` values).
pub fn inverse_frequencies(cfg: &ModelConfig) -> Vec<f32> {
    let dim = cfg.head_dim;
    let base: Vec<f32> = (0..dim / 2)
        .map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / dim as f32))
        .collect();
    match &cfg.rope_scaling {
        None | Some(RopeScaling::Linear { .. }) => base,
        Some(RopeScaling::FreqFactors(factors)) => {
            base.iter().zip(factors).map(|(f, d)| f / d).collect()
        }
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

/// cos and sin tables, row-major `[n_positions, head_dim / 2]`, for the model and the
/// kernels that work on slices.
/// The sliding-window layers' own tables, when the model rotates them differently (Gemma 3:
/// `local_rope_theta`, no scaling).
pub fn local_table_vecs(cfg: &ModelConfig, n_positions: usize) -> Option<(Vec<f32>, Vec<f32>)> {
    let local = ModelConfig {
        rope_theta: cfg.local_rope_theta?,
        rope_scaling: None,
        ..cfg.clone()
    };
    Some(table_vecs(&local, n_positions))
}

pub fn table_vecs(cfg: &ModelConfig, n_positions: usize) -> (Vec<f32>, Vec<f32>) {
    let inv = inverse_frequencies(cfg);
    let pos_scale = match cfg.rope_scaling {
        Some(RopeScaling::Linear { factor }) => 1.0 / factor as f32,
        _ => 1.0,
    };
    let mut cos = Vec::with_capacity(n_positions * inv.len());
    let mut sin = Vec::with_capacity(n_positions * inv.len());
    for p in 0..n_positions {
        let pos = p as f32 * pos_scale;
        for &f in &inv {
            let angle = pos * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}
