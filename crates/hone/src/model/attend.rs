//! What a forward pass gives every block: where its rows are (positions, rotary tables per row,
//! Qwen's logn factors) and how their attention reads keys and values — whole sequences through
//! the fused kernel (training, scoring), or a KV cache (generation).

use super::kv_cache::Cache;
use super::rope::{RopeSet, RopeTables};
use crate::kernels::attention::{self, AttnInputs, AttnShape};
use crate::kernels::rope::{self, RopeShape};

/// The positions of a pass's tokens and the tables each row rotates with.
#[derive(Clone, Copy, Debug)]
pub struct Pass<'a> {
    pub batch: usize,
    pub seq: usize,
    /// Each token's position, `[batch, seq]` (restarting inside packed rows in training).
    pub positions: &'a [u32],
    pub rope: &'a RopeTables,
    /// Per batch row, which of `rope`'s tables it rotates with (LongRoPE's set, Qwen's NTK
    /// factor).
    pub rope_sets: &'a [RopeSet],
    /// Qwen's logn attention scaling: each token's factor on its rotated queries (inference
    /// only, as in Qwen's modeling file).
    pub logn: Option<&'a [f32]>,
}

/// Which way [`Pass::rotate`] turns: the forward rotation, or its transpose for the gradient.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Forward,
    Backward,
}

impl Pass<'_> {
    /// Rotates every head of `x` (`[tokens, heads·head_dim]`) for its token's position, with the
    /// local tables when `local`; rows that share tables in one step (all of them, but for
    /// LongRoPE sequences on both sides of the original context, or Qwen's of different NTK
    /// factors).
    pub fn rotate(&self, x: &mut [f32], shape: RopeShape, local: bool, turn: Turn) {
        let t = self.seq;
        let row = t * shape.heads * shape.head_dim;
        let mut start = 0;
        for run in self.rope_sets.chunk_by(|a, b| a == b) {
            let (cos, sin) = self.rope.select_set(run[0], local);
            let rows = start..start + run.len();
            let at = &self.positions[rows.start * t..rows.end * t];
            let x = &mut x[rows.start * row..rows.end * row];
            match turn {
                Turn::Forward => rope::forward(x, at, shape, cos, sin),
                Turn::Backward => rope::backward(x, at, shape, cos, sin),
            }
            start = rows.end;
        }
    }

    /// Multiplies each token's queries (`[tokens, heads·head_dim]`) by its logn factor, when the
    /// model scales them.
    pub fn scale_queries(&self, q: &mut [f32]) {
        let Some(factors) = self.logn else { return };
        let row = q.len() / factors.len().max(1);
        for (token, &factor) in q.chunks_exact_mut(row).zip(factors) {
            token.iter_mut().for_each(|x| *x *= factor);
        }
    }
}

/// How the rows of a pass attend.
pub enum Attend<'c, 'd> {
    /// Whole sequences from their first token, no cache; with segment ids, examples packed into
    /// one row see only themselves.
    Whole { segment_ids: Option<&'c [u32]> },
    /// One cache for all rows, which sit at the same position.
    Batch(&'c mut Cache),
    /// Each row one token, continuing its own cache.
    PerRow(&'c mut [&'d mut Cache]),
}

impl Attend<'_, '_> {
    /// The position of every token of `[b, t]`.
    pub fn positions(&self, b: usize, t: usize) -> Vec<u32> {
        let start = |r: usize| match self {
            Attend::Whole { .. } => 0,
            Attend::Batch(cache) => cache.len(),
            Attend::PerRow(caches) => caches[r].len(),
        };
        (0..b)
            .flat_map(|r| (start(r)..start(r) + t).map(|p| p as u32))
            .collect()
    }

    /// How many leading positions of row `r` are padding.
    pub fn left_pad(&self, r: usize) -> usize {
        match self {
            Attend::Whole { .. } => 0,
            Attend::Batch(cache) => cache.left_pad(r),
            Attend::PerRow(caches) => caches[r].left_pad(0),
        }
    }

    /// Layer `layer`'s attention of queries `q` over keys `k` and values `v` (token-major, already
    /// rotated), `[b, t, heads·head_dim]`, and, over whole sequences, the logsumexp of each
    /// query's scores, which the backward recomputes the scores from (empty over a cache, which
    /// the new keys and values join).
    pub fn attend(
        &mut self,
        layer: usize,
        (q, k, v): (&[f32], &[f32], &[f32]),
        shape: AttnShape,
    ) -> (Vec<f32>, Vec<f32>) {
        match self {
            Attend::Whole { segment_ids } => {
                let mut out = vec![0.0; q.len()];
                let mut lse = vec![0.0; shape.batch * shape.heads * shape.seq];
                let inputs = AttnInputs {
                    q,
                    k,
                    v,
                    segment_ids: *segment_ids,
                };
                attention::forward(shape, inputs, &mut out, &mut lse);
                (out, lse)
            }
            Attend::Batch(cache) => (cache.attend(layer, q, k, v, shape), Vec::new()),
            Attend::PerRow(caches) => {
                let q_row = q.len() / caches.len().max(1);
                let kv_row = k.len() / caches.len().max(1);
                let one = AttnShape { batch: 1, ..shape };
                let mut out = Vec::with_capacity(q.len());
                for (r, cache) in caches.iter_mut().enumerate() {
                    let kv = r * kv_row..(r + 1) * kv_row;
                    let q = &q[r * q_row..(r + 1) * q_row];
                    out.extend(cache.attend(layer, q, &k[kv.clone()], &v[kv], one));
                }
                (out, Vec::new())
            }
        }
    }
}
