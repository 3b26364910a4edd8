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

/// Whether element `i` survives: probability `1 − p`.
fn keep(seed: u64, i: usize, p: f32) -> bool {
    let u = (mix(seed.wrapping_add(i as u64)) >> 40) as f32 / (1u64 << 24) as f32;
    u >= p
}

/// A uniform number in [−1, 1) for element `i` of stream `seed` (NEFTune's embedding noise).
pub fn uniform(seed: u64, i: usize) -> f32 {
    let u = (mix(seed.wrapping_add(i as u64)) >> 40) as f32 / (1u64 << 24) as f32;
    2.0 * u - 1.0
}

/// `dropout(x)` with drop probability `p` in [0, 1).
pub fn apply(x: &[f32], p: f32, seed: u64) -> Vec<f32> {
    let scale = 1.0 / (1.0 - p);
    let mut out = vec![0.0; x.len()];
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (out, x))| {
            for (j, (o, &v)) in out.iter_mut().zip(x).enumerate() {
                if keep(seed, c * CHUNK + j, p) {
                    *o = v * scale;
                }
            }
        });
    out
}

/// `dx += dropout'(dy)`: the gradient through the same mask [`apply`] drew with `seed`.
pub fn backward_accumulate(dy: &[f32], p: f32, seed: u64, dx: &mut [f32]) {
    let scale = 1.0 / (1.0 - p);
    dx.par_chunks_mut(CHUNK)
        .zip(dy.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(c, (dx, dy))| {
            for (j, (d, &g)) in dx.iter_mut().zip(dy).enumerate() {
                if keep(seed, c * CHUNK + j, p) {
                    *d += g * scale;
                }
            }
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
