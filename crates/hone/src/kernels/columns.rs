//! Per-column reductions over the rows of row-major matrices (the gradients of biases and of
//! per-feature scales: `Σ_rows dy`, `Σ_rows dy ⊙ v`), in f64, each column summed in row order so
//! the result is the same on any number of threads, the columns split across threads.

use rayon::prelude::*;

/// Columns `start..` of a row-major matrix `stride` values wide.
#[derive(Clone, Copy)]
pub struct Columns<'a> {
    pub data: &'a [f32],
    pub stride: usize,
    pub start: usize,
}

/// Columns per task: enough rows of work per task, a few cache lines per row.
const BLOCK: usize = 64;

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
