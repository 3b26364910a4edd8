//! Causal scaled-dot-product attention with grouped-query heads and packed-sequence segments,
//! computed flash-attention style so that training never holds a `[b, heads, t, t]` tensor.
//!
//! Layouts are token-major, as the q/k/v projections produce them: q and out `[b, t, nh, hd]`,
//! k and v `[b, t, nkv, hd]`. Query head `h` reads kv head `h / (nh / nkv)` in place (no
//! repeat_kv copies). Query `i` attends key `j` iff `j <= i` and, with segment ids, `seg[j] ==
//! seg[i]`, so examples packed into one row never see each other.
//!
//! The forward walks tiles of queries × keys with an online softmax and saves only the
//! per-row logsumexp `[b, nh, t]`; the backward recomputes each score tile from it. Each
//! (batch, query head) is one rayon task whose tile products run single-threaded; its results
//! land in a head-major scratch (the size of q forward, three times that backward) that one
//! parallel pass turns token-major, summing the key and value gradients over the query heads
//! that share a kv head.

use rayon::prelude::*;

use super::math::exp;
use super::matmul::{matmul, MatMut, MatRef, Threads};

/// Sizes of one attention call, and the factor scores are scaled by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnShape {
    pub batch: usize,
    pub seq: usize,
    /// Query heads: a multiple of `kv_heads`.
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// `1/√head_dim` for most families (`ModelConfig::attention_scale`).
    pub scale: f32,
    /// Sliding-window attention: a query sees itself and the `window - 1` keys before it
    /// (transformers' `sliding_window`); None: every earlier key.
    pub window: Option<usize>,
    /// Scaled scores are soft-capped to `cap · tanh(s / cap)` before the mask (Gemma 2's
    /// `attn_logit_softcapping`).
    pub softcap: Option<f32>,
    /// ALiBi: head `h`'s scaled scores are biased by `alibi_slopes(heads)[h] · (j − i)` for key
    /// `j` and query `i` (Baichuan 2 13B).
    pub alibi: bool,
}

/// ALiBi's slope of each of `heads` heads (Baichuan's `_get_interleave`, Press et al.): for a power
/// of two `n`, head `h`'s is `2^(−8(h+1)/n)`; otherwise the slopes of the power of two below, then
/// every other slope of the power of two above.
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    fn power_of_two(n: usize) -> Vec<f64> {
        let start = 2f64.powf(-(2f64.powf(-((n as f64).log2() - 3.0))));
        (0..n).map(|i| start * start.powi(i as i32)).collect()
    }
    fn slopes(n: usize) -> Vec<f64> {
        if n.is_power_of_two() {
            return power_of_two(n);
        }
        let below = 1 << n.ilog2();
        let above: Vec<f64> = slopes(2 * below).into_iter().step_by(2).collect();
        power_of_two(below)
            .into_iter()
            .chain(above.into_iter().take(n - below))
            .collect()
    }
    slopes(heads).into_iter().map(|s| s as f32).collect()
}

impl AttnShape {
    fn q_len(&self) -> usize {
        self.batch * self.seq * self.heads * self.head_dim
    }

    fn kv_len(&self) -> usize {
        self.batch * self.seq * self.kv_heads * self.head_dim
    }

    fn lse_len(&self) -> usize {
        self.batch * self.heads * self.seq
    }

    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    /// Each query head's ALiBi slope; none without ALiBi.
    fn alibi_slopes(&self) -> Vec<f32> {
        if self.alibi {
            alibi_slopes(self.heads)
        } else {
            Vec::new()
        }
    }

    fn check(&self, x: &AttnInputs) {
        assert!(
            self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads) && self.head_dim > 0,
            "attention: {} heads are not a multiple of {} kv heads (head_dim {})",
            self.heads,
            self.kv_heads,
            self.head_dim
        );
        check_len("q", x.q, self.q_len());
        check_len("k", x.k, self.kv_len());
        check_len("v", x.v, self.kv_len());
        if let Some(seg) = x.segment_ids {
            assert_eq!(
                seg.len(),
                self.batch * self.seq,
                "attention: segment_ids length"
            );
        }
    }
}

fn check_len(name: &str, x: &[f32], want: usize) {
    assert_eq!(x.len(), want, "attention: {name} has the wrong length");
}

/// What attention reads: `q [b, t, nh, hd]`, `k`, `v [b, t, nkv, hd]`, and optional segment ids
/// `[b, t]` (None: plain causal).
#[derive(Clone, Copy, Debug)]
pub struct AttnInputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub segment_ids: Option<&'a [u32]>,
}

/// Gradients of the three inputs, all overwritten: `dq [b, t, nh, hd]`, `dk`, `dv [b, t, nkv, hd]`.
#[derive(Debug)]
pub struct AttnGrads<'a> {
    pub dq: &'a mut [f32],
    pub dk: &'a mut [f32],
    pub dv: &'a mut [f32],
}

/// Tile sizes: 64 × 64 keeps a score tile (16 KB) in L1 beside the q/k/v rows in L2.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    q: usize,
    k: usize,
}

const TILES: Tiles = Tiles { q: 64, k: 64 };

/// Forward: writes `out [b, t, nh, hd]` and the logsumexp of each row of scaled, masked scores
/// `lse [b, nh, t]`, which is all [`backward`] needs besides the inputs and `out`.
///
/// # Panics
/// If a slice length does not match `shape` or `heads` is not a multiple of `kv_heads`.
pub fn forward(shape: AttnShape, x: AttnInputs, out: &mut [f32], lse: &mut [f32]) {
    forward_tiled(shape, x, out, lse, TILES);
}

/// Backward of [`forward`]: from `dout`, the upstream gradient of `out`, writes the gradients of
/// q, k and v (those of k and v summed over the query heads sharing each kv head).
///
/// # Panics
/// If a slice length does not match `shape` or `heads` is not a multiple of `kv_heads`.
pub fn backward(
    shape: AttnShape,
    x: AttnInputs,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    grads: AttnGrads,
) {
    backward_tiled(shape, x, out, lse, dout, grads, TILES);
}

fn forward_tiled(shape: AttnShape, x: AttnInputs, out: &mut [f32], lse: &mut [f32], tiles: Tiles) {
    shape.check(&x);
    check_len("out", out, shape.q_len());
    check_len("lse", lse, shape.lse_len());
    let (t, hd) = (shape.seq, shape.head_dim);
    if shape.batch * t * shape.heads == 0 {
        return;
    }
    let starts = key_starts(shape, x.segment_ids);
    let slopes = shape.alibi_slopes();
    let mut out_heads = vec![0f32; shape.q_len()];
    out_heads
        .par_chunks_mut(t * hd)
        .zip(lse.par_chunks_mut(t))
        .enumerate()
        .for_each(|(bh, (o, l))| {
            Head::new(shape, &x, &starts, &slopes, bh).forward(o, l, tiles);
        });
    heads_to_tokens(&out_heads, out, shape, shape.heads);
}

fn backward_tiled(
    shape: AttnShape,
    x: AttnInputs,
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    grads: AttnGrads,
    tiles: Tiles,
) {
    shape.check(&x);
    check_len("out", out, shape.q_len());
    check_len("lse", lse, shape.lse_len());
    check_len("dout", dout, shape.q_len());
    check_len("dq", grads.dq, shape.q_len());
    check_len("dk", grads.dk, shape.kv_len());
    check_len("dv", grads.dv, shape.kv_len());
    let (t, hd) = (shape.seq, shape.head_dim);
    if shape.batch * t * shape.heads == 0 {
        return;
    }
    let starts = key_starts(shape, x.segment_ids);
    let slopes = shape.alibi_slopes();
    // Per query head, head-major: dk and dv are summed over each group afterwards.
    let mut dq = vec![0f32; shape.q_len()];
    let mut dk = vec![0f32; shape.q_len()];
    let mut dv = vec![0f32; shape.q_len()];
    dq.par_chunks_mut(t * hd)
        .zip(dk.par_chunks_mut(t * hd))
        .zip(dv.par_chunks_mut(t * hd))
        .zip(lse.par_chunks(t))
        .enumerate()
        .for_each(|(bh, (((dq, dk), dv), lse))| {
            let head = Head::new(shape, &x, &starts, &slopes, bh);
            let saved = Saved {
                out: &out[head.q_offset..],
                dout: &dout[head.q_offset..],
                lse,
            };
            head.backward(&saved, dq, dk, dv, tiles);
        });
    heads_to_tokens(&dq, grads.dq, shape, shape.heads);
    heads_to_tokens(&dk, grads.dk, shape, shape.kv_heads);
    heads_to_tokens(&dv, grads.dv, shape, shape.kv_heads);
}

/// For each query `[b, t]`, the first key it may attend: the first position of its segment id in
/// its row (0 without segments), or the first key of its sliding window when that is later. Key
/// tiles before the earliest start of a query tile are skipped, so packed short examples and
/// windows cost about what their visible keys do.
fn key_starts(shape: AttnShape, segment_ids: Option<&[u32]>) -> Vec<usize> {
    let t = shape.seq;
    let window_start = |i: usize| shape.window.map_or(0, |w| (i + 1).saturating_sub(w));
    let Some(seg) = segment_ids else {
        return (0..shape.batch)
            .flat_map(|_| (0..t).map(window_start))
            .collect();
    };
    let mut starts = Vec::with_capacity(seg.len());
    for row in seg.chunks_exact(t) {
        let mut first = std::collections::HashMap::new();
        starts.extend(
            row.iter()
                .enumerate()
                .map(|(i, s)| (*first.entry(*s).or_insert(i)).max(window_start(i))),
        );
    }
    starts
}

/// `dst [b, t, n_dst, hd]` from head-major `src [b, nh, t, hd]`, summing the `nh / n_dst`
/// consecutive heads that map to each destination head.
fn heads_to_tokens(src: &[f32], dst: &mut [f32], shape: AttnShape, n_dst: usize) {
    let (t, hd, nh) = (shape.seq, shape.head_dim, shape.heads);
    let group = nh / n_dst;
    dst.par_chunks_mut(n_dst * hd)
        .enumerate()
        .for_each(|(bi, row)| {
            let (b, i) = (bi / t, bi % t);
            for (d, out) in row.chunks_exact_mut(hd).enumerate() {
                let h0 = b * nh + d * group;
                out.copy_from_slice(&src[(h0 * t + i) * hd..][..hd]);
                for h in h0 + 1..h0 + group {
                    add(out, &src[(h * t + i) * hd..][..hd]);
                }
            }
        });
}

/// What the forward saved for one head, plus the upstream gradient: `out` and `dout` start at
/// this head's first row (row stride `nh * hd`), `lse` is its `[t]` row.
struct Saved<'a> {
    out: &'a [f32],
    dout: &'a [f32],
    lse: &'a [f32],
}

/// One (batch, query head) problem: q, k and v from this head's first row, rows strided.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    /// Offset of this head's first row in any `[b, t, nh, hd]` tensor.
    q_offset: usize,
    q_stride: usize,
    kv_stride: usize,
    seg: Option<&'a [u32]>,
    starts: &'a [usize],
    seq: usize,
    head_dim: usize,
    scale: f32,
    window: Option<usize>,
    softcap: Option<f32>,
    /// This head's ALiBi slope.
    alibi: Option<f32>,
}

impl<'a> Head<'a> {
    /// Task `bh = b * nh + h`; `slopes` the heads' ALiBi slopes (empty without ALiBi).
    fn new(
        shape: AttnShape,
        x: &AttnInputs<'a>,
        starts: &'a [usize],
        slopes: &[f32],
        bh: usize,
    ) -> Self {
        let (b, h) = (bh / shape.heads, bh % shape.heads);
        let (t, hd) = (shape.seq, shape.head_dim);
        let q_offset = (b * t * shape.heads + h) * hd;
        let kv_offset = (b * t * shape.kv_heads + h / shape.group()) * hd;
        Self {
            q: &x.q[q_offset..],
            k: &x.k[kv_offset..],
            v: &x.v[kv_offset..],
            q_offset,
            q_stride: shape.heads * hd,
            kv_stride: shape.kv_heads * hd,
            seg: x.segment_ids.map(|s| &s[b * t..(b + 1) * t]),
            starts: &starts[b * t..(b + 1) * t],
            seq: t,
            head_dim: hd,
            scale: shape.scale,
            window: shape.window,
            softcap: shape.softcap,
            alibi: slopes.get(h).copied(),
        }
    }

    /// A raw score `q·k` scaled, and soft-capped when the model caps.
    #[inline(always)]
    fn score(&self, raw: f32) -> f32 {
        let s = raw * self.scale;
        match self.softcap {
            Some(cap) => cap * (s / cap).tanh(),
            None => s,
        }
    }

    /// Rows `i0..i0 + n` of a `[b, t, nh, hd]` tensor sliced from this head's first row.
    fn q_rows<'b>(&self, x: &'b [f32], i0: usize, n: usize) -> MatRef<'b> {
        MatRef::strided(&x[i0 * self.q_stride..], n, self.head_dim, self.q_stride)
    }

    fn kv_rows<'b>(&self, x: &'b [f32], j0: usize, n: usize) -> MatRef<'b> {
        MatRef::strided(&x[j0 * self.kv_stride..], n, self.head_dim, self.kv_stride)
    }

    /// Keys that queries `i0..i1` may attend, at most: from their earliest segment start.
    fn key_range(&self, i0: usize, i1: usize) -> std::ops::Range<usize> {
        let first = self.starts[i0..i1].iter().copied().min().unwrap_or(i0);
        first..i1
    }

    /// `s [rq, rk]` = scaled scores of queries `i0..` against keys `j0..`, masked ones -inf: later
    /// keys, keys of another segment, and keys before the sliding window.
    fn scores(&self, s: &mut [f32], i0: usize, rq: usize, j0: usize, rk: usize) {
        matmul(
            MatMut::new(s, rq, rk),
            self.q_rows(self.q, i0, rq),
            self.kv_rows(self.k, j0, rk).t(),
            false,
            Threads::Single,
        );
        for (r, row) in s.chunks_exact_mut(rk).enumerate() {
            let i = i0 + r;
            let (visible, future) = row.split_at_mut((i + 1).saturating_sub(j0).min(rk));
            future.fill(f32::NEG_INFINITY);
            let before_window = self
                .window
                .map_or(0, |w| (i + 1).saturating_sub(w).saturating_sub(j0));
            let (outside, visible) = visible.split_at_mut(before_window.min(visible.len()));
            outside.fill(f32::NEG_INFINITY);
            let first = j0 + outside.len();
            match self.seg {
                None => visible.iter_mut().for_each(|x| *x = self.score(*x)),
                Some(seg) => {
                    let own = seg[i];
                    for (x, &other) in visible.iter_mut().zip(&seg[first..]) {
                        *x = if other == own {
                            self.score(*x)
                        } else {
                            f32::NEG_INFINITY
                        };
                    }
                }
            }
            // ALiBi biases each score by its distance (a masked -inf stays -inf), in a pass of its
            // own so the other families' loop above stays as it was.
            if let Some(slope) = self.alibi {
                for (j, x) in (first..).zip(visible.iter_mut()) {
                    *x += slope * (j as f32 - i as f32);
                }
            }
        }
    }

    /// Online softmax over key tiles: `out [t, hd]` (this head's rows, contiguous) and `lse [t]`.
    fn forward(&self, out: &mut [f32], lse: &mut [f32], tiles: Tiles) {
        let hd = self.head_dim;
        let mut s = vec![0f32; tiles.q * tiles.k];
        let mut max = vec![0f32; tiles.q];
        let mut sum = vec![0f32; tiles.q];
        for i0 in (0..self.seq).step_by(tiles.q) {
            let i1 = (i0 + tiles.q).min(self.seq);
            let rq = i1 - i0;
            let acc = &mut out[i0 * hd..i1 * hd];
            acc.fill(0.0);
            max[..rq].fill(f32::NEG_INFINITY);
            sum[..rq].fill(0.0);
            for j0 in self.key_range(i0, i1).step_by(tiles.k) {
                let rk = tiles.k.min(i1 - j0);
                let s = &mut s[..rq * rk];
                self.scores(s, i0, rq, j0, rk);
                let rows = s.chunks_exact_mut(rk).zip(acc.chunks_exact_mut(hd));
                for ((row, acc_row), (m, l)) in rows.zip(max.iter_mut().zip(sum.iter_mut())) {
                    let m_new = m.max(row_max(row));
                    // A row whose keys so far are all masked keeps max -inf: shifting by 0 then
                    // leaves its exponentials 0 instead of NaN.
                    let shift = if m_new == f32::NEG_INFINITY {
                        0.0
                    } else {
                        m_new
                    };
                    let rescale = exp(*m - shift);
                    exp_shifted(row, shift);
                    *l = *l * rescale + row_sum(row);
                    *m = m_new;
                    if rescale != 1.0 {
                        acc_row.iter_mut().for_each(|a| *a *= rescale);
                    }
                }
                matmul(
                    MatMut::new(acc, rq, hd),
                    MatRef::new(s, rq, rk),
                    self.kv_rows(self.v, j0, rk),
                    true,
                    Threads::Single,
                );
            }
            // Every query sees at least itself, so each row sum is ≥ 1.
            let rows = acc.chunks_exact_mut(hd).zip(&mut lse[i0..i1]);
            for ((acc_row, lse), (&m, &l)) in rows.zip(max.iter().zip(&sum)) {
                let inv = 1.0 / l;
                acc_row.iter_mut().for_each(|a| *a *= inv);
                *lse = m + l.ln();
            }
        }
    }

    /// Accumulates this head's gradients into `dq`, `dk`, `dv` (each `[t, hd]`, contiguous),
    /// recomputing probabilities tile by tile from the saved logsumexp.
    fn backward(
        &self,
        saved: &Saved,
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
        tiles: Tiles,
    ) {
        let hd = self.head_dim;
        let single = Threads::Single;
        // dsoftmax needs D_i = Σ_j p_ij dp_ij = dout_i · out_i, once per query.
        let d: Vec<f32> = (0..self.seq)
            .map(|i| {
                dot(
                    &saved.out[i * self.q_stride..][..hd],
                    &saved.dout[i * self.q_stride..][..hd],
                )
            })
            .collect();
        let mut p = vec![0f32; tiles.q * tiles.k];
        let mut ds = vec![0f32; tiles.q * tiles.k];
        // With a soft-cap, d(capped)/d(scaled) = 1 − (capped / cap)², taken before the softmax.
        let mut cap_slope = vec![
            1f32;
            if self.softcap.is_some() {
                tiles.q * tiles.k
            } else {
                0
            }
        ];
        for i0 in (0..self.seq).step_by(tiles.q) {
            let i1 = (i0 + tiles.q).min(self.seq);
            let rq = i1 - i0;
            let dout = self.q_rows(saved.dout, i0, rq);
            for j0 in self.key_range(i0, i1).step_by(tiles.k) {
                let rk = tiles.k.min(i1 - j0);
                let (p, ds) = (&mut p[..rq * rk], &mut ds[..rq * rk]);
                self.scores(p, i0, rq, j0, rk);
                if let Some(cap) = self.softcap {
                    for (slope, &c) in cap_slope.iter_mut().zip(p.iter()) {
                        *slope = if c.is_finite() {
                            1.0 - (c / cap) * (c / cap)
                        } else {
                            0.0
                        };
                    }
                }
                for (row, &lse) in p.chunks_exact_mut(rk).zip(&saved.lse[i0..i1]) {
                    exp_shifted(row, lse);
                }
                let p: &[f32] = p;
                let p_mat = MatRef::new(p, rq, rk);
                matmul(
                    MatMut::new(&mut dv[j0 * hd..][..rk * hd], rk, hd),
                    p_mat.t(),
                    dout,
                    true,
                    single,
                );
                let v = self.kv_rows(self.v, j0, rk);
                matmul(MatMut::new(ds, rq, rk), dout, v.t(), false, single);
                // ds = p ∘ (dp - D) · scale, the gradient of the unscaled scores (through the cap's
                // slope when the scores are capped).
                let rows = ds
                    .chunks_exact_mut(rk)
                    .zip(p.chunks_exact(rk))
                    .zip(&d[i0..i1]);
                for ((ds_row, p_row), &d_i) in rows {
                    for (x, &p) in ds_row.iter_mut().zip(p_row) {
                        *x = p * (*x - d_i) * self.scale;
                    }
                }
                if self.softcap.is_some() {
                    ds.iter_mut().zip(&cap_slope).for_each(|(x, s)| *x *= s);
                }
                let ds = MatRef::new(ds, rq, rk);
                let (k, q) = (self.kv_rows(self.k, j0, rk), self.q_rows(self.q, i0, rq));
                matmul(
                    MatMut::new(&mut dq[i0 * hd..i1 * hd], rq, hd),
                    ds,
                    k,
                    true,
                    single,
                );
                matmul(
                    MatMut::new(&mut dk[j0 * hd..][..rk * hd], rk, hd),
                    ds.t(),
                    q,
                    true,
                    single,
                );
            }
        }
    }
}

const LANES: usize = 8;

/// Largest element, in independent lanes so the loop vectorizes.
fn row_max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v);
        }
    }
    rest.iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
}

fn row_sum(x: &[f32]) -> f32 {
    dot_with(x, x, |a, _| a)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(a, b, |a, b| a * b)
}

/// Σ f(a_i, b_i) in independent lanes so the loop vectorizes.
fn dot_with(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(&x, &y)| f(x, y))
        .sum();
    for (xa, xb) in ca.zip(cb) {
        for ((l, &x), &y) in lanes.iter_mut().zip(xa).zip(xb) {
            *l += f(x, y);
        }
    }
    tail + lanes.iter().sum::<f32>()
}

fn add(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
}

avx512_or_portable! {
    /// `x ← e^(x − shift)`.
    fn exp_shifted(x: &mut [f32], shift: f32) = exp_shifted_portable;
}

#[inline(always)]
fn exp_shifted_portable(x: &mut [f32], shift: f32) {
    x.iter_mut().for_each(|v| *v = exp(*v - shift));
}

#[cfg(test)]
mod tests;
