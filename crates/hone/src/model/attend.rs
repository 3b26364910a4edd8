//! What a forward pass gives every block: where its rows are (positions, rotary tables per row,
//! Qwen's logn factors, prefix tuning's places) and how their attention reads keys and values —
//! whole sequences through the fused kernel (training, scoring), or a KV cache (generation).

use std::collections::BTreeMap;

use super::adaption::{AdaptionGrads, AdaptionKv, AdaptionLayer};
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
    /// Prefix tuning: the trained keys and values, and the places in the pass they go.
    pub prefix: Option<PrefixKv<'a>>,
    /// LLaMA-Adapter: each batch row's adaption prompts (empty: none in the pass).
    pub adaption: &'a [Option<&'a AdaptionKv>],
}

/// What a block's backward hands back for the tensors a pass carried besides the model's own.
#[derive(Debug, Default)]
pub struct PassGrads {
    /// Prefix tuning: the gradient of the prefix's table (its layout).
    pub prefix: Option<Vec<f32>>,
    /// LLaMA-Adapter: by layer, the gradients of its prompt's keys, values and gate.
    pub adaption: BTreeMap<usize, AdaptionGrads>,
}

/// Prefix tuning's keys and values in a pass. PEFT hands them to the model as a KV cache that
/// already holds `n` positions, so every token attends them first, unrotated, and the tokens
/// themselves sit at positions n.. . Here each sequence (or packed example) is preceded by `n`
/// placeholder tokens at positions 0..n whose keys and values every block overwrites with the
/// prefix's, after rotation: what follows — the causal and segment masks, sliding windows, the
/// KV cache and its padding — then treats them as the cached prefix, with no attention kernel of
/// their own. The placeholders' own outputs are never read, so nothing flows back through them
/// but the gradients of their keys and values, which are the prefix's.
#[derive(Clone, Copy, Debug)]
pub struct PrefixKv<'a> {
    /// PEFT's layout, `[n, layers · 2 · width]`: row `j` holds, for layer `l`, the keys of
    /// virtual token `j` at `2l · width` and its values at `(2l + 1) · width`.
    pub table: &'a [f32],
    /// How many virtual tokens (rows of `table`).
    pub n: usize,
    /// One layer's keys of one token: key/value heads × head_dim.
    pub width: usize,
    /// Each placeholder in the pass: its token index and which virtual token it is.
    pub places: &'a [(usize, usize)],
}

impl PrefixKv<'_> {
    fn row(&self) -> usize {
        self.table.len() / self.n.max(1)
    }

    /// Layer `layer`'s keys or values (`kv` 0 or 1) of virtual token `j`.
    fn cell(&self, layer: usize, kv: usize, j: usize) -> std::ops::Range<usize> {
        let start = j * self.row() + (2 * layer + kv) * self.width;
        start..start + self.width
    }

    /// Writes layer `layer`'s prefix over the placeholders' keys and values (`[tokens, width]`).
    pub fn write(&self, layer: usize, k: &mut [f32], v: &mut [f32]) {
        let w = self.width;
        for &(token, j) in self.places {
            k[token * w..(token + 1) * w].copy_from_slice(&self.table[self.cell(layer, 0, j)]);
            v[token * w..(token + 1) * w].copy_from_slice(&self.table[self.cell(layer, 1, j)]);
        }
    }

    /// Moves the placeholders' key and value gradients (`[tokens, width]`) into `grad` (the
    /// table's), leaving zeros: the projections never made those keys and values.
    pub fn take_grads(&self, layer: usize, dk: &mut [f32], dv: &mut [f32], grad: &mut [f32]) {
        let w = self.width;
        for &(token, j) in self.places {
            for (kv, d) in [(0, &mut *dk), (1, &mut *dv)] {
                let from = &mut d[token * w..(token + 1) * w];
                let to = &mut grad[self.cell(layer, kv, j)];
                to.iter_mut().zip(from.iter()).for_each(|(g, x)| *g += x);
                from.fill(0.0);
            }
        }
    }
}

/// Which way [`Pass::rotate`] turns: the forward rotation, or its transpose for the gradient.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    Forward,
    Backward,
}

impl Pass<'_> {
    /// Each row's adaption prompt of layer `layer`, when any row has one.
    pub fn adaption_layer(&self, layer: usize) -> Option<Vec<Option<AdaptionLayer<'_>>>> {
        let prompts: Vec<_> = self
            .adaption
            .iter()
            .map(|a| a.and_then(|a| a.layer(layer)))
            .collect();
        prompts.iter().any(Option::is_some).then_some(prompts)
    }

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
