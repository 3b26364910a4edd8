//! One Llama decoder block for training, forward and backward side by side, written by hand over
//! the fused kernels rather than through an autograd tape: the backward knows exactly which
//! activations it needs, so the forward keeps only those (about 3.3 hidden-widths plus the two
//! MLP halves per token) and recomputes the cheap rest (both RMSNorm outputs, the SwiGLU output).
//!
//! `x ← x + o(attn(rope(q), rope(k), v))` on `rmsnorm₁(x)`, then `x ← x + down(silu(gate) · up)` on
//! `rmsnorm₂(x)`; all activations are token-major `[tokens, width]` f32. Families with a q/k norm
//! (Qwen3) RMS-normalize each head of q and k before the rotary embedding.

use rayon::prelude::*;

use super::linear::{Projection, Saved, Tensor1};
use crate::kernels::attention::{self, AttnGrads, AttnInputs, AttnShape};
use crate::kernels::{rmsnorm, rope, swiglu};
use crate::model::ModelConfig;

/// What varies per batch: sizes, positions (restarting inside packed rows), segments, rope
/// tables, and the dropout seed of this block (None outside training).
#[derive(Clone, Copy, Debug)]
pub struct StepInputs<'a> {
    pub batch: usize,
    pub seq: usize,
    pub positions: &'a [u32],
    pub segment_ids: Option<&'a [u32]>,
    pub rope_cos: &'a [f32],
    pub rope_sin: &'a [f32],
    pub dropout_seed: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct Block {
    pub input_layernorm: Tensor1,
    /// q, k and v projections as the three parts of one projection.
    pub qkv: Projection,
    pub o_proj: Projection,
    pub post_attention_layernorm: Tensor1,
    pub gate_proj: Projection,
    pub up_proj: Projection,
    pub down_proj: Projection,
    /// Per-head RMSNorm of q and k before the rotary embedding, when the family has it.
    pub qk_norm: Option<QkNorm>,
}

/// Qwen3's `q_norm` and `k_norm`: RMSNorm weights `[head_dim]` shared by every head.
#[derive(Clone, Debug)]
pub struct QkNorm {
    pub q: Tensor1,
    pub k: Tensor1,
}

/// q and k as the projection made them, before their per-head norm, with the norms' `rstd`.
struct QkRaw {
    q: Vec<f32>,
    k: Vec<f32>,
    rstd_q: Vec<f32>,
    rstd_k: Vec<f32>,
}

/// What the forward keeps for the backward.
pub struct Activations {
    x_in: Vec<f32>,
    rstd1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    lse: Vec<f32>,
    x_mid: Vec<f32>,
    rstd2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    qk_raw: Option<QkRaw>,
    saved: [Saved; 5],
}

/// Sub-stream of a block's dropout seed for each projection.
const QKV: u64 = 0;
const O: u64 = 1;
const GATE: u64 = 2;
const UP: u64 = 3;
const DOWN: u64 = 4;

/// Query heads, key/value heads, head dimension.
fn heads(cfg: &ModelConfig) -> (usize, usize, usize) {
    (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    )
}

fn attn_shape(cfg: &ModelConfig, s: &StepInputs) -> AttnShape {
    AttnShape {
        batch: s.batch,
        seq: s.seq,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
    }
}

fn rope_shape(heads: usize, cfg: &ModelConfig) -> rope::RopeShape {
    rope::RopeShape {
        heads,
        head_dim: cfg.head_dim,
    }
}

fn seed(s: &StepInputs, projection: u64) -> Option<u64> {
    s.dropout_seed
        .map(|seed| super::dropout::stream(seed, projection))
}

/// RMSNorm output for `x`, computing its `rstd` too.
fn norm(x: &[f32], w: &Tensor1, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let mut y = vec![0.0; x.len()];
    let mut rstd = vec![0.0; x.len() / w.value.len()];
    rmsnorm::forward(x, &w.value, eps, &mut y, &mut rstd);
    (y, rstd)
}

/// `rmsnorm'(dy)`, the gradient of the norm's input, accumulating the weight gradient when the
/// weight trains.
fn norm_input_grad(dy: &[f32], x: &[f32], w: &mut Tensor1, rstd: &[f32]) -> Vec<f32> {
    let mut dnorm = vec![0.0; x.len()];
    rmsnorm::backward(dy, x, &w.value, rstd, &mut dnorm, w.grad.as_deref_mut());
    dnorm
}

/// `dx += rmsnorm'(dy)`, accumulating the weight gradient when the weight trains.
fn norm_backward(dy: &[f32], x: &[f32], w: &mut Tensor1, rstd: &[f32], dx: &mut [f32]) {
    add_into(dx, &norm_input_grad(dy, x, w, rstd));
}

impl QkNorm {
    /// Normalizes every head of `q` and `k` in place; returns what the backward needs.
    fn forward(&self, q: &mut Vec<f32>, k: &mut Vec<f32>, eps: f32) -> QkRaw {
        let (q_normed, rstd_q) = norm(q, &self.q, eps);
        let (k_normed, rstd_k) = norm(k, &self.k, eps);
        QkRaw {
            q: std::mem::replace(q, q_normed),
            k: std::mem::replace(k, k_normed),
            rstd_q,
            rstd_k,
        }
    }

    /// Turns `dq` and `dk`, gradients of the normalized heads, into those of the raw ones.
    fn backward(&mut self, dq: &mut Vec<f32>, dk: &mut Vec<f32>, raw: &QkRaw) {
        *dq = norm_input_grad(dq, &raw.q, &mut self.q, &raw.rstd_q);
        *dk = norm_input_grad(dk, &raw.k, &mut self.k, &raw.rstd_k);
    }
}

/// Elements per rayon task in the element-wise loops below.
const CHUNK: usize = 1 << 14;

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| *d += s));
}

/// Columns `start..start + width` of each `row`-wide row, as a contiguous `[rows, width]` buffer.
fn columns(data: &[f32], row: usize, start: usize, width: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len() / row * width];
    out.par_chunks_mut(width)
        .zip(data.par_chunks(row))
        .for_each(|(o, r)| o.copy_from_slice(&r[start..start + width]));
    out
}

/// `[q | k | v]` per token from the three `[tokens, width]` buffers (the inverse of [`columns`]).
fn interleave(q: &[f32], k: &[f32], v: &[f32], tokens: usize) -> Vec<f32> {
    let (wq, wk) = (q.len() / tokens, k.len() / tokens);
    let row = wq + 2 * wk;
    let mut out = vec![0.0; tokens * row];
    out.par_chunks_mut(row)
        .zip(q.par_chunks(wq).zip(k.par_chunks(wk)).zip(v.par_chunks(wk)))
        .for_each(|(o, ((q, k), v))| {
            o[..wq].copy_from_slice(q);
            o[wq..wq + wk].copy_from_slice(k);
            o[wq + wk..].copy_from_slice(v);
        });
    out
}

impl Block {
    /// Runs the block on `x` (`[tokens, hidden]`) in place and returns what its backward needs.
    pub fn forward(&self, cfg: &ModelConfig, x: &mut [f32], s: &StepInputs) -> Activations {
        let eps = cfg.rms_norm_eps as f32;
        let (nh, nkv, hd) = heads(cfg);
        let n = s.batch * s.seq;
        let x_in = x.to_vec();
        let (normed, rstd1) = norm(x, &self.input_layernorm, eps);
        let width = self.qkv.out_features();
        let mut qkv = vec![0.0; n * width];
        let qkv_saved = self.qkv.forward(&normed, &mut qkv, seed(s, QKV));
        let mut q = columns(&qkv, width, 0, nh * hd);
        let mut k = columns(&qkv, width, nh * hd, nkv * hd);
        let v = columns(&qkv, width, (nh + nkv) * hd, nkv * hd);
        drop(qkv);
        let qk_raw = self
            .qk_norm
            .as_ref()
            .map(|n| n.forward(&mut q, &mut k, eps));
        rope::forward(
            &mut q,
            s.positions,
            rope_shape(nh, cfg),
            s.rope_cos,
            s.rope_sin,
        );
        rope::forward(
            &mut k,
            s.positions,
            rope_shape(nkv, cfg),
            s.rope_cos,
            s.rope_sin,
        );
        let shape = attn_shape(cfg, s);
        let mut attn = vec![0.0; n * nh * hd];
        let mut lse = vec![0.0; s.batch * nh * s.seq];
        let inputs = AttnInputs {
            q: &q,
            k: &k,
            v: &v,
            segment_ids: s.segment_ids,
        };
        attention::forward(shape, inputs, &mut attn, &mut lse);
        let mut o = vec![0.0; x.len()];
        let o_saved = self.o_proj.forward(&attn, &mut o, seed(s, O));
        add_into(x, &o);

        let x_mid = x.to_vec();
        let (normed, rstd2) = norm(x, &self.post_attention_layernorm, eps);
        let inter = self.gate_proj.out_features();
        let mut gate = vec![0.0; n * inter];
        let mut up = vec![0.0; n * inter];
        let gate_saved = self.gate_proj.forward(&normed, &mut gate, seed(s, GATE));
        let up_saved = self.up_proj.forward(&normed, &mut up, seed(s, UP));
        let mut act = vec![0.0; n * inter];
        swiglu::forward(&gate, &up, &mut act);
        let down_saved = self.down_proj.forward(&act, &mut o, seed(s, DOWN));
        add_into(x, &o);
        Activations {
            x_in,
            rstd1,
            q,
            k,
            v,
            attn,
            lse,
            x_mid,
            rstd2,
            gate,
            up,
            qk_raw,
            saved: [qkv_saved, o_saved, gate_saved, up_saved, down_saved],
        }
    }

    /// From `dx`, the gradient of the block's output, computes the gradient of its input in place
    /// and accumulates the gradients of every trainable tensor.
    pub fn backward(&mut self, cfg: &ModelConfig, dx: &mut [f32], a: Activations, s: &StepInputs) {
        let eps = cfg.rms_norm_eps as f32;
        let (nh, nkv, hd) = heads(cfg);
        let n = s.batch * s.seq;
        let [qkv_saved, o_saved, gate_saved, up_saved, down_saved] = a.saved;

        // MLP: x_out = x_mid + down(silu(gate) · up), gate and up from rmsnorm₂(x_mid).
        let inter = self.gate_proj.out_features();
        let mut act = vec![0.0; n * inter];
        swiglu::forward(&a.gate, &a.up, &mut act);
        let mut dact = vec![0.0; n * inter];
        self.down_proj.backward(dx, &act, &down_saved, &mut dact);
        drop(act);
        let (mut dgate, mut dup) = (vec![0.0; n * inter], vec![0.0; n * inter]);
        swiglu::backward(&dact, &a.gate, &a.up, &mut dgate, &mut dup);
        drop(dact);
        let (normed, _) = norm(&a.x_mid, &self.post_attention_layernorm, eps);
        let mut dnormed = vec![0.0; dx.len()];
        let mut dnormed_up = vec![0.0; dx.len()];
        self.gate_proj
            .backward(&dgate, &normed, &gate_saved, &mut dnormed);
        self.up_proj
            .backward(&dup, &normed, &up_saved, &mut dnormed_up);
        add_into(&mut dnormed, &dnormed_up);
        norm_backward(
            &dnormed,
            &a.x_mid,
            &mut self.post_attention_layernorm,
            &a.rstd2,
            dx,
        );

        // Attention: x_mid = x_in + o(attn(rope(q), rope(k), v)), q/k/v from rmsnorm₁(x_in).
        let mut dattn = vec![0.0; n * nh * hd];
        self.o_proj.backward(dx, &a.attn, &o_saved, &mut dattn);
        let (mut dq, mut dk, mut dv) = (
            vec![0.0; a.q.len()],
            vec![0.0; a.k.len()],
            vec![0.0; a.v.len()],
        );
        let inputs = AttnInputs {
            q: &a.q,
            k: &a.k,
            v: &a.v,
            segment_ids: s.segment_ids,
        };
        let grads = AttnGrads {
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
        };
        attention::backward(attn_shape(cfg, s), inputs, &a.attn, &a.lse, &dattn, grads);
        rope::backward(
            &mut dq,
            s.positions,
            rope_shape(nh, cfg),
            s.rope_cos,
            s.rope_sin,
        );
        rope::backward(
            &mut dk,
            s.positions,
            rope_shape(nkv, cfg),
            s.rope_cos,
            s.rope_sin,
        );
        if let (Some(norm), Some(raw)) = (&mut self.qk_norm, &a.qk_raw) {
            norm.backward(&mut dq, &mut dk, raw);
        }
        let dqkv = interleave(&dq, &dk, &dv, n);
        let (normed, _) = norm(&a.x_in, &self.input_layernorm, eps);
        self.qkv.backward(&dqkv, &normed, &qkv_saved, &mut dnormed);
        norm_backward(&dnormed, &a.x_in, &mut self.input_layernorm, &a.rstd1, dx);
    }
}
