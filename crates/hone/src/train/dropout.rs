//! Inverted dropout (`x · mask / (1 − p)`, as `torch.nn.Dropout` in training) with a mask that is a
//! pure function of a seed and the element index. The backward regenerates the mask instead of
//! keeping it, elements are drawn in parallel without a shared generator, and a run resumed from a
//! checkpoint draws exactly the masks the uninterrupted run drew. NEFTune's noise comes from the
//! same generator.

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// SplitMix64's finaliser: a bijective mix whose output bits are uniformly distributed.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for sub-stream `index` of `seed` (a layer of a step, a module of a layer, …).
pub fn stream(seed: u64, index: u64) -> u64 {
    mix(seed ^ mix(index.wrapping_add(0x9E37_79B9_7F4A_7C15)))
}

/// Elements that share one 64-bit draw, 16 bits each: a quarter of the hashing of one draw per
/// element (LoRA's dropout draws a mask over every adapter's input, twice per step).
const PER_DRAW: usize = 4;

/// Calls `f(i, kept)` for elements `start..start + len` (`start` a multiple of [`PER_DRAW`]): an
/// element survives when its 16 bits, read as a number in [0, 65536), reach `p · 65536`.
fn for_each_draw(seed: u64, start: usize, len: usize, p: f32, mut f: impl FnMut(usize, bool)) {
    let threshold = (f64::from(p) * 65536.0).ceil() as u64;
    for group in (0..len).step_by(PER_DRAW) {
        let bits = mix(seed.wrapping_add(((start + group) / PER_DRAW) as u64));
        for k in 0..PER_DRAW.min(len - group) {
            f(group + k, (bits >> (16 * k)) & 0xFFFF >= threshold);
        }
    }
}

/// A uniform number in [−1, 1) for element `i` of stream `seed` (NEFTune's embedding noise).
pub fn uniform(seed: u64, i: usize) -> f32 {
    let u = (mix(seed.wrapping_add(i as u64)) >> 40) as f32 / (1u64 << 24) as f32;
    2.0 * u - 1.0
}

/// The mask [`apply`] multiplies by: `1 / (1 − p)` where an element survives, 0 where dropped.
pub fn mask(len: usize, p: f32, seed: u64) -> Vec<f32> {
    let scale = 1.0 / (1.0 - p);
    let mut out = vec![0.0; len];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let n = out.len();
        for_each_draw(seed, c * CHUNK, n, p, |j, kept| {
            if kept {
                out[j] = scale;
            }
        });
    });
    out
}

/// `dropout(x)` with drop probability `p` in [0, 1).
pub fn apply(x: &[f32], p: f32, seed: u64) -> Vec<f32> {
    let mut out = mask(x.len(), p, seed);
    out.par_iter_mut().zip(x).for_each(|(m, v)| *m *= v);
    out
}

/// `dx += dropout'(dy)`: the gradient through the same mask [`apply`] drew with `seed`.
pub fn backward_accumulate(dy: &[f32], p: f32, seed: u64, dx: &mut [f32]) {
    let scale = 1.0 / (1.0 - p);
    dx.par_chunks_mut(CHUNK)
        .zip(dy.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (dx, dy))| {
            for_each_draw(seed, c * CHUNK, dx.len(), p, |j, kept| {
                if kept {
                    dx[j] += dy[j] * scale;
                }
            });
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_about_p_and_rescales_the_rest() {
        let x = vec![1.0f32; 100_000];
        let y = apply(&x, 0.25, 3);
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / x.len() as f64;
        assert!((kept - 0.75).abs() < 0.01, "kept {kept}");
        assert!(y.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
    }

    #[test]
    fn the_seed_fixes_the_mask_and_the_backward_reuses_it() {
        let m = mask(50_000, 0.5, 9);
        let ones = vec![1.0; m.len()];
        assert_eq!(apply(&ones, 0.5, 9), m);
        let x: Vec<f32> = (0..50_000).map(|i| i as f32 + 1.0).collect();
        assert_eq!(apply(&x, 0.5, 9), apply(&x, 0.5, 9));
        assert_ne!(apply(&x, 0.5, 9), apply(&x, 0.5, 10));
        let mut dx = vec![0.0; x.len()];
        backward_accumulate(&x, 0.5, 9, &mut dx);
        assert_eq!(dx, apply(&x, 0.5, 9));
    }

    #[test]
    fn streams_differ() {
        assert_ne!(stream(1, 0), stream(1, 1));
        assert_ne!(stream(1, 0), stream(2, 0));
    }
}
