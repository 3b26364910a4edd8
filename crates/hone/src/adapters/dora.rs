//! DoRA (weight-decomposed LoRA) as PEFT computes it: the adapted weight is
//! `W' = m ⊙ (W + s·B·A) / ‖W + s·B·A‖`, the norm taken over each output row and `m` the learned
//! magnitude (PEFT's `lora_magnitude_vector`, one value per output feature). `m` starts as the
//! row norms of `W` (B is zero at init), so training starts from the base model exactly.
//!
//! The norm is recomputed from the current A and B wherever the adapter is applied (training
//! treats it as a constant, detached as the DoRA paper and PEFT do); merging multiplies each row
//! of `W + s·B·A` by its factor `m / ‖row‖`.

use std::ops::Range;

use rayon::prelude::*;

use crate::kernels::matmul::{matmul, MatMut, MatRef, Threads};

/// A low-rank update `scale · B·A`, A `[r, in]`, B `[out, r]`, borrowed from whichever struct
/// holds it (an adapter file's, the training engine's, the inference model's).
#[derive(Clone, Copy)]
pub struct LowRank<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub r: usize,
    pub scale: f32,
}

/// Output rows per task: enough work per task, little memory per buffer.
const ROWS_PER_TASK: usize = 32;

/// The Euclidean norm of each row of `w` (`[rows, cols]`), summed in f64.
pub fn row_norms(w: &[f32], cols: usize) -> Vec<f32> {
    w.chunks_exact(cols)
        .map(|row| {
            let sum: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
            sum.sqrt() as f32
        })
        .collect()
}

/// The row norms of `W + scale · B·A`, with `W`'s rows written into a buffer by `weight_rows`
/// (an f32 slice copied, or a stored matrix dequantized), a few rows at a time.
pub fn adapted_row_norms(
    update: LowRank,
    cols: usize,
    weight_rows: &(dyn Fn(Range<usize>, &mut [f32]) + Sync),
) -> Vec<f32> {
    let LowRank { a, b, r, scale } = update;
    let out = b.len() / r;
    let starts: Vec<usize> = (0..out).step_by(ROWS_PER_TASK).collect();
    starts
        .par_iter()
        .flat_map_iter(|&start| {
            let end = (start + ROWS_PER_TASK).min(out);
            let mut w = vec![0f32; (end - start) * cols];
            weight_rows(start..end, &mut w);
            let scaled_b: Vec<f32> = b[start * r..end * r].iter().map(|&v| v * scale).collect();
            matmul(
                MatMut::new(&mut w, end - start, cols),
                MatRef::new(&scaled_b, end - start, r),
                MatRef::new(a, r, cols),
                true,
                Threads::Single,
            );
            row_norms(&w, cols)
        })
        .collect()
}

/// DoRA's factor on each output row: `magnitude / norm`.
pub fn factors(magnitude: &[f32], norms: &[f32]) -> Vec<f32> {
    magnitude.iter().zip(norms).map(|(m, n)| m / n).collect()
}

/// Merges DoRA's rescaling into `w`, which already holds `W + s·B·A` (`[rows, cols]`): each row
/// times `magnitude / ‖row‖`, as PEFT's `merge_and_unload`.
pub fn rescale_rows(w: &mut [f32], cols: usize, magnitude: &[f32]) {
    let factors = factors(magnitude, &row_norms(w, cols));
    for (row, f) in w.chunks_exact_mut(cols).zip(factors) {
        row.iter_mut().for_each(|v| *v *= f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapted_norms_are_the_norms_of_the_summed_matrix() {
        // W [3, 2], A [1, 2], B [3, 1], scale 2: W + 2·B·A by hand.
        let w = [3.0, 4.0, 1.0, 0.0, 0.0, 2.0];
        let (a, b) = ([1.0, -1.0], [0.5, 0.0, -1.0]);
        let update = LowRank {
            a: &a,
            b: &b,
            r: 1,
            scale: 2.0,
        };
        let norms = adapted_row_norms(update, 2, &|rows, out: &mut [f32]| {
            out.copy_from_slice(&w[rows.start * 2..rows.end * 2])
        });
        let summed = [4.0, 3.0, 1.0, 0.0, -2.0, 4.0];
        assert_eq!(norms, row_norms(&summed, 2));
        assert_eq!(norms[0], 5.0);
        let mut merged = summed;
        rescale_rows(&mut merged, 2, &[10.0, 1.0, 1.0]);
        assert_eq!(&merged[..4], &[8.0, 6.0, 1.0, 0.0]);
    }
}
