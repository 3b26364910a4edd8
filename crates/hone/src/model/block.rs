//! The one decoder block of every family, forward and backward side by side, for inference and
//! training alike: generation runs its forward over a KV cache, training keeps its activations
//! for the backward. Written by hand over the fused kernels rather than through an autograd tape:
//! the backward knows exactly which activations it needs, so the forward keeps only those (about
//! 3.3 hidden-widths plus the two MLP halves per token) and recomputes the cheap rest (the norms'
//! outputs, the MLP's activation).
//!
//! `x ← x + o(attn(rope(q), rope(k), v))` on `norm₁(x)`, then `x ← x + down(act(gate) · up)` on
//! `norm₂(x)`; all activations are token-major `[tokens, width]` f32. The family's switches
//! (`ModelConfig`) vary it: norms on each branch's output (OLMo 2) or on both sides (Gemma),
//! Gemma's `1 + w` norm weights, a q/k norm before the rotary embedding (per head: Qwen3,
//! Gemma 3; whole projection: OLMo 2), layers without rotary embedding (SmolLM3) or with their own
//! tables (Gemma 3's sliding layers), partial and interleaved rotary (Phi-3, GLM-4), sliding
//! windows, soft-capped scores and ALiBi (the attention kernels'), Qwen's logn scaling
//! (inference), GeGLU, LayerNorms and an ungated GELU MLP (StarCoder2), and Granite's residual
//! multiplier on each branch. The projections' parts follow `model::layout` (Phi-3's fused
//! `qkv_proj`, GLM-4's `gate_up_proj`); what a projection is — the inference model's `Linear`
//! (stored-type weights, adapters per request) or the training engine's (gradients, dropout) —
//! is the [`Project`] seam.

use std::borrow::Cow;

use anyhow::Result;
use rayon::prelude::*;

use super::adaption;
use super::attend::{Attend, Pass, PassGrads, Turn};
use super::config::BlockNorm;
use super::layout::{mlp_activation, Slot};
use super::norm::{NormCtx, NormParam};
use super::ModelConfig;
use crate::kernels::attention::{self, AttnGrads, AttnInputs, AttnShape};
use crate::kernels::columns::columns;
use crate::kernels::rope::RopeShape;
use crate::kernels::{glu, PARALLEL_MIN};

/// One slot's product of a block (`[q|k|v]`, `o`, `[gate|up]`, `down`).
pub trait Project {
    /// What a pass gives each product besides its input: the block's dropout seed in training,
    /// each adapter's rows when a server mixes adapters in one batch.
    type Context<'a>;
    /// What the forward keeps for the backward.
    type Saved;
    fn out_features(&self) -> usize;
    /// `y` `[rows, out]` for `x` `[rows, in]`, and what the backward will need.
    fn project(
        &self,
        x: &[f32],
        rows: usize,
        slot: Slot,
        context: &Self::Context<'_>,
    ) -> Result<(Vec<f32>, Self::Saved)>;
}

/// A product that trains.
pub trait Backprop: Project {
    /// From `dy` and the forward's input `x`, writes `dx` and accumulates the gradients of every
    /// trainable part.
    fn backward(&mut self, dy: &[f32], x: &[f32], saved: &Self::Saved, dx: &mut [f32]);
}

/// A block's norms by position: those its family has (`norm_placement`).
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

/// `q_norm` and `k_norm`: RMSNorm weights `[head_dim]` shared by every head (Qwen3, Gemma 3), or
/// as wide as the projection (OLMo 2); the norm's rows follow from the weight's width.
#[derive(Clone, Debug)]
pub struct QkNorm {
    pub q: NormParam,
    pub k: NormParam,
}

#[derive(Clone, Debug)]
pub struct Block<L> {
    /// The layer's index: which of a cache's layers it reads.
    pub index: usize,
    /// The norms on the branches' inputs and outputs.
    pub norms: Norms,
    /// q, k and v projections as the parts of one projection (one part when the family fuses
    /// them, Phi-3's `qkv_proj`), likewise gate and up.
    pub qkv: L,
    pub o_proj: L,
    pub gate_up: L,
    pub down_proj: L,
    /// Per-head norm of q and k before the rotary embedding, when the family has it.
    pub qk_norm: Option<QkNorm>,
    /// Whether q and k are rotated (false in SmolLM3's NoPE layers).
    pub rotary: bool,
    /// Keys a query sees under sliding-window attention, itself included (None: all earlier).
    pub window: Option<usize>,
    /// Whether q and k rotate with the local tables (Gemma 3's sliding-window layers).
    pub local_rope: bool,
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
pub struct Activations<S> {
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
    saved: [S; 4],
}

/// Query heads, key/value heads, head dimension.
fn heads(cfg: &ModelConfig) -> (usize, usize, usize) {
    (
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    )
}

/// Layer `layer`'s attention output with LLaMA-Adapter's term added, when the layer has an
/// adaption prompt in the pass (None: the output as it is).
fn with_adaption(
    layer: usize,
    pass: &Pass,
    q: &[f32],
    attn: &[f32],
    shape: AttnShape,
) -> Option<Vec<f32>> {
    let prompts = pass.adaption_layer(layer)?;
    let mut out = attn.to_vec();
    adaption::forward(q, &mut out, &prompts, shape);
    Some(out)
}

fn attn_shape(cfg: &ModelConfig, pass: &Pass, window: Option<usize>) -> AttnShape {
    AttnShape {
        batch: pass.batch,
        seq: pass.seq,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        scale: cfg.attention_scale(),
        window,
        softcap: cfg.attn_softcap,
        alibi: cfg.alibi,
    }
}

fn rope_shape(heads: usize, cfg: &ModelConfig) -> RopeShape {
    RopeShape {
        heads,
        head_dim: cfg.head_dim,
        rotary_dim: cfg.rotary_dim,
        interleaved: cfg.architecture.rotary_interleaved(),
    }
}

/// `v` when the forward keeps activations; else nothing, freeing it now.
fn kept(keep: bool, v: Vec<f32>) -> Vec<f32> {
    if keep {
        v
    } else {
        Vec::new()
    }
}

/// A branch's input as its projections see it: `x` normalized when the branch has an input norm,
/// with the norm's scales; `x` itself otherwise.
fn branch_input<'a>(x: &'a [f32], w: Option<&NormParam>, n: NormCtx) -> (Cow<'a, [f32]>, Vec<f32>) {
    match w {
        Some(w) => {
            let (y, rstd) = w.forward(x, n);
            (Cow::Owned(y), rstd)
        }
        None => (Cow::Borrowed(x), Vec::new()),
    }
}

/// With an output norm `w`, replaces the branch output `out` by its norm and returns the output
/// as it was, for the backward, with the norm's scales.
fn norm_branch_output(out: &mut Vec<f32>, w: Option<&NormParam>, n: NormCtx) -> Option<OutputNorm> {
    let (y, rstd) = w?.forward(out, n);
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
        Some((saved, w)) => Cow::Owned(w.backward(&dy, &saved.raw, &saved.rstd, n)),
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
        Some((w, rstd)) => add_into(dx, &w.backward(dinput, x, rstd, n)),
        None => add_into(dx, dinput),
    }
}

impl QkNorm {
    /// Normalizes every head of `q` and `k` in place; returns what the backward needs.
    fn forward(&self, q: &mut Vec<f32>, k: &mut Vec<f32>, n: NormCtx) -> QkRaw {
        let (q_normed, rstd_q) = self.q.forward(q, n);
        let (k_normed, rstd_k) = self.k.forward(k, n);
        QkRaw {
            q: std::mem::replace(q, q_normed),
            k: std::mem::replace(k, k_normed),
            rstd_q,
            rstd_k,
        }
    }

    /// Turns `dq` and `dk`, gradients of the normalized heads, into those of the raw ones.
    fn backward(&mut self, dq: &mut Vec<f32>, dk: &mut Vec<f32>, raw: &QkRaw, n: NormCtx) {
        *dq = self.q.backward(dq, &raw.q, &raw.rstd_q, n);
        *dk = self.k.backward(dk, &raw.k, &raw.rstd_k, n);
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

/// `dst += factor · src`, the residual add of a branch (factor 1 but in Granite), in tasks of
/// `PARALLEL_MIN` values.
fn add_branch(dst: &mut [f32], src: &[f32], factor: f32) {
    let add = |(d, s): (&mut [f32], &[f32])| match factor {
        1.0 => d.iter_mut().zip(s).for_each(|(d, &s)| *d += s),
        _ => d.iter_mut().zip(s).for_each(|(d, &s)| *d += s * factor),
    };
    if dst.len() < PARALLEL_MIN {
        add((dst, src));
    } else {
        dst.par_chunks_mut(PARALLEL_MIN)
            .zip(src.par_chunks(PARALLEL_MIN))
            .for_each(add);
    }
}

fn add_into(dst: &mut [f32], src: &[f32]) {
    add_branch(dst, src, 1.0)
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

impl<L> Block<L> {
    /// Layer `index` of a `cfg` model from its norms and products (`[qkv, o, gate_up, down]`):
    /// the layer's own switches (rotary, sliding window) come from the config.
    pub fn new(
        cfg: &ModelConfig,
        index: usize,
        norms: Norms,
        qk_norm: Option<QkNorm>,
        [qkv, o_proj, gate_up, down_proj]: [L; 4],
    ) -> Block<L> {
        Block {
            index,
            norms,
            qkv,
            o_proj,
            gate_up,
            down_proj,
            qk_norm,
            rotary: cfg.uses_rope(index),
            window: cfg.window(index),
            local_rope: cfg.window(index).is_some(),
        }
    }

    /// The product of `slot`.
    pub fn linear(&self, slot: Slot) -> &L {
        match slot {
            Slot::Qkv => &self.qkv,
            Slot::O => &self.o_proj,
            Slot::GateUp => &self.gate_up,
            Slot::Down => &self.down_proj,
        }
    }

    /// The products, in slot order.
    pub fn linears_mut(&mut self) -> [&mut L; 4] {
        [
            &mut self.qkv,
            &mut self.o_proj,
            &mut self.gate_up,
            &mut self.down_proj,
        ]
    }
}

impl<L: Project> Block<L> {
    /// Runs the block on `x` (`[tokens, hidden]`) in place, attending as `attend` says; keeps
    /// nothing for a backward.
    pub fn forward(
        &self,
        cfg: &ModelConfig,
        x: &mut [f32],
        pass: &Pass,
        context: &L::Context<'_>,
        attend: &mut Attend,
    ) -> Result<()> {
        self.run(cfg, x, (pass, context), attend, false)?;
        Ok(())
    }

    /// Runs the block on whole sequences in `x` in place and returns what its backward needs.
    pub fn forward_keeping(
        &self,
        cfg: &ModelConfig,
        x: &mut [f32],
        pass: &Pass,
        context: &L::Context<'_>,
        segment_ids: Option<&[u32]>,
    ) -> Result<Activations<L::Saved>> {
        let mut attend = Attend::Whole { segment_ids };
        self.run(cfg, x, (pass, context), &mut attend, true)
    }

    /// The forward, keeping its activations when `keep` (else they are freed as it goes).
    fn run(
        &self,
        cfg: &ModelConfig,
        x: &mut [f32],
        (pass, context): (&Pass, &L::Context<'_>),
        attend: &mut Attend,
        keep: bool,
    ) -> Result<Activations<L::Saved>> {
        let norm_ctx = NormCtx::of(cfg);
        let (nh, nkv, hd) = heads(cfg);
        let n = pass.batch * pass.seq;
        let x_in = if keep { x.to_vec() } else { Vec::new() };
        let (input, attn_in_rstd) = branch_input(x, self.norms.attn_in.as_ref(), norm_ctx);
        let width = self.qkv.out_features();
        let (qkv, qkv_saved) = self.qkv.project(&input, n, Slot::Qkv, context)?;
        drop(input);
        let mut q = columns(&qkv, width, 0, nh * hd);
        let mut k = columns(&qkv, width, nh * hd, nkv * hd);
        let mut v = columns(&qkv, width, (nh + nkv) * hd, nkv * hd);
        drop(qkv);
        let qk_raw = self
            .qk_norm
            .as_ref()
            .map(|norm| norm.forward(&mut q, &mut k, norm_ctx))
            .filter(|_| keep);
        if self.rotary {
            pass.rotate(&mut q, rope_shape(nh, cfg), self.local_rope, Turn::Forward);
            pass.rotate(&mut k, rope_shape(nkv, cfg), self.local_rope, Turn::Forward);
        }
        pass.scale_queries(&mut q);
        if let Some(prefix) = &pass.prefix {
            prefix.write(self.index, &mut k, &mut v);
        }
        let shape = attn_shape(cfg, pass, self.window);
        let (attn, lse) = attend.attend(self.index, (&q, &k, &v), shape);
        let adapted = with_adaption(self.index, pass, &q, &attn, shape);
        let (q, k, v) = (kept(keep, q), kept(keep, k), kept(keep, v));
        let o_input = adapted.as_deref().unwrap_or(&attn);
        let (mut o, o_saved) = self.o_proj.project(o_input, n, Slot::O, context)?;
        drop(adapted);
        let attn = kept(keep, attn);
        let attn_out = norm_branch_output(&mut o, self.norms.attn_out.as_ref(), norm_ctx);
        let residual = cfg.scales.residual as f32;
        add_branch(x, &o, residual);
        drop(o);

        let x_mid = if keep { x.to_vec() } else { Vec::new() };
        let (input, mlp_in_rstd) = branch_input(x, self.norms.mlp_in.as_ref(), norm_ctx);
        let (gate_up, gate_up_saved) = self.gate_up.project(&input, n, Slot::GateUp, context)?;
        drop(input);
        let act = mlp_activation(cfg, &gate_up);
        let gate_up = kept(keep, gate_up);
        let (mut down, down_saved) = self.down_proj.project(&act, n, Slot::Down, context)?;
        drop(act);
        let mlp_out = norm_branch_output(&mut down, self.norms.mlp_out.as_ref(), norm_ctx);
        add_branch(x, &down, residual);
        Ok(Activations {
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
            attn_out: attn_out.filter(|_| keep),
            mlp_out: mlp_out.filter(|_| keep),
            saved: [qkv_saved, o_saved, gate_up_saved, down_saved],
        })
    }
}

impl<L: Backprop> Block<L> {
    /// From `dx`, the gradient of the block's output, computes the gradient of its input in place
    /// and accumulates the gradients of every trainable tensor, and into `grads` those of what the
    /// pass carried (prefix tuning's keys and values, LLaMA-Adapter's prompt). `pass` and
    /// `segment_ids` are the forward's.
    pub fn backward(
        &mut self,
        cfg: &ModelConfig,
        dx: &mut [f32],
        a: Activations<L::Saved>,
        (pass, segment_ids): (&Pass, Option<&[u32]>),
        grads: &mut PassGrads,
    ) {
        debug_assert!(pass.logn.is_none(), "logn scaling is inference-only");
        let norm_ctx = NormCtx::of(cfg);
        let (nh, nkv, hd) = heads(cfg);
        let n = pass.batch * pass.seq;
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
        let shape = attn_shape(cfg, pass, self.window);
        let adapted = with_adaption(self.index, pass, &a.q, &a.attn, shape);
        let o_input = adapted.as_deref().unwrap_or(&a.attn);
        self.o_proj.backward(&dout, o_input, &o_saved, &mut dattn);
        drop((dout, adapted));
        let (mut dq, mut dk, mut dv) = (
            vec![0.0; a.q.len()],
            vec![0.0; a.k.len()],
            vec![0.0; a.v.len()],
        );
        let inputs = AttnInputs {
            q: &a.q,
            k: &a.k,
            v: &a.v,
            segment_ids,
        };
        let attn_grads = AttnGrads {
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
        };
        attention::backward(shape, inputs, &a.attn, &a.lse, &dattn, attn_grads);
        if let (Some(prefix), Some(dprefix)) = (&pass.prefix, grads.prefix.as_mut()) {
            prefix.take_grads(self.index, &mut dk, &mut dv, dprefix);
        }
        if let Some(prompt) = pass.adaption_layer(self.index).and_then(|p| p[0]) {
            let layer = adaption::backward(&a.q, &dattn, &mut dq, &prompt, shape);
            grads.adaption.insert(self.index, layer);
        }
        if self.rotary {
            pass.rotate(
                &mut dq,
                rope_shape(nh, cfg),
                self.local_rope,
                Turn::Backward,
            );
            pass.rotate(
                &mut dk,
                rope_shape(nkv, cfg),
                self.local_rope,
                Turn::Backward,
            );
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
