//! Rotary position embedding, in place on token-major q or k (`[tokens, heads, head_dim]`), in
//! transformers' `rotate_half` convention on the leading `rotary_dim` dimensions of each head:
//! dimension i is paired with i + rotary_dim/2 — or, interleaved (GLM-4, llama.cpp's NORM rope),
//! dimension 2i with 2i + 1 — and the dimensions past `rotary_dim` pass through (partial rotary,
//! Phi-4-mini, GLM-4).
//!
//! Tables are `[positions, rotary_dim/2]` cos and sin from `crate::model::rope::RopeTables`. Each
//! token's position is given explicitly, because packed examples restart their positions inside
//! a row. The map is a rotation, so its backward is the rotation by the opposite angle.

use rayon::prelude::*;

/// The per-token layout of q or k: `heads` heads of `head_dim` values, the first `rotary_dim`
/// (even) of which rotate, in pairs `(i, i + rotary_dim/2)` or, `interleaved`, `(2i, 2i + 1)`.
#[derive(Clone, Copy, Debug)]
pub struct RopeShape {
    pub heads: usize,
    pub head_dim: usize,
    pub rotary_dim: usize,
    pub interleaved: bool,
}

/// `x` is `[positions.len(), heads, head_dim]`; rotates every head of token t by angle(positions[t]).
/// Panics if a position is past the tables: the caller builds them for its longest sequence.
pub fn forward(x: &mut [f32], positions: &[u32], shape: RopeShape, cos: &[f32], sin: &[f32]) {
    rotate::<false>(x, positions, shape, cos, sin);
}

/// Turns the gradient w.r.t. the rotated values into the gradient w.r.t. the inputs, in place.
pub fn backward(dx: &mut [f32], positions: &[u32], shape: RopeShape, cos: &[f32], sin: &[f32]) {
    rotate::<true>(dx, positions, shape, cos, sin);
}

fn rotate<const INVERSE: bool>(
    x: &mut [f32],
    positions: &[u32],
    shape: RopeShape,
    cos: &[f32],
    sin: &[f32],
) {
    let RopeShape {
        heads,
        head_dim,
        rotary_dim,
        interleaved,
    } = shape;
    let (half, row) = (rotary_dim / 2, heads * head_dim);
    assert!(
        row > 0
            && rotary_dim.is_multiple_of(2)
            && rotary_dim <= head_dim
            && x.len() == positions.len() * row,
        "rope: {} values are not [{} tokens, {heads} heads, {head_dim}] rotating an even \
         {rotary_dim} of each head",
        x.len(),
        positions.len()
    );
    assert!(cos.len() == sin.len() && cos.len().is_multiple_of(half));
    let n_positions = cos.len() / half;
    x.par_chunks_mut(row)
        .zip(positions)
        .with_min_len(8)
        .for_each(|(token, &p)| {
            let p = p as usize;
            assert!(
                p < n_positions,
                "rope: position {p} is past the {n_positions}-row tables"
            );
            let (c, s) = (&cos[p * half..][..half], &sin[p * half..][..half]);
            // transformers: x·cos + rotate_half(x)·sin, rotate_half(x) = (−b, a) for each pair.
            let rotate = |a: &mut f32, b: &mut f32, c: f32, s: f32| {
                let s = if INVERSE { -s } else { s };
                let (x0, x1) = (*a, *b);
                *a = x0 * c - x1 * s;
                *b = x1 * c + x0 * s;
            };
            for head in token.chunks_exact_mut(head_dim) {
                if interleaved {
                    let pairs = head[..rotary_dim].chunks_exact_mut(2);
                    for ((pair, &c), &s) in pairs.zip(c).zip(s) {
                        let (a, b) = pair.split_at_mut(1);
                        rotate(&mut a[0], &mut b[0], c, s);
                    }
                } else {
                    let (a, b) = head[..rotary_dim].split_at_mut(half);
                    for (((a, b), &c), &s) in a.iter_mut().zip(b).zip(c).zip(s) {
                        rotate(a, b, c, s);
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    const HEADS: usize = 2;
    const HEAD_DIM: usize = 10;
    /// Partial: the last 4 dimensions of each head pass through.
    const ROTARY_DIM: usize = 6;
    fn shape(interleaved: bool) -> RopeShape {
        RopeShape {
            heads: HEADS,
            head_dim: HEAD_DIM,
            rotary_dim: ROTARY_DIM,
            interleaved,
        }
    }

    /// The loss Σ r·rope(x) in f64 from angles, with cos/sin taken from the f32 tables.
    fn loss(
        x: &[f64],
        r: &[f64],
        positions: &[u32],
        (cos, sin): (&[f32], &[f32]),
        interleaved: bool,
    ) -> f64 {
        let half = ROTARY_DIM / 2;
        let mut total = 0.0;
        for (t, &p) in positions.iter().enumerate() {
            for h in 0..HEADS {
                let base = (t * HEADS + h) * HEAD_DIM;
                total += (ROTARY_DIM..HEAD_DIM)
                    .map(|i| r[base + i] * x[base + i])
                    .sum::<f64>();
                for i in 0..half {
                    let (c, s) = (
                        cos[p as usize * half + i] as f64,
                        sin[p as usize * half + i] as f64,
                    );
                    let (a, b) = match interleaved {
                        true => (base + 2 * i, base + 2 * i + 1),
                        false => (base + i, base + i + half),
                    };
                    let (x0, x1) = (x[a], x[b]);
                    total += r[a] * (x0 * c - x1 * s) + r[b] * (x1 * c + x0 * s);
                }
            }
        }
        total
    }

    #[test]
    fn backward_matches_finite_differences_and_inverts_forward() {
        for interleaved in [false, true] {
            check_rotation(interleaved);
        }
    }

    fn check_rotation(interleaved: bool) {
        let shape = shape(interleaved);
        let mut rng = StdRng::seed_from_u64(2);
        let half = ROTARY_DIM / 2;
        let angles: Vec<f32> = (0..5 * half).map(|_| rng.random_range(-4.0..4.0)).collect();
        let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
        let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
        let positions = [0u32, 1, 2, 0, 4];
        let n = positions.len() * HEADS * HEAD_DIM;
        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        let r: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();

        let mut y = x.clone();
        forward(&mut y, &positions, shape, &cos, &sin);
        let mut dx = r.clone();
        backward(&mut dx, &positions, shape, &cos, &sin);

        let (mut x64, r64): (Vec<f64>, Vec<f64>) = (
            x.iter().map(|&v| v as f64).collect(),
            r.iter().map(|&v| v as f64).collect(),
        );
        for i in 0..n {
            let mut unit = vec![0.0; n];
            unit[i] = 1.0;
            let want = loss(&x64, &unit, &positions, (&cos, &sin), interleaved);
            assert!(
                (want - y[i] as f64).abs() < 1e-6,
                "interleaved {interleaved}: y[{i}]"
            );
        }
        for i in 0..n {
            let (h, orig) = (1e-6, x64[i]);
            x64[i] = orig + h;
            let up = loss(&x64, &r64, &positions, (&cos, &sin), interleaved);
            x64[i] = orig - h;
            let down = loss(&x64, &r64, &positions, (&cos, &sin), interleaved);
            x64[i] = orig;
            let fd = (up - down) / (2.0 * h);
            assert!(
                (fd - dx[i] as f64).abs() < 1e-5,
                "dx[{i}]: {fd} vs {}",
                dx[i]
            );
        }

        // Rotating back recovers the input.
        backward(&mut y, &positions, shape, &cos, &sin);
        let worst = y
            .iter()
            .zip(&x)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-6, "round trip off by {worst}");
    }
}
