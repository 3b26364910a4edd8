//! The one matrix-product helper of the training kernels: `C (+)= op(A)·op(B)` over row-major
//! f32 slices through the `gemm` crate, plus the three products a Linear layer needs.
//!
//! Operands are strided views, so a transpose or a column block of a token-major activation
//! (one head of `[tokens, heads, head_dim]`) is just a different pair of strides: nothing is
//! copied before `gemm` packs its panels.

use gemm::{gemm, Parallelism};

/// A read-only matrix view: `rows × cols` elements of `data`, element `(r, c)` at
/// `r * row_stride + c * col_stride`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// A contiguous row-major `rows × cols` matrix at the start of `data`.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// A row-major `rows × cols` matrix whose rows start `row_stride` elements apart (a column
    /// block of a wider matrix).
    ///
    /// # Panics
    /// If `row_stride < cols` or the last element lies beyond `data`.
    pub fn strided(data: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(
            row_stride >= cols,
            "row stride {row_stride} < {cols} columns"
        );
        let m = Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        };
        m.check();
        m
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn check(&self) {
        assert!(
            extent(self.rows, self.cols, self.row_stride, self.col_stride) <= self.data.len(),
            "{}x{} matrix (strides {}, {}) does not fit in {} elements",
            self.rows,
            self.cols,
            self.row_stride,
            self.col_stride,
            self.data.len()
        );
    }
}

/// A writable row-major matrix view: `rows × cols` elements of `data`, rows `row_stride` apart.
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
}

impl<'a> MatMut<'a> {
    /// A contiguous row-major `rows × cols` matrix at the start of `data`.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols)
    }

    /// A row-major `rows × cols` matrix whose rows start `row_stride` elements apart.
    ///
    /// # Panics
    /// If `row_stride < cols` or the last element lies beyond `data`.
    pub fn strided(data: &'a mut [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        assert!(
            row_stride >= cols,
            "row stride {row_stride} < {cols} columns"
        );
        assert!(
            extent(rows, cols, row_stride, 1) <= data.len(),
            "{rows}x{cols} matrix (row stride {row_stride}) does not fit in {} elements",
            data.len()
        );
        Self {
            data,
            rows,
            cols,
            row_stride,
        }
    }
}

/// Elements spanned by a strided matrix: one past its last element, 0 when empty.
fn extent(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (rows - 1) * row_stride + (cols - 1) * col_stride + 1
    }
}

/// Whether a product may spread over rayon's threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// All threads of the current rayon pool (`gemm` still runs small products on one).
    Pool,
    /// The calling thread only: for callers that are themselves one task of a parallel loop.
    Single,
}

/// `C = A·B`, or `C += A·B` when `accumulate`, for any strides of A and B (pass `a.t()` for Aᵀ).
///
/// # Panics
/// If the shapes do not chain: A is `m × k`, B is `k × n`, C is `m × n`.
pub fn matmul(c: MatMut, a: MatRef, b: MatRef, accumulate: bool, threads: Threads) {
    assert!(
        a.rows == c.rows && b.cols == c.cols && a.cols == b.rows,
        "matmul shapes do not chain: ({}x{})·({}x{}) -> {}x{}",
        a.rows,
        a.cols,
        b.rows,
        b.cols,
        c.rows,
        c.cols
    );
    let parallelism = match threads {
        Threads::Pool => Parallelism::Rayon(rayon::current_num_threads()),
        Threads::Single => Parallelism::None,
    };
    let stride = |s: usize| s as isize;
    // SAFETY: the constructors checked that every view lies inside its slice, the assert above
    // that the shapes chain, and C is a unique borrow, so it overlaps neither A nor B.
    unsafe {
        gemm(
            c.rows,
            c.cols,
            a.cols,
            c.data.as_mut_ptr(),
            1,
            stride(c.row_stride),
            accumulate,
            a.data.as_ptr(),
            stride(a.col_stride),
            stride(a.row_stride),
            b.data.as_ptr(),
            stride(b.col_stride),
            stride(b.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Sizes of a Linear layer `y = x Wᵀ` applied to `tokens` rows: x is `[tokens, in_features]`,
/// W is `[out_features, in_features]` (PyTorch's layout), y is `[tokens, out_features]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    pub tokens: usize,
    pub in_features: usize,
    pub out_features: usize,
}

/// Forward: `y = x Wᵀ` (y is overwritten).
pub fn linear_forward(y: &mut [f32], x: &[f32], w: &[f32], s: LinearShape) {
    matmul(
        MatMut::new(y, s.tokens, s.out_features),
        MatRef::new(x, s.tokens, s.in_features),
        MatRef::new(w, s.out_features, s.in_features).t(),
        false,
        Threads::Pool,
    );
}

/// Input gradient: `dx = dy W` (dx is overwritten).
pub fn linear_backward_input(dx: &mut [f32], dy: &[f32], w: &[f32], s: LinearShape) {
    matmul(
        MatMut::new(dx, s.tokens, s.in_features),
        MatRef::new(dy, s.tokens, s.out_features),
        MatRef::new(w, s.out_features, s.in_features),
        false,
        Threads::Pool,
    );
}

/// Weight gradient: `dW += dyᵀ x` (accumulated, for micro-batches and shared weights).
pub fn linear_backward_weight(dw: &mut [f32], dy: &[f32], x: &[f32], s: LinearShape) {
    matmul(
        MatMut::new(dw, s.out_features, s.in_features),
        MatRef::new(dy, s.tokens, s.out_features).t(),
        MatRef::new(x, s.tokens, s.in_features),
        true,
        Threads::Pool,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
    }

    /// `(r, c)` of a view, read the slow obvious way.
    fn at(m: &MatRef, r: usize, c: usize) -> f64 {
        m.data[r * m.row_stride + c * m.col_stride] as f64
    }

    /// Largest |got - want| over the `rows × cols` block of `got` (row stride `ld`), where
    /// want = `init` (+ A·B), computed by a triple loop in f64.
    fn max_err(got: &[f32], init: &[f32], ld: usize, a: &MatRef, b: &MatRef, acc: bool) -> f64 {
        let mut err = 0f64;
        for r in 0..a.rows {
            for c in 0..b.cols {
                let mut want = if acc { init[r * ld + c] as f64 } else { 0.0 };
                for i in 0..a.cols {
                    want += at(a, r, i) * at(b, i, c);
                }
                err = err.max((got[r * ld + c] as f64 - want).abs());
            }
        }
        err
    }

    /// Every transpose combination, overwrite and accumulate, contiguous and strided operands,
    /// on odd shapes (and one large enough that `gemm` splits it over threads), against a naive
    /// triple loop. Entries are O(1) with k ≤ 300 terms: f32 sums stay within 1e-4 absolute.
    #[test]
    fn matches_triple_loop() {
        let mut rng = StdRng::seed_from_u64(7);
        for &(m, n, k) in &[
            (1, 1, 1),
            (7, 5, 3),
            (13, 37, 70),
            (65, 33, 17),
            (130, 97, 300),
        ] {
            for (ta, tb, pad, acc) in
                (0..16).map(|i| (i & 1 != 0, i & 2 != 0, i & 4 != 0, i & 8 != 0))
            {
                let pad = if pad { 3 } else { 0 };
                // Stored shapes: Aᵀ is stored k × m, and so on.
                let (ar, ac) = if ta { (k, m) } else { (m, k) };
                let (br, bc) = if tb { (n, k) } else { (k, n) };
                let a_data = random(&mut rng, ar * (ac + pad));
                let b_data = random(&mut rng, br * (bc + pad));
                let mut a = MatRef::strided(&a_data, ar, ac, ac + pad);
                let mut b = MatRef::strided(&b_data, br, bc, bc + pad);
                if ta {
                    a = a.t();
                }
                if tb {
                    b = b.t();
                }
                let ldc = n + pad;
                let init = random(&mut rng, m * ldc);
                let mut c = init.clone();
                matmul(MatMut::strided(&mut c, m, n, ldc), a, b, acc, Threads::Pool);
                let err = max_err(&c, &init, ldc, &a, &b, acc);
                assert!(
                    err < 1e-4,
                    "{m}x{n}x{k} ta={ta} tb={tb} pad={pad} acc={acc}: {err}"
                );
                // Padding between rows of C is never written.
                for r in 0..m {
                    assert_eq!(
                        c[r * ldc + n..(r + 1) * ldc],
                        init[r * ldc + n..(r + 1) * ldc]
                    );
                }
            }
        }
    }

    /// An empty inner dimension gives a zero product: overwrite clears C, accumulate keeps it.
    #[test]
    fn empty_inner_dimension() {
        let mut c = vec![5.0f32; 6];
        matmul(
            MatMut::new(&mut c, 2, 3),
            MatRef::new(&[], 2, 0),
            MatRef::new(&[], 0, 3),
            true,
            Threads::Single,
        );
        assert_eq!(c, vec![5.0; 6]);
        matmul(
            MatMut::new(&mut c, 2, 3),
            MatRef::new(&[], 2, 0),
            MatRef::new(&[], 0, 3),
            false,
            Threads::Single,
        );
        assert_eq!(c, vec![0.0; 6]);
    }

    #[test]
    #[should_panic(expected = "do not chain")]
    fn rejects_mismatched_shapes() {
        let (a, b) = (vec![0.0; 6], vec![0.0; 6]);
        let mut c = vec![0.0; 4];
        matmul(
            MatMut::new(&mut c, 2, 2),
            MatRef::new(&a, 2, 3),
            MatRef::new(&b, 2, 3),
            false,
            Threads::Single,
        );
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn rejects_views_beyond_the_slice() {
        MatRef::strided(&[0.0; 10], 3, 3, 4);
    }

    /// The three Linear products against their definitions, written out index by index.
    #[test]
    fn linear_products() {
        let mut rng = StdRng::seed_from_u64(11);
        let s = LinearShape {
            tokens: 13,
            in_features: 37,
            out_features: 21,
        };
        let (t, i, o) = (s.tokens, s.in_features, s.out_features);
        let x = random(&mut rng, t * i);
        let w = random(&mut rng, o * i);
        let dy = random(&mut rng, t * o);
        let dw0 = random(&mut rng, o * i);

        let mut y = vec![f32::NAN; t * o];
        linear_forward(&mut y, &x, &w, s);
        let mut dx = vec![f32::NAN; t * i];
        linear_backward_input(&mut dx, &dy, &w, s);
        let mut dw = dw0.clone();
        linear_backward_weight(&mut dw, &dy, &x, s);

        let close = |got: f32, want: f64| (got as f64 - want).abs() < 1e-4;
        for r in 0..t {
            for c in 0..o {
                let want: f64 = (0..i)
                    .map(|j| x[r * i + j] as f64 * w[c * i + j] as f64)
                    .sum();
                assert!(close(y[r * o + c], want), "y[{r},{c}]");
            }
            for c in 0..i {
                let want: f64 = (0..o)
                    .map(|j| dy[r * o + j] as f64 * w[j * i + c] as f64)
                    .sum();
                assert!(close(dx[r * i + c], want), "dx[{r},{c}]");
            }
        }
        for r in 0..o {
            for c in 0..i {
                let grad: f64 = (0..t)
                    .map(|j| dy[j * o + r] as f64 * x[j * i + c] as f64)
                    .sum();
                assert!(
                    close(dw[r * i + c], dw0[r * i + c] as f64 + grad),
                    "dw[{r},{c}]"
                );
            }
        }
    }
}
