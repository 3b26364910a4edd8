//! The key/value cache of a generation and attention over it.
//!
//! Keys and values are kept per layer as `[rows, kv_heads, capacity, head_dim]` f32 (one row per
//! sequence of a batch), so one head's keys are contiguous for the dot products. Attention runs one
//! (row, query, key/value head) at a time in parallel, the query heads sharing that key/value head
//! one after another: during decoding each is a single query over at most a few hundred keys,
//! where a general matmul's setup costs more than the arithmetic — with a batch of 8 and 9 heads,
//! candle's batched matmuls made 72 tiny GEMM calls per layer and step.
//!
//! In a left-padded batch, row r's first `left_pad[r]` positions are padding: no query attends to
//! them, except that a padding query attends to itself (it must attend to something; its output
//! is never used).

use std::ops::Range;

use crate::kernels::attention::{alibi_slopes, AttnShape};
use crate::kernels::few_rows::{dot, dot4};
use crate::kernels::math::exp;
use crate::kernels::pool;

/// One query head of one token, and the cached keys it attends to.
struct Query<'a> {
    q: &'a [f32],
    row: usize,
    kv_head: usize,
    keys: Range<usize>,
    scale: f32,
    softcap: Option<f32>,
    /// The query head's ALiBi slope.
    alibi: Option<f32>,
}

/// [`LayerCache::attend_one`] built for the widest vectors this CPU has.
fn attend_one_for_this_cpu() -> fn(&LayerCache, &Query, &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    {
        // SAFETY: the CPU has AVX-512F and FMA, the features the function enables.
        return |cache, query, out| unsafe { cache.attend_one_avx512(query, out) };
    }
    LayerCache::attend_one
}

/// The cache of every layer, plus the padding of each row.
#[derive(Clone)]
pub struct Cache {
    layers: Vec<LayerCache>,
    /// Per row, how many leading positions are padding (empty: none).
    left_pad: Vec<usize>,
    /// Per row, the tokens fed so far (padding included), so the cache can be rebuilt (recorded
    /// for LongRoPE models only).
    ids: Vec<Vec<u32>>,
    /// Whether the cached keys were rotated with LongRoPE's long factor set.
    pub(super) keys_long: bool,
    /// Per row, Qwen's dynamic NTK factor, fixed by the first pass (empty before it and for
    /// other models).
    ntk_alphas: Vec<u32>,
}

impl Cache {
    pub(super) fn new(n_layers: usize, left_pad: Vec<usize>) -> Self {
        Cache {
            layers: (0..n_layers).map(|_| LayerCache::default()).collect(),
            left_pad,
            ids: Vec::new(),
            keys_long: false,
            ntk_alphas: Vec::new(),
        }
    }

    /// Records the tokens of one forward pass, `ids` row-major `[rows, t]`.
    pub(super) fn record(&mut self, ids: &[u32], t: usize) {
        let rows = ids.len() / t.max(1);
        self.ids.resize_with(rows, Vec::new);
        for (seen, new) in self.ids.iter_mut().zip(ids.chunks(t.max(1))) {
            seen.extend_from_slice(new);
        }
    }

    /// Empties the cache (its rows' padding kept) and returns the tokens it held, row-major
    /// `[rows, len]`, with the number of rows.
    pub(super) fn take_ids(&mut self) -> (Vec<u32>, usize) {
        let ids = std::mem::take(&mut self.ids);
        let rows = ids.len();
        for layer in &mut self.layers {
            *layer = LayerCache::default();
        }
        (ids.concat(), rows)
    }

    /// Each row's dynamic NTK factor: as the first pass over the cache decides it (`first` of the
    /// row's `t` tokens in that pass less its padding), then kept, as Qwen's modeling file keeps
    /// the prefill's factor for the whole generation.
    pub(super) fn ntk_alphas(
        &mut self,
        rows: usize,
        t: usize,
        first: impl Fn(usize) -> u32,
    ) -> Vec<u32> {
        if self.ntk_alphas.is_empty() {
            let alphas = (0..rows).map(|r| first(t - self.left_pad(r).min(t)));
            self.ntk_alphas = alphas.collect();
        }
        self.ntk_alphas.clone()
    }

    /// How many leading positions of row `r` are padding.
    pub(super) fn left_pad(&self, r: usize) -> usize {
        self.left_pad.get(r).copied().unwrap_or(0)
    }

    /// Tokens already in the cache: the position of the next token fed.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |c| c.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keep only the given rows (ascending indices), dropping the others' keys and values: a
    /// batch whose finished sequences leave it.
    pub fn retain_rows(&mut self, rows: &[usize]) {
        if !self.ntk_alphas.is_empty() {
            self.ntk_alphas = rows.iter().map(|&r| self.ntk_alphas[r]).collect();
        }
        if !self.left_pad.is_empty() {
            self.left_pad = rows.iter().map(|&r| self.left_pad[r]).collect();
        }
        if !self.ids.is_empty() {
            self.ids = rows
                .iter()
                .map(|&r| std::mem::take(&mut self.ids[r]))
                .collect();
        }
        for layer in &mut self.layers {
            layer.retain_rows(rows);
        }
    }

    /// Appends layer `l`'s new keys and values, then returns the attention of the new queries
    /// over the cache (all token-major, see [`LayerCache::append`] and [`LayerCache::attend`]):
    /// `s.batch` rows of `s.seq` new tokens each.
    pub(super) fn attend(
        &mut self,
        l: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        s: AttnShape,
    ) -> Vec<f32> {
        self.layers[l].append(k, v, s);
        self.layers[l].attend(q, s, &self.left_pad)
    }
}

/// One layer's keys and values.
#[derive(Clone, Default)]
pub(super) struct LayerCache {
    k: Vec<f32>,
    v: Vec<f32>,
    rows: usize,
    kv_heads: usize,
    head_dim: usize,
    len: usize,
    capacity: usize,
}

impl LayerCache {
    /// Appends `t` new tokens per row; `k` and `v` are token-major `[rows, t, kv_heads, head_dim]`.
    fn append(&mut self, k: &[f32], v: &[f32], s: AttnShape) {
        if self.len == 0 {
            (self.rows, self.kv_heads, self.head_dim) = (s.batch, s.kv_heads, s.head_dim);
        }
        if self.len + s.seq > self.capacity {
            self.grow((self.len + s.seq).max(2 * self.capacity).max(64));
        }
        let hd = s.head_dim;
        for r in 0..s.batch {
            for i in 0..s.seq {
                for h in 0..s.kv_heads {
                    let from = ((r * s.seq + i) * s.kv_heads + h) * hd;
                    let to = self.offset(r, h, self.len + i);
                    self.k[to..to + hd].copy_from_slice(&k[from..from + hd]);
                    self.v[to..to + hd].copy_from_slice(&v[from..from + hd]);
                }
            }
        }
        self.len += s.seq;
    }

    /// Attention of the `t` newest tokens (queries `q`, token-major `[rows, t, heads, head_dim]`,
    /// already appended to the cache) over every cached key they may see; token-major output.
    /// `left_pad` is per row (empty: no padding).
    fn attend(&self, q: &[f32], s: AttnShape, left_pad: &[usize]) -> Vec<f32> {
        let hd = s.head_dim;
        let group = s.heads / s.kv_heads;
        let start = self.len - s.seq;
        let scale = s.scale;
        let mut out = vec![0f32; s.batch * s.seq * s.heads * hd];
        let attend_one = attend_one_for_this_cpu();
        let slopes = if s.alibi {
            alibi_slopes(s.heads)
        } else {
            Vec::new()
        };
        // One task per (row, token, key/value head): the query heads that share a key/value head
        // run one after the other, so its keys and values come from memory once per token and
        // from the core's cache for the others (a layer's cache is read from L3 or memory
        // otherwise, once per query head).
        let outputs: Vec<(usize, &mut [f32])> = out.chunks_mut(group * hd).enumerate().collect();
        pool::for_each(outputs, &|(n, out)| {
            let (r, i, kv_head) = (
                n / (s.seq * s.kv_heads),
                n / s.kv_heads % s.seq,
                n % s.kv_heads,
            );
            let position = start + i;
            let pad = left_pad.get(r).copied().unwrap_or(0);
            // A padding query sees itself only (see the module comment); a windowed one the
            // `window` positions ending at its own.
            let first = if position < pad { position } else { pad };
            let window_start = s.window.map_or(0, |w| (position + 1).saturating_sub(w));
            let queries = &q[n * group * hd..(n + 1) * group * hd];
            let heads = queries.chunks_exact(hd).zip(out.chunks_exact_mut(hd));
            for (g, (q, out)) in heads.enumerate() {
                let query = Query {
                    q,
                    row: r,
                    kv_head,
                    keys: first.max(window_start)..position + 1,
                    scale,
                    softcap: s.softcap,
                    alibi: slopes.get(kv_head * group + g).copied(),
                };
                attend_one(self, &query, out);
            }
        });
        out
    }

    /// [`Self::attend_one`] compiled for AVX-512 (the crate's baseline is SSE2: 4 lanes).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,fma")]
    fn attend_one_avx512(&self, query: &Query, out: &mut [f32]) {
        self.attend_one(query, out);
    }

    /// One query head's softmax-weighted sum of the values of the keys it sees.
    #[inline(always)]
    fn attend_one(&self, query: &Query, out: &mut [f32]) {
        // Filled by loops rather than collected: `collect` is a function of its own, compiled
        // without the caller's AVX-512, which ran these dot products 4 lanes wide.
        let mut weights = vec![0f32; query.keys.len()];
        self.scores(query, &mut weights);
        if let Some(cap) = query.softcap {
            weights
                .iter_mut()
                .for_each(|w| *w = cap * (*w / cap).tanh());
        }
        if let Some(slope) = query.alibi {
            // The query is the last key it sees.
            let position = query.keys.end - 1;
            for (w, j) in weights.iter_mut().zip(query.keys.clone()) {
                *w += slope * (j as f32 - position as f32);
            }
        }
        let max = weights.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // The exponentials apart from their sum, so they vectorize (the sum, in order, cannot).
        for w in &mut weights {
            *w = exp(*w - max);
        }
        let sum: f32 = weights.iter().sum();
        for w in &mut weights {
            *w /= sum;
        }
        match self.head_dim {
            64 => self.add_weighted_values::<64>(query, &weights, out),
            128 => self.add_weighted_values::<128>(query, &weights, out),
            _ => {
                for (j, w) in query.keys.clone().zip(&weights) {
                    let v = self.head(&self.v, query.row, query.kv_head, j);
                    for (o, v) in out.iter_mut().zip(v) {
                        *o += w * v;
                    }
                }
            }
        }
    }

    /// The query's scaled dot products with the keys it sees, four keys at a time.
    #[inline(always)]
    fn scores(&self, query: &Query, weights: &mut [f32]) {
        let (hd, first) = (self.head_dim, query.keys.start);
        let mut fours = weights.chunks_exact_mut(4);
        for (i, w) in (&mut fours).enumerate() {
            // A head's keys are consecutive rows of the cache.
            let at = self.offset(query.row, query.kv_head, first + 4 * i);
            let dots = dot4(&self.k[at..at + 4 * hd], query.q, hd);
            for (w, d) in w.iter_mut().zip(dots) {
                *w = d * query.scale;
            }
        }
        let rest = fours.into_remainder();
        let keys = query.keys.end - rest.len()..query.keys.end;
        for (w, j) in rest.iter_mut().zip(keys) {
            *w = dot(query.q, self.head(&self.k, query.row, query.kv_head, j)) * query.scale;
        }
    }

    /// `out += Σ_j weights_j · v_j` over the keys the query sees, for heads of `HD` values: `out`
    /// stays in registers across the keys rather than being loaded and stored for each (each
    /// element is still summed in key order).
    #[inline(always)]
    fn add_weighted_values<const HD: usize>(
        &self,
        query: &Query,
        weights: &[f32],
        out: &mut [f32],
    ) {
        let out: &mut [f32; HD] = out.try_into().expect("one head");
        let mut acc = *out;
        for (j, &w) in query.keys.clone().zip(weights) {
            let v: &[f32; HD] = self
                .head(&self.v, query.row, query.kv_head, j)
                .try_into()
                .expect("one head");
            for (a, v) in acc.iter_mut().zip(v) {
                *a += w * v;
            }
        }
        *out = acc;
    }

    #[inline(always)]
    fn head<'a>(&self, data: &'a [f32], row: usize, kv_head: usize, position: usize) -> &'a [f32] {
        let at = self.offset(row, kv_head, position);
        &data[at..at + self.head_dim]
    }

    #[inline(always)]
    fn offset(&self, row: usize, kv_head: usize, position: usize) -> usize {
        ((row * self.kv_heads + kv_head) * self.capacity + position) * self.head_dim
    }

    /// Reallocates for `capacity` positions per head, keeping what is cached.
    fn grow(&mut self, capacity: usize) {
        let mut k = vec![0f32; self.rows * self.kv_heads * capacity * self.head_dim];
        let mut v = k.clone();
        let used = self.len * self.head_dim;
        for head in 0..self.rows * self.kv_heads {
            let (from, to) = (
                head * self.capacity * self.head_dim,
                head * capacity * self.head_dim,
            );
            k[to..to + used].copy_from_slice(&self.k[from..from + used]);
            v[to..to + used].copy_from_slice(&self.v[from..from + used]);
        }
        (self.k, self.v, self.capacity) = (k, v, capacity);
    }

    fn retain_rows(&mut self, rows: &[usize]) {
        let per_row = self.kv_heads * self.capacity * self.head_dim;
        let keep = |data: &[f32]| -> Vec<f32> {
            rows.iter()
                .flat_map(|&r| &data[r * per_row..(r + 1) * per_row])
                .copied()
                .collect()
        };
        (self.k, self.v) = (keep(&self.k), keep(&self.v));
        self.rows = rows.len();
    }
}
