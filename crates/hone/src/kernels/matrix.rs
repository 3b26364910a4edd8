//! A weight matrix as training's products read it: f32 values (a tensor that trains, or an f32
//! base), or frozen matrices kept in their stored type (a quantized or 16-bit base, as in QLoRA)
//! stacked by rows, e.g. q|k|v.
//!
//! Training needs both products of a Linear layer, `y = x Wᵀ` and `dx = dy W`. On stored weights
//! both run in f32 on tiles dequantized into a small buffer, never the whole matrix, so they equal
//! the products on the dequantized matrix up to summation order: the base a QLoRA run trains on
//! is the dequantized model, as bitsandbytes computes it. Activations are never quantized here
//! (the decoding path does that), since gradients must be exact.
//!
//! Mixed precision (`bf16: true`) holds frozen matrices as bf16 and multiplies them on the CPU's
//! bf16 units ([`bf16`]): activations rounded to bf16, sums in f32, as PyTorch's autocast
//! computes a Linear. Quantized frozen matrices (QLoRA) stay as stored and are rounded to bf16 for
//! each product, as bitsandbytes dequantizes to its compute dtype. Where the CPU has no fast bf16
//! kernel, the same weights are multiplied in f32 on widened tiles (activations not rounded).

use std::ops::Range;

use std::sync::Arc;

use super::bf16;
use super::matmul::{matmul, MatMut, MatRef, Threads};
use super::stored::{self, StoredMatrix};

#[derive(Clone, Debug)]
pub enum Matrix {
    /// Row-major `[values.len() / cols, cols]`.
    F32 { values: Vec<f32>, cols: usize },
    /// Frozen matrices of the same width, stacked by rows.
    Stored(Vec<StoredMatrix>),
    /// Frozen matrices of the same width, stacked by rows, multiplied in bf16: bf16 matrices, or
    /// quantized ones rounded to bf16 for each product; with `packed` (bf16 matrices only), their
    /// kernel layout is kept after the first product.
    Bf16 {
        parts: Vec<StoredMatrix>,
        packed: Option<Arc<bf16::Packed>>,
    },
}

/// A borrowed [`Matrix`]: what the products read (an f32 slice needs no copy to be one).
#[derive(Clone, Copy, Debug)]
pub enum MatrixRef<'a> {
    F32 {
        values: &'a [f32],
        cols: usize,
    },
    Stored(&'a [StoredMatrix]),
    Bf16 {
        parts: &'a [StoredMatrix],
        packed: Option<&'a bf16::Packed>,
    },
}

impl Matrix {
    pub fn as_ref(&self) -> MatrixRef<'_> {
        match self {
            Matrix::F32 { values, cols } => MatrixRef::F32 {
                values,
                cols: *cols,
            },
            Matrix::Stored(parts) => MatrixRef::Stored(parts),
            Matrix::Bf16 { parts, packed } => MatrixRef::Bf16 {
                parts,
                packed: packed.as_deref(),
            },
        }
    }

    /// The same matrix with stored bytes copied out of any memory map (see
    /// [`StoredMatrix::into_owned`]).
    pub fn into_owned(self) -> Matrix {
        match self {
            Matrix::Stored(parts) => {
                Matrix::Stored(parts.into_iter().map(StoredMatrix::into_owned).collect())
            }
            other => other,
        }
    }

    /// The matrix as bf16 for mixed precision (values rounded to nearest even), converted in
    /// parallel bands of rows, so no f32 copy of a stored matrix is made.
    pub fn to_bf16(&self) -> Matrix {
        let me = self.as_ref();
        let matrix = bf16::rounded(self.rows(), self.cols(), |rows, out| {
            me.rows_into(rows, out)
        });
        Matrix::Bf16 {
            parts: vec![matrix],
            packed: None,
        }
    }

    /// A frozen stored matrix whose products run on the bf16 units, its weights kept as stored
    /// and rounded to bf16 for each product (QLoRA under `bf16: true`); any other as it is.
    pub fn multiplied_in_bf16(self) -> Matrix {
        match self {
            Matrix::Stored(parts) => Matrix::Bf16 {
                parts,
                packed: None,
            },
            other => other,
        }
    }

    /// A bf16 matrix that keeps its kernel layout after the first product, in both orientations
    /// (twice its memory again): for one multiplied by few rows at a time, as the LM head is by
    /// chunks of 256 tokens, where packing it for every product cost more than the product.
    pub fn keeping_packed(self) -> Matrix {
        match self {
            Matrix::Bf16 { parts, .. } => Matrix::Bf16 {
                parts,
                packed: Some(Arc::default()),
            },
            other => other,
        }
    }

    pub fn rows(&self) -> usize {
        self.as_ref().rows()
    }

    pub fn cols(&self) -> usize {
        self.as_ref().cols()
    }

    /// The f32 values, unless the matrix is stored.
    pub fn values(&self) -> Option<&[f32]> {
        self.as_ref().values()
    }

    pub fn values_mut(&mut self) -> Option<&mut [f32]> {
        match self {
            Matrix::F32 { values, .. } => Some(values),
            Matrix::Stored(_) | Matrix::Bf16 { .. } => None,
        }
    }

    /// Bytes the weights occupy in memory.
    pub fn n_bytes(&self) -> usize {
        match self {
            Matrix::F32 { values, .. } => values.len() * 4,
            Matrix::Stored(parts) | Matrix::Bf16 { parts, .. } => {
                parts.iter().map(|p| p.n_bytes()).sum()
            }
        }
    }

    /// See [`MatrixRef::rows_f32`].
    pub fn rows_f32(&self, rows: Range<usize>) -> Vec<f32> {
        self.as_ref().rows_f32(rows)
    }

    /// See [`MatrixRef::gather_rows`].
    pub fn gather_rows(&self, ids: &[u32]) -> Vec<f32> {
        self.as_ref().gather_rows(ids)
    }

    /// See [`MatrixRef::forward`].
    pub fn forward(&self, x: &[f32], y: &mut [f32]) {
        self.as_ref().forward(x, y)
    }

    /// See [`MatrixRef::backward_input`].
    pub fn backward_input(&self, dy: &[f32], dx: &mut [f32], accumulate: bool) {
        self.as_ref().backward_input(dy, dx, accumulate)
    }
}

/// The indices of the stacked `parts` that make up exactly rows `rows`, if some do.
fn whole_parts(parts: &[StoredMatrix], rows: &Range<usize>) -> Option<Range<usize>> {
    let mut first_row = 0;
    let (mut start, mut end) = (None, None);
    for (i, p) in parts.iter().enumerate() {
        if first_row == rows.start {
            start = Some(i);
        }
        first_row += p.rows();
        if first_row == rows.end {
            end = Some(i + 1);
        }
    }
    Some(start?..end?).filter(|r| r.start < r.end)
}

impl<'a> MatrixRef<'a> {
    pub fn rows(&self) -> usize {
        match self {
            MatrixRef::F32 { values, cols } => values.len() / cols,
            MatrixRef::Stored(parts) | MatrixRef::Bf16 { parts, .. } => {
                parts.iter().map(|p| p.rows()).sum()
            }
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            MatrixRef::F32 { cols, .. } => *cols,
            MatrixRef::Stored(parts) | MatrixRef::Bf16 { parts, .. } => parts[0].cols(),
        }
    }

    pub fn values(self) -> Option<&'a [f32]> {
        match self {
            MatrixRef::F32 { values, .. } => Some(values),
            MatrixRef::Stored(_) | MatrixRef::Bf16 { .. } => None,
        }
    }

    /// Rows `rows` as f32, row-major (a part of a stacked matrix, for saving it).
    pub fn rows_f32(&self, rows: Range<usize>) -> Vec<f32> {
        let mut out = vec![0f32; rows.len() * self.cols()];
        self.rows_into(rows, &mut out);
        out
    }

    /// Rows `rows` as f32 into `out` (`rows.len() × cols` values, row-major).
    pub fn rows_into(&self, rows: Range<usize>, out: &mut [f32]) {
        let cols = self.cols();
        match self {
            MatrixRef::F32 { values, .. } => {
                out.copy_from_slice(&values[rows.start * cols..rows.end * cols])
            }
            MatrixRef::Stored(parts) | MatrixRef::Bf16 { parts, .. } => {
                let mut first = 0;
                for p in parts.iter() {
                    let (lo, hi) = (rows.start.max(first), rows.end.min(first + p.rows()));
                    if lo < hi {
                        let dst = &mut out[(lo - rows.start) * cols..(hi - rows.start) * cols];
                        p.dequantize_rows(lo - first..hi - first, dst);
                    }
                    first += p.rows();
                }
            }
        }
    }

    /// Calls `f` on rows `rows` as a matrix of their own (one part of a stack): a view where the
    /// stack allows one (f32 values, whole stored parts), else an f32 copy of the rows.
    pub fn with_rows<R>(&self, rows: Range<usize>, f: impl FnOnce(MatrixRef) -> R) -> R {
        let cols = self.cols();
        match self {
            MatrixRef::F32 { values, .. } => f(MatrixRef::F32 {
                values: &values[rows.start * cols..rows.end * cols],
                cols,
            }),
            MatrixRef::Stored(parts) => match whole_parts(parts, &rows) {
                Some(range) => f(MatrixRef::Stored(&parts[range])),
                None => f(MatrixRef::F32 {
                    values: &self.rows_f32(rows),
                    cols,
                }),
            },
            MatrixRef::Bf16 { parts, .. } => match whole_parts(parts, &rows) {
                Some(range) => f(MatrixRef::Bf16 {
                    parts: &parts[range],
                    packed: None,
                }),
                None => f(MatrixRef::F32 {
                    values: &self.rows_f32(rows),
                    cols,
                }),
            },
        }
    }

    /// Rows `ids` as f32, `[ids.len(), cols]`: an embedding lookup, every step, so written into
    /// one buffer.
    pub fn gather_rows(&self, ids: &[u32]) -> Vec<f32> {
        let cols = self.cols();
        let mut out = vec![0f32; ids.len() * cols];
        for (&id, dst) in ids.iter().zip(out.chunks_exact_mut(cols)) {
            self.rows_into(id as usize..id as usize + 1, dst);
        }
        out
    }

    /// `y = x Wᵀ` for `x` `[m, cols]`; `y` (`[m, rows]`) is overwritten.
    pub fn forward(&self, x: &[f32], y: &mut [f32]) {
        let (rows, cols) = (self.rows(), self.cols());
        let m = x.len() / cols;
        match (self, bf16::kernel()) {
            (MatrixRef::F32 { values, .. }, _) => matmul(
                MatMut::new(y, m, rows),
                MatRef::new(x, m, cols),
                MatRef::new(values, rows, cols).t(),
                false,
                Threads::Pool,
            ),
            (MatrixRef::Bf16 { parts, packed }, Some(kernel)) => {
                let parts: Vec<&StoredMatrix> = parts.iter().collect();
                bf16::forward(kernel, &parts, *packed, x, m, y);
            }
            (MatrixRef::Stored(parts) | MatrixRef::Bf16 { parts, .. }, _) => {
                let parts: Vec<&StoredMatrix> = parts.iter().collect();
                y.copy_from_slice(&stored::matmul_f32(&parts, x, m));
            }
        }
    }

    /// `dw += dy[:, rows]ᵀ · x`: the gradient of this matrix's rows `rows` (one part of a stack),
    /// summed over the `m` rows of `dy` (`[m, dy_width]`) and `x` (`[m, cols]`), in the precision
    /// the matrix's products run in: bf16 for a bf16 matrix (as autocast's backward), else f32.
    pub fn weight_gradient(
        &self,
        dy: &[f32],
        dy_width: usize,
        rows: Range<usize>,
        x: &[f32],
        dw: &mut [f32],
    ) {
        let cols = self.cols();
        let m = x.len() / cols;
        match (self, bf16::kernel()) {
            (MatrixRef::Bf16 { .. }, Some(kernel)) => {
                bf16::weight_gradient(kernel, dy, dy_width, rows, x, m, dw)
            }
            _ => matmul(
                MatMut::new(dw, rows.len(), cols),
                MatRef::strided(&dy[rows.start..], m, rows.len(), dy_width).t(),
                MatRef::new(x, m, cols),
                true,
                Threads::Pool,
            ),
        }
    }

    /// `dx = dy W` for `dy` `[m, rows]`, into `dx` (`[m, cols]`): overwritten, or added to when
    /// `accumulate`.
    pub fn backward_input(&self, dy: &[f32], dx: &mut [f32], accumulate: bool) {
        let (rows, cols) = (self.rows(), self.cols());
        let m = dy.len() / rows;
        match (self, bf16::kernel()) {
            (MatrixRef::F32 { values, .. }, _) => matmul(
                MatMut::new(dx, m, cols),
                MatRef::new(dy, m, rows),
                MatRef::new(values, rows, cols),
                accumulate,
                Threads::Pool,
            ),
            (MatrixRef::Bf16 { parts, packed }, Some(kernel)) => {
                let parts: Vec<&StoredMatrix> = parts.iter().collect();
                bf16::backward_input(kernel, &parts, *packed, dy, m, dx, accumulate);
            }
            (MatrixRef::Stored(parts) | MatrixRef::Bf16 { parts, .. }, _) => {
                let parts: Vec<&StoredMatrix> = parts.iter().collect();
                let product = stored::matmul_transposed(&parts, dy, m);
                if accumulate {
                    dx.iter_mut().zip(&product).for_each(|(d, p)| *d += p);
                } else {
                    dx.copy_from_slice(&product);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::stored::tests::{stored, values};
    use crate::quant::GgmlType;

    /// A stored stack and its dequantized f32 twin give the same products and rows.
    #[test]
    fn a_stored_stack_behaves_as_its_dequantized_values() {
        let k = 64;
        let parts = vec![
            stored(GgmlType::Q8_0, 5, k, 1),
            stored(GgmlType::Q4_1, 3, k, 2),
        ];
        let dense: Vec<f32> = parts.iter().flat_map(|p| p.to_f32()).collect();
        let s = Matrix::Stored(parts);
        let f = Matrix::F32 {
            values: dense.clone(),
            cols: k,
        };
        assert_eq!((s.rows(), s.cols()), (8, k));
        assert_eq!(s.rows_f32(3..7), f.rows_f32(3..7));
        assert_eq!(s.gather_rows(&[7, 0, 7]), f.gather_rows(&[7, 0, 7]));
        let m = 3;
        let x = values(m * k, 5);
        let (mut ys, mut yf) = (vec![0.0; m * 8], vec![0.0; m * 8]);
        s.forward(&x, &mut ys);
        f.forward(&x, &mut yf);
        let dy = values(m * 8, 9);
        let (mut dxs, mut dxf) = (vec![1.0; m * k], vec![1.0; m * k]);
        s.backward_input(&dy, &mut dxs, true);
        f.backward_input(&dy, &mut dxf, true);
        for (a, b) in ys.iter().zip(&yf).chain(dxs.iter().zip(&dxf)) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// A quantized stack multiplied in bf16 gives exactly the products of its bf16 rounding,
    /// forward and input gradient, while it stays as stored (on CPUs with bf16 units; elsewhere
    /// both run in f32 and the test above covers the stored path).
    #[test]
    fn a_quantized_stack_multiplied_in_bf16_equals_its_bf16_rounding() {
        if bf16::kernel().is_none() {
            return;
        }
        let k = 64;
        let parts = vec![
            stored(GgmlType::Q4_1, 21, k, 1),
            stored(GgmlType::Q8_0, 40, k, 2),
        ];
        let stored_bytes: usize = parts.iter().map(|p| p.n_bytes()).sum();
        let quantized = Matrix::Stored(parts).multiplied_in_bf16();
        let rounded = quantized.to_bf16();
        assert_eq!(quantized.n_bytes(), stored_bytes);
        let (m, n) = (37, 61);
        let x = values(m * k, 5);
        let (mut yq, mut yr) = (vec![0.0; m * n], vec![1.0; m * n]);
        quantized.forward(&x, &mut yq);
        rounded.forward(&x, &mut yr);
        assert_eq!(yq, yr);
        let dy = values(m * n, 9);
        let (mut dxq, mut dxr) = (vec![1.0; m * k], vec![1.0; m * k]);
        quantized.backward_input(&dy, &mut dxq, true);
        rounded.backward_input(&dy, &mut dxr, true);
        assert_eq!(dxq, dxr);
    }
}
