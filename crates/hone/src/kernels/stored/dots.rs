//! The few-row path of [`super::matmul`] (a decoding step, one token per sequence of a batch):
//! the activations are quantized once, and every weight row is dotted with each of them while it
//! is in L1 — with all of them at once where a multi-row kernel exists ([`legacy::DotQ8Rows`]) —
//! so a step streams the weights once, in their stored size.
//!
//! Each task writes its outputs straight into their columns of the `[m, n]` result: transposing
//! afterwards was a serial pass costing ~15% of a 16-row step.

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{row_dot, RowDot, StoredMatrix};
use crate::kernels::pool;
use crate::kernels::qdot::legacy::{self, Q8Quads, Q8Rows};
use crate::kernels::qdot::{self, Q8Block, Q8KBlock};

/// Parallel tasks per thread: two, so a thread that starts late or runs slow is evened out, but
/// each task a long run of consecutive rows, which the hardware prefetcher streams once it has
/// caught on. A step's block products on the default model's shapes (`bench_few_rows`, 2
/// threads): 2.84 ms at two tasks a thread, 3.04 at four, 4.74 at sixteen; whole decoding steps
/// ~5% faster at two than at four.
const TASKS_PER_THREAD: usize = 2;
/// From this many activation rows, a multi-row kernel (where there is one) takes them together.
const MULTI_ROW: usize = 2;
/// Whether the multi-row kernel takes single rows too ([`set_batch_invariant`]).
static BATCH_INVARIANT: AtomicBool = AtomicBool::new(false);

/// From now on (`on`), a row's product no longer depends on how many rows share its step: the
/// multi-row kernel, whose arithmetic per row is the same for any number of rows, takes single
/// rows too, so a sequence decodes to the same tokens alone or in any batch. The single-row
/// kernel sums in another order and is faster alone (about 12% of a lone sequence's decoding on
/// the default Q4_1 model), hence off by default.
pub fn set_batch_invariant(on: bool) {
    BATCH_INVARIANT.store(on, Ordering::Relaxed);
}

/// How many rows ahead of the one being multiplied its successors are fetched into the cache.
const PREFETCH_ROWS: usize = 4;
/// The same for the four-blocks-a-register kernel, which leaves it to the hardware prefetcher:
/// its rows go by fast enough for that to keep up, and the prefetch instructions, each holding a
/// miss buffer until its line arrives, only slowed it (a decoding step's products on the default
/// model ~4% slower on two threads, ~9% on one).
const NO_PREFETCH: usize = 0;

/// `y[m, Σ rows] = x[m, k] · [W₀; W₁; …]ᵀ` for `m ≤` [`super::FEW_ROWS`].
pub(super) fn products(parts: &[&StoredMatrix], x: &[f32], m: usize) -> Vec<f32> {
    assert!(m <= super::FEW_ROWS, "{m} rows are not a few");
    let n: usize = parts.iter().map(|p| p.rows).sum();
    let acts = Activations::new(parts, x, m);
    let mut y = vec![0f32; m * n];
    let per_task = (n / (TASKS_PER_THREAD * rayon::current_num_threads())).max(16);
    let mut columns = Columns::new(&mut y, m, n);
    let mut tasks = Vec::new();
    for &matrix in parts {
        for start in (0..matrix.rows).step_by(per_task) {
            let rows = start..(start + per_task).min(matrix.rows);
            tasks.push((matrix, rows.clone(), columns.take(rows.len())));
        }
    }
    pool::for_each(tasks, &|(matrix, rows, out)| acts.run(matrix, rows, out));
    y
}

/// The activations in the formats the matrices' kernels read, quantized once per product.
struct Activations<'a> {
    f32: &'a [f32],
    q8: Vec<Q8Block>,
    /// `q8` laid out for the multi-row kernel, when there are several rows and a kernel for them.
    q8_rows: Option<Q8Rows>,
    /// `q8` laid out for the four-blocks-a-register kernel, when there is one row and a matrix
    /// it takes (Q4_0, Q4_1).
    q8_quads: Option<Q8Quads>,
    q8k: Vec<Q8KBlock>,
    m: usize,
}

impl<'a> Activations<'a> {
    fn new(parts: &[&StoredMatrix], x: &'a [f32], m: usize) -> Self {
        let kinds: Vec<RowDot> = parts.iter().filter_map(|p| row_dot(p.ty)).collect();
        let mut q8 = Vec::new();
        let mut q8_rows = None;
        let mut q8_quads = None;
        if kinds.iter().any(|d| matches!(d, RowDot::Q8(_))) {
            q8 = vec![Q8Block::default(); x.len() / 32];
            qdot::quantize_q8(x, &mut q8);
            let multi_row = match BATCH_INVARIANT.load(Ordering::Relaxed) {
                true => 1,
                false => MULTI_ROW,
            };
            if m >= multi_row && parts.iter().any(|p| legacy::dot_q8_rows(p.ty).is_some()) {
                q8_rows = Some(Q8Rows::new(&q8, m));
            } else if m == 1 && parts.iter().any(|p| legacy::dot_q8_quads(p.ty).is_some()) {
                q8_quads = Some(Q8Quads::new(&q8));
            }
        }
        let mut q8k = Vec::new();
        if kinds.iter().any(|d| matches!(d, RowDot::Q8K(_))) {
            q8k = vec![Q8KBlock::default(); x.len() / 256];
            qdot::quantize_q8k(x, &mut q8k);
        }
        Activations {
            f32: x,
            q8,
            q8_rows,
            q8_quads,
            q8k,
            m,
        }
    }

    /// Rows `rows` of `matrix` dotted with every activation row, into `out`.
    fn run(&self, matrix: &StoredMatrix, rows: Range<usize>, out: ColumnRange) {
        let m = self.m;
        let dot = row_dot(matrix.ty).expect("checked when the matrix was made");
        let kernels = (
            dot,
            legacy::dot_q8_rows(matrix.ty),
            legacy::dot_q8_quads(matrix.ty),
        );
        // Boxed: one dynamic call per weight row, nothing beside its dot products.
        type RowFn<'a> = Box<dyn Fn(&[u8], &mut [f32]) + 'a>;
        let (ahead, dot): (usize, RowFn) = match (kernels, &self.q8_rows, &self.q8_quads) {
            ((RowDot::Q8(_), Some(f), _), Some(xs), _) => {
                (PREFETCH_ROWS, Box::new(move |w, o| f(w, xs, o)))
            }
            ((RowDot::Q8(_), _, Some(f)), _, Some(x)) => {
                (NO_PREFETCH, Box::new(move |w, o| o[0] = f(w, x)))
            }
            ((RowDot::Q8(f), ..), ..) => (PREFETCH_ROWS, Box::new(one_by_one(&self.q8, m, f))),
            ((RowDot::Q8K(f), ..), ..) => (PREFETCH_ROWS, Box::new(one_by_one(&self.q8k, m, f))),
            ((RowDot::F32(f), ..), ..) => (PREFETCH_ROWS, Box::new(one_by_one(self.f32, m, f))),
        };
        each_row(matrix, rows, out, m, ahead, dot);
    }
}

/// A weight row's outputs from a single-row kernel `f`, called once per activation row of `xs`.
fn one_by_one<'a, T>(
    xs: &'a [T],
    m: usize,
    f: fn(&[u8], &[T]) -> f32,
) -> impl Fn(&[u8], &mut [f32]) + 'a {
    let per_row = xs.len() / m;
    move |w, out| {
        for (o, x) in out.iter_mut().zip(xs.chunks_exact(per_row)) {
            *o = f(w, x);
        }
    }
}

/// `dot(W[r], outputs of r)` for the rows `r` of `matrix`, written to `out`'s columns, the row
/// `ahead` rows on prefetched (none for 0).
fn each_row(
    matrix: &StoredMatrix,
    rows: Range<usize>,
    mut out: ColumnRange,
    m: usize,
    ahead: usize,
    dot: impl Fn(&[u8], &mut [f32]),
) {
    let mut values = [0f32; super::FEW_ROWS];
    let end = rows.end;
    for (c, r) in rows.enumerate() {
        if ahead > 0 && r + ahead < end {
            prefetch(matrix.row(r + ahead));
        }
        dot(matrix.row(r), &mut values[..m]);
        out.set(c, &values[..m]);
    }
}

/// Asks the CPU to bring `bytes` into the cache ahead of use. A large model streams its weights
/// from memory, and the dot products alone leave too few loads in flight to cover the latency.
#[inline(always)]
fn prefetch(bytes: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: prefetching is a hint on a valid address; it never faults or writes.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    // Elsewhere the hardware prefetcher alone does it.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// A row-major `[m, n]` matrix handed out as disjoint ranges of columns, so tasks on different
/// threads each fill their own (a column is not contiguous, so they cannot be slices).
struct Columns<'a> {
    ptr: *mut f32,
    m: usize,
    n: usize,
    next: usize,
    _y: PhantomData<&'a mut [f32]>,
}

impl<'a> Columns<'a> {
    fn new(y: &'a mut [f32], m: usize, n: usize) -> Self {
        assert_eq!(y.len(), m * n, "y is not [{m}, {n}]");
        Columns {
            ptr: y.as_mut_ptr(),
            m,
            n,
            next: 0,
            _y: PhantomData,
        }
    }

    /// The next `count` columns.
    fn take(&mut self, count: usize) -> ColumnRange<'a> {
        let first = self.next;
        assert!(first + count <= self.n, "columns past the matrix");
        self.next += count;
        ColumnRange {
            ptr: self.ptr,
            m: self.m,
            n: self.n,
            columns: first..first + count,
            _y: PhantomData,
        }
    }
}

/// Columns `columns` of a [`Columns`] matrix, owned by whoever holds this.
struct ColumnRange<'a> {
    ptr: *mut f32,
    m: usize,
    n: usize,
    columns: Range<usize>,
    _y: PhantomData<&'a mut [f32]>,
}

// SAFETY: a ColumnRange writes only its own columns, which no other ColumnRange of the same
// matrix holds (`Columns::take` hands each column out once), while the matrix stays borrowed.
unsafe impl Send for ColumnRange<'_> {}

impl ColumnRange<'_> {
    /// Column `c` of the range (counted from its first) set to `values`, one per row.
    fn set(&mut self, c: usize, values: &[f32]) {
        assert!(c < self.columns.len() && values.len() == self.m);
        let column = self.columns.start + c;
        for (i, &v) in values.iter().enumerate() {
            // SAFETY: i < m and column < n, inside the [m, n] matrix; this range owns the column.
            unsafe { *self.ptr.add(i * self.n + column) = v };
        }
    }
}
