//! One Llama decoder block for training, forward and backward side by side, written by hand over
//! the fused kernels rather than through an autograd tape: the backward knows exactly which
//! activations it needs, so the forward keeps only those (about 3.3 hidden-widths plus the two
//! MLP halves per token) and recomputes the cheap rest (both RMSNorm outputs, the SwiGLU output).
//!
//! `x ← x + o(attn(rope(q), rope(k), v))` on `rmsnorm₁(x)`, then `x ← x + down(silu(gate) · up)` on
//! `rmsnorm₂(x)`; all activations are token-major `[tokens, width]` f32. The family's switches
//! (`ModelConfig`) vary it: norms on each branch's output (OLMo 2) or on both sides (Gemma), Gemma's
//! `1 + w` norm weights, a q/k norm before the rotary embedding (per head: Qwen3, Gemma 3; whole
//! projection: OLMo 2), layers without rotary embedding (SmolLM3) or with their own tables (Gemma 3's
//! sliding layers), partial and interleaved rotary (Phi-3, GLM-4), sliding windows and soft-capped
//! scores (the attention kernel's), GeGLU, LayerNorms and an ungated GELU MLP (StarCoder2), and
//! Granite's residual multiplier on each branch. The
//! projections' parts follow `model::layout` (Phi-3's fused `qkv_proj`, GLM-4's `gate_up_proj`).

use std::borrow::Cow;

use rayon::prelude::*;

use super::linear::{Projection, Saved, Tensor1};
use crate::kernels::attention::{self, AttnGrads, AttnInputs, AttnShape};
use crate::kernels::columns::columns;
use crate::kernels::{glu, layernorm, rmsnorm, rope};
use crate::model::config::BlockNorm;
use crate::model::layout::mlp_activation;
use crate::model::ModelConfig;

/// What varies per batch: sizes, positions (restarting inside packed rows), segments, the rotary
/// tables this batch rotates with (cos, sin), and the dropout seed of this block (None outside
/// training).
#[derive(Clone, Copy, Debug)]
pub struct StepInputs<'a> {
    pub batch: usize,
    pub seq: usize,
    pub positions: &'a [u32],
    pub segment_ids: Option<&'a [u32]>,
    pub rope: (&'a [f32], &'a [f32]),
    /// The sliding-window layers' tables: their own when they rotate differently (Gemma 3), else
    /// `rope`.
    pub local_rope: (&'a [f32], &'a [f32]),
    pub dropout_seed: Option<u64>,
}

impl<'a> StepInputs<'a> {
    /// The rotary tables of a layer.
    fn rope_tables(&self, local: bool) -> (&'a [f32], &'a [f32]) {
        if local {
            self.local_rope
        } else {
            self.rope
        }
    }
}

/// A norm's weight and, for a LayerNorm (StarCoder2), its bias; an RMSNorm has none.
#[derive(Clone, Debug)]
pub struct NormParam {
    pub weight: Tensor1,
    pub bias: Option<Tensor1>,
}

/// A block's RMSNorm weights by position: those its family has (`norm_placement`).
#[derive(Clone, Debug, Default)]
pub struct Norms {
    pub attn_in: Option<NormParam>,
    pub attn_out: Option<NormParam>,
    pub mlp_in: Option<NormParam>,
    pub mlp_out: Option<NormParam>,
}

impl Norms {
    pub fn slot(&self, position: BlockNorm) -> Option<&NormParam> {
        match position {
            BlockNorm::AttnIn => self.attn_in.as_ref(),
            BlockNorm::AttnOut => self.attn_out.as_ref(),
            BlockNorm::MlpIn => self.mlp_in.as_ref(),
            BlockNorm::MlpOut => self.mlp_out.as_ref(),
        }
    }

    pub fn slot_mut(&mut self, position: BlockNorm) -> &mut Option<NormParam> {
        match position {
            BlockNorm::AttnIn => &mut self.attn_in,
            BlockNorm::AttnOut => &mut self.attn_out,
            BlockNorm::MlpIn => &mut self.mlp_in,
            BlockNorm::MlpOut => &mut self.mlp_out,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Block {
    /// The norms on the branches' inputs and outputs.
    pub norms: Norms,
    /// q, k and v projections as the parts of one projection (one part when the family fuses
    /// them, Phi-3's `qkv_proj`), likewise gate and up.
    pub qkv: Projection,
    pub o_proj: Projection,
    pub gate_up: Projection,
    pub down_proj: Projection,
    /// Per-head RMSNorm of q and k before the rotary embedding, when the family has it.
    pub qk_norm: Option<QkNorm>,
    /// Whether q and k are rotated (false in SmolLM3's NoPE layers).
    pub rotary: bool,
    /// Keys a query sees under sliding-window attention, itself included (None: all earlier).
    pub window: Option<usize>,
    /// Whether q and k rotate with the local tables (Gemma 3's sliding-window layers).
    pub local_rope: bool,
}

/// `q_norm` and `k_norm`: RMSNorm weights `[head_dim]` shared by every head (Qwen3, Gemma 3), or
/// as wide as the projection (OLMo 2); the norm's rows follow from the weight's width.
#[derive(Clone, Debug)]
pub struct QkNorm {
    pub q: NormParam,
    pub k: NormParam,
}

/// q and k as the projection made them, before their norm, with the norms' `rstd`.
struct QkRaw {
    q: Vec<f32>,
    k: Vec<f32>,
    rstd_q: Vec<f32>,
    rstd_k: Vec<f32>,
}

/// A branch output before its norm, and the norm's scales, for the backward.
struct OutputNorm {
    raw: Vec<f32>,
    rstd: Vec<f32>,
}

/// What the forward keeps for the backward.
pub struct Activations {
    x_in: Vec<f32>,
    /// The input norms' scales (empty without the norm).
    attn_in_rstd: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    lse: Vec<f32>,
    x_mid: Vec<f32>,
    mlp_in_rstd: Vec<f32>,
    /// The stacked `[gate | up]` product, `[tokens, 2·intermediate]`.
    gate_up: Vec<f32>,
    qk_raw: Option<QkRaw>,
    attn_out: Option<OutputNorm>,
    mlp_out: Option<OutputNorm>,
    saved: [Saved; 4],
}

/// How the model's RMSNorms compute: eps, and what is added to each weight (Gemma's `1 + w`).
#[derive(Clone, Copy)]
pub(super) struct NormCtx {
    eps: f32,
    offset: f32,
}

impl NormCtx {
    pub(super) fn of(cfg: &ModelConfig) -> Self {
        NormCtx {
            eps: cfg.rms_norm_eps as f32,
            offset: cfg.norm_offset,
        }
    }

    /// The weights a norm scales by.
    fn weights<'a>(&self, w: &'a [f32]) -> Cow<'a, [f32]> {
        if self.offset == 0.0 {
            Cow::Borrowed(w)
        } else {
            Cow::Owned(w.iter().map(|&w| w + self.offset).collect())
        }
    }
}

/// Sub-stream of a block's dropout seed for each projection.
const QKV: u64 = 0;
const O: u64 = 1;
const GATE_UP: u64 = 2;
const DOWN: u64 = 4;

/// Query heads, key/value heads, head dimension.
fn heads(cfg: &ModelConfig) -> (usize, usize, usize) {
    (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    )
}

fn attn_shape(cfg: &ModelConfig, s: &StepInputs, window: Option<usize>) -> AttnShape {
    AttnShape {
        batch: s.batch,
        seq: s.seq,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        scale: cfg.attention_scale(),
        window,
        softcap: cfg.attn_softcap,
        alibi: cfg.alibi,
    }
}

fn rope_shape(heads: usize, cfg: &ModelConfig) -> rope::RopeShape {
    rope::RopeShape {
        heads,
        head_dim: cfg.head_dim,
        rotary_dim: cfg.rotary_dim,
        interleaved: cfg.architecture.rotary_interleaved(),
    }
}

fn seed(s: &StepInputs, projection: u64) -> Option<u64> {
    s.dropout_seed
        .map(|seed| super::dropout::stream(seed, projection))
}

/// The norm's output for `x` (RMSNorm, or LayerNorm with a bias), computing its `rstd` too.
pub(super) fn norm(x: &[f32], p: &NormParam, n: NormCtx) -> (Vec<f32>, Vec<f32>) {
    let w = &p.weight;
    let mut y = vec![0.0; x.len()];
    let mut rstd = vec![0.0; x.len() / w.value.len()];
    let weights = n.weights(&w.value);
    match &p.bias {
        Some(b) => layernorm::forward(x, &weights, &b.value, n.eps, &mut y, &mut rstd),
        None => rmsnorm::forward(x, &weights, n.eps, &mut y, &mut rstd),
    }
    (y, rstd)
}

/// `norm'(dy)`, the gradient of the norm's input, accumulating the weight (and a LayerNorm's bias)
/// gradient when it trains (an offset added to the weight leaves its gradient as it is).
pub(super) fn norm_input_grad(
    dy: &[f32],
    x: &[f32],
    p: &mut NormParam,
    rstd: &[f32],
    n: NormCtx,
) -> Vec<f32> {
    let mut dnorm = vec![0.0; x.len()];
    let w = &mut p.weight;
    let weights = n.weights(&w.value);
    match &mut p.bias {
        Some(b) => {
            let grads = (w.grad.as_deref_mut(), b.grad.as_deref_mut());
            layernorm::backward(dy, x, &weights, rstd, &mut dnorm, grads);
        }
        None => rmsnorm::backward(dy, x, &weights, rstd, &mut dnorm, w.grad.as_deref_mut()),
    }
    dnorm
}

/// A branch's input as its projections see it: `x` normalized by `w` when the branch has an input
/// norm, with the norm's scales; `x` itself otherwise.
fn branch_input<'a>(x: &'a [f32], w: Option<&NormParam>, n: NormCtx) -> (Cow<'a, [f32]>, Vec<f32>) {
    match w {
        Some(w) => {
            let (y, rstd) = norm(x, w, n);
            (Cow::Owned(y), rstd)
        }
        None => (Cow::Borrowed(x), Vec::new()),
    }
}

/// With an output norm `w`, replaces the branch output `out` by its norm and returns the output
/// as it was, for the backward, with the norm's scales.
fn norm_branch_output(out: &mut Vec<f32>, w: Option<&NormParam>, n: NormCtx) -> Option<OutputNorm> {
    let (y, rstd) = norm(out, w?, n);
    Some(OutputNorm {
        raw: std::mem::replace(out, y),
        rstd,
    })
}

/// The gradient reaching a branch's output from `dx`, the gradient of the residual sum: times the
/// residual factor, then back through the output norm when there is one, accumulating its weight
/// gradient.
fn branch_output_grad<'a>(
    dx: &'a [f32],
    residual: f32,
    out: Option<(&OutputNorm, &mut NormParam)>,
    n: NormCtx,
) -> Cow<'a, [f32]> {
    let dy = branch_grad(dx, residual);
    match out {
        Some((saved, w)) => Cow::Owned(norm_input_grad(&dy, &saved.raw, w, &saved.rstd, n)),
        None => dy,
    }
}

/// Adds into `dx` the gradient of a branch's input `x` from `dinput`, the gradient of what the
/// projections saw: through the input norm when the branch has one.
fn branch_input_grad_into(
    dx: &mut [f32],
    dinput: &[f32],
    x: &[f32],
    input_norm: Option<(&mut NormParam, &[f32])>,
    n: NormCtx,
) {
    match input_norm {
        Some((w, rstd)) => add_into(dx, &norm_input_grad(dinput, x, w, rstd, n)),
        None => add_into(dx, dinput),
    }
}

impl QkNorm {
    /// Normalizes every head of `q` and `k` in place; returns what the backward needs.
    fn forward(&self, q: &mut Vec<f32>, k: &mut Vec<f32>, n: NormCtx) -> QkRaw {
        let (q_normed, rstd_q) = norm(q, &self.q, n);
        let (k_normed, rstd_k) = norm(k, &self.k, n);
        QkRaw {
            q: std::mem::replace(q, q_normed),
            k: std::mem::replace(k, k_normed),
            rstd_q,
            rstd_k,
        }
    }

    /// Turns `dq` and `dk`, gradients of the normalized heads, into those of the raw ones.
    fn backward(&mut self, dq: &mut Vec<f32>, dk: &mut Vec<f32>, raw: &QkRaw, n: NormCtx) {
        *dq = norm_input_grad(dq, &raw.q, &mut self.q, &raw.rstd_q, n);
        *dk = norm_input_grad(dk, &raw.k, &mut self.k, &raw.rstd_k, n);
    }
}

/// The gradient of the MLP's input product from `dact`, that of its activation.
fn mlp_activation_grad(cfg: &ModelConfig, dact: &[f32], gate_up: &[f32]) -> Vec<f32> {
    let mut dgate_up = vec![0.0; gate_up.len()];
    match cfg.architecture.gated_mlp() {
        true => glu::backward(
            cfg.hidden_act,
            dact,
            gate_up,
            cfg.intermediate_size,
            &mut dgate_up,
        ),
        false => glu::activate_backward(cfg.hidden_act, dact, gate_up, &mut dgate_up),
    }
    dgate_up
}

/// Elements per rayon task in the element-wise loops below.
const CHUNK: usize = 1 << 14;

fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| *d += s));
}

/// `dst += factor · src`, the residual add of a branch (factor 1 but in Granite).
fn add_branch(dst: &mut [f32], src: &[f32], factor: f32) {
    if factor == 1.0 {
        return add_into(dst, src);
    }
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, &s)| *d += s * factor));
}

/// The gradient of a branch's output from `dx`, the gradient of the residual sum it was added to
/// times `factor`: `dx` itself when the factor is 1.
fn branch_grad(dx: &[f32], factor: f32) -> Cow<'_, [f32]> {
    if factor == 1.0 {
        Cow::Borrowed(dx)
    } else {
        Cow::Owned(dx.par_iter().map(|&g| g * factor).collect())
    }
}

/// `[a | b | …]` per token from `[tokens, width]` buffers (the inverse of `columns`).
fn interleave(parts: &[&[f32]], tokens: usize) -> Vec<f32> {
    let widths: Vec<usize> = parts.iter().map(|p| p.len() / tokens).collect();
    let row: usize = widths.iter().sum();
    let mut out = vec![0.0; tokens * row];
    out.par_chunks_mut(row).enumerate().for_each(|(t, o)| {
        let mut start = 0;
        for (part, &w) in parts.iter().zip(&widths) {
            o[start..start + w].copy_from_slice(&part[t * w..(t + 1) * w]);
            start += w;
        }
    });
    out
}

impl Block {
    /// Runs the block on `x` (`[tokens, hidden]`) in place and returns what its backward needs.
    pub fn forward(&self, cfg: &ModelConfig, x: &mut [f32], s: &StepInputs) -> Activations {
        let norm_ctx = NormCtx::of(cfg);
        let (nh, nkv, hd) = heads(cfg);
        let n = s.batch * s.seq;
        let x_in = x.to_vec();
        let (input, attn_in_rstd) = branch_input(x, self.norms.attn_in.as_ref(), norm_ctx);
        let width = self.qkv.out_features();
        let mut qkv = vec![0.0; n * width];
        let qkv_saved = self.qkv.forward(&input, &mut qkv, seed(s, QKV));
        drop(input);
        let mut q = columns(&qkv, width, 0, nh * hd);
        let mut k = columns(&qkv, width, nh * hd, nkv * hd);
        let v = columns(&qkv, width, (nh + nkv) * hd, nkv * hd);
        drop(qkv);
        let qk_raw = self
            .qk_norm
            .as_ref()
            .map(|norm| norm.forward(&mut q, &mut k, norm_ctx));
        if self.rotary {
            let (cos, sin) = s.rope_tables(self.local_rope);
            rope::forward(&mut q, s.positions, rope_shape(nh, cfg), cos, sin);
            rope::forward(&mut k, s.positions, rope_shape(nkv, cfg), cos, sin);
        }
        let shape = attn_shape(cfg, s, self.window);
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
        let attn_out = norm_branch_output(&mut o, self.norms.attn_out.as_ref(), norm_ctx);
        let residual = cfg.scales.residual as f32;
        add_branch(x, &o, residual);

        let x_mid = x.to_vec();
        let (input, mlp_in_rstd) = branch_input(x, self.norms.mlp_in.as_ref(), norm_ctx);
        let mut gate_up = vec![0.0; n * self.gate_up.out_features()];
        let gate_up_saved = self.gate_up.forward(&input, &mut gate_up, seed(s, GATE_UP));
        drop(input);
        let act = mlp_activation(cfg, &gate_up);
        let down_saved = self.down_proj.forward(&act, &mut o, seed(s, DOWN));
        let mlp_out = norm_branch_output(&mut o, self.norms.mlp_out.as_ref(), norm_ctx);
        add_branch(x, &o, residual);
        Activations {
            x_in,
            attn_in_rstd,
            q,
            k,
            v,
            attn,
            lse,
            x_mid,
            mlp_in_rstd,
            gate_up,
            qk_raw,
            attn_out,
            mlp_out,
            saved: [qkv_saved, o_saved, gate_up_saved, down_saved],
        }
    }

    /// From `dx`, the gradient of the block's output, computes the gradient of its input in place
    /// and accumulates the gradients of every trainable tensor.
    pub fn backward(&mut self, cfg: &ModelConfig, dx: &mut [f32], a: Activations, s: &StepInputs) {
        let norm_ctx = NormCtx::of(cfg);
        let (nh, nkv, hd) = heads(cfg);
        let n = s.batch * s.seq;
        let [qkv_saved, o_saved, gate_up_saved, down_saved] = a.saved;
        let residual = cfg.scales.residual as f32;
        let Norms {
            attn_in,
            attn_out,
            mlp_in,
            mlp_out,
        } = &mut self.norms;

        // MLP: x_out = x_mid + mlp_out(down(act(gate) · up)), gate and up from mlp_in(x_mid), each
        // norm where the family has it.
        let act = mlp_activation(cfg, &a.gate_up);
        let mut dact = vec![0.0; act.len()];
        let out_norm = a.mlp_out.as_ref().zip(mlp_out.as_mut());
        let dout = branch_output_grad(dx, residual, out_norm, norm_ctx);
        self.down_proj.backward(&dout, &act, &down_saved, &mut dact);
        drop((dout, act));
        let dgate_up = mlp_activation_grad(cfg, &dact, &a.gate_up);
        drop(dact);
        let (input, _) = branch_input(&a.x_mid, mlp_in.as_ref(), norm_ctx);
        let mut dinput = vec![0.0; dx.len()];
        self.gate_up
            .backward(&dgate_up, &input, &gate_up_saved, &mut dinput);
        drop(input);
        let in_norm = mlp_in.as_mut().map(|w| (w, a.mlp_in_rstd.as_slice()));
        branch_input_grad_into(dx, &dinput, &a.x_mid, in_norm, norm_ctx);

        // Attention: x_mid = x_in + attn_out(o(attn(rope(q), rope(k), v))), q/k/v from
        // attn_in(x_in).
        let mut dattn = vec![0.0; n * nh * hd];
        let out_norm = a.attn_out.as_ref().zip(attn_out.as_mut());
        let dout = branch_output_grad(dx, residual, out_norm, norm_ctx);
        self.o_proj.backward(&dout, &a.attn, &o_saved, &mut dattn);
        drop(dout);
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
        let shape = attn_shape(cfg, s, self.window);
        attention::backward(shape, inputs, &a.attn, &a.lse, &dattn, grads);
        if self.rotary {
            let (cos, sin) = s.rope_tables(self.local_rope);
            rope::backward(&mut dq, s.positions, rope_shape(nh, cfg), cos, sin);
            rope::backward(&mut dk, s.positions, rope_shape(nkv, cfg), cos, sin);
        }
        if let (Some(norm), Some(raw)) = (&mut self.qk_norm, &a.qk_raw) {
            norm.backward(&mut dq, &mut dk, raw, norm_ctx);
        }
        let dqkv = interleave(&[&dq, &dk, &dv], n);
        let (input, _) = branch_input(&a.x_in, attn_in.as_ref(), norm_ctx);
        self.qkv.backward(&dqkv, &input, &qkv_saved, &mut dinput);
        drop(input);
        let in_norm = attn_in.as_mut().map(|w| (w, a.attn_in_rstd.as_slice()));
        branch_input_grad_into(dx, &dinput, &a.x_in, in_norm, norm_ctx);
    }
}
