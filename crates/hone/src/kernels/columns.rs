//! Column-wise operations on row-major matrices: copying a band of columns out, scaling columns or
//! whole rows by a per-feature vector (IA3's and DoRA's scalings, forward and backward), and
//! per-column reductions over the rows (the gradients of biases and of per-feature scales:
//! `Σ_rows dy`, `Σ_rows dy ⊙ v`) in f64, each column summed in row order so the result is the
//! same on any number of threads, the columns split across threads.

use rayon::prelude::*;

use super::PARALLEL_MIN;

/// Columns `start..` of a row-major matrix `stride` values wide.
#[derive(Clone, Copy)]
pub struct Columns<'a> {
    pub data: &'a [f32],
    pub stride: usize,
    pub start: usize,
}

/// Columns per task: enough rows of work per task, a few cache lines per row.
const BLOCK: usize = 64;

/// Columns `start..start + width` of each `stride`-wide row, as a contiguous `[rows, width]` buffer.
pub fn columns(data: &[f32], stride: usize, start: usize, width: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len() / stride * width];
    let copy = |(o, r): (&mut [f32], &[f32])| o.copy_from_slice(&r[start..start + width]);
    if data.len() < PARALLEL_MIN {
        out.chunks_mut(width)
            .zip(data.chunks(stride))
            .for_each(copy);
    } else {
        out.par_chunks_mut(width)
            .zip(data.par_chunks(stride))
            .for_each(copy);
    }
    out
}

/// Multiplies columns `start..start + l.len()` of every `stride`-wide row by `l`, in place.
pub fn scale_columns(data: &mut [f32], stride: usize, start: usize, l: &[f32]) {
    let scale = |row: &mut [f32]| {
        row[start..start + l.len()]
            .iter_mut()
            .zip(l)
            .for_each(|(v, s)| *v *= s)
    };
    if data.len() < PARALLEL_MIN {
        data.chunks_exact_mut(stride).for_each(scale);
    } else {
        data.par_chunks_mut(stride).for_each(scale);
    }
}

/// Every row of `data` (rows as wide as `l`) times `l + shift`, element by element.
pub fn rows_times(data: &[f32], l: &[f32], shift: f32) -> Vec<f32> {
    if data.len() < PARALLEL_MIN {
        data.chunks_exact(l.len())
            .flat_map(|row| row.iter().zip(l).map(|(v, s)| v * (s + shift)))
            .collect()
    } else {
        data.par_chunks(l.len())
            .flat_map_iter(|row| row.iter().zip(l).map(move |(v, s)| v * (s + shift)))
            .collect()
    }
}

/// `Σ_rows a[row][j]`, or `Σ_rows a[row][j] · b[row][j]`, for the first `width` columns of `a`
/// (and `b`, which has as many rows).
pub fn column_sums<'a>(width: usize, a: Columns<'a>, b: Option<Columns<'a>>) -> Vec<f64> {
    let rows = a.data.len() / a.stride.max(1);
    (0..width)
        .step_by(BLOCK)
        .collect::<Vec<_>>()
        .into_par_iter()
        .flat_map_iter(|first| {
            let len = BLOCK.min(width - first);
            let row_of = |m: Columns<'a>, row: usize| -> &'a [f32] {
                let at = row * m.stride + m.start + first;
                &m.data[at..at + len]
            };
            let mut sums = vec![0f64; len];
            for row in 0..rows {
                let a_row = row_of(a, row);
                match b {
                    None => sums
                        .iter_mut()
                        .zip(a_row)
                        .for_each(|(s, &x)| *s += f64::from(x)),
                    Some(b) => sums
                        .iter_mut()
                        .zip(a_row)
                        .zip(row_of(b, row))
                        .for_each(|((s, &x), &y)| *s += f64::from(x) * f64::from(y)),
                }
            }
            sums
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_of_columns_are_copied_and_scaled_and_rows_multiplied() {
        // 2 rows of 4.
        let mut m = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        assert_eq!(columns(&m, 4, 1, 2), [2.0, 3.0, 6.0, 7.0]);
        scale_columns(&mut m, 4, 2, &[10.0, -1.0]);
        assert_eq!(m, [1.0, 2.0, 30.0, -4.0, 5.0, 6.0, 70.0, -8.0]);
        let l = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(
            rows_times(&[1.0; 8], &l, -1.0),
            [0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0]
        );
    }

    #[test]
    fn sums_and_products_of_columns_of_a_wider_matrix() {
        // 3 rows of 200 values; columns 5.. of a, and all of b.
        let a: Vec<f32> = (0..600).map(|i| (i % 7) as f32).collect();
        let b: Vec<f32> = (0..3 * 130).map(|i| (i % 3) as f32 - 1.0).collect();
        let a_cols = Columns {
            data: &a,
            stride: 200,
            start: 5,
        };
        let b_cols = Columns {
            data: &b,
            stride: 130,
            start: 0,
        };
        let sums = column_sums(130, a_cols, None);
        let dots = column_sums(130, a_cols, Some(b_cols));
        for j in 0..130 {
            let want: f64 = (0..3).map(|r| f64::from(a[r * 200 + 5 + j])).sum();
            let dot: f64 = (0..3)
                .map(|r| f64::from(a[r * 200 + 5 + j]) * f64::from(b[r * 130 + j]))
                .sum();
            assert_eq!((sums[j], dots[j]), (want, dot), "column {j}");
        }
    }
}
