//! Prompt tuning, P-tuning and prefix tuning in training: the virtual tokens every sequence of a
//! batch starts with (PEFT's `PromptEmbedding`), or, for P-tuning, the output of a small MLP
//! encoder over them (PEFT's `PromptEncoder` with `encoder_reparameterization_type: MLP`), or for
//! prefix tuning every layer's keys and values for them (PEFT's `PrefixEncoder`: a table, or with
//! `prefix_projection` the output of a two-layer tanh MLP over smaller embeddings), forward and
//! backward side by side. The model's own weights stay frozen; only these tensors train.
//!
//! What is saved is what PEFT saves: the encoder's output, as `prompt_embeddings`. Hone's
//! checkpoints keep the encoder too, so a resumed run continues it.

use std::iter::repeat_n;

use anyhow::{ensure, Result};
use rand::{rngs::StdRng, Rng, SeedableRng};

use crate::adapters::PromptMethod;
use crate::data::Batch;
use crate::kernels::cross_entropy::IGNORE_INDEX;
use crate::kernels::matmul::{matmul, MatMut, MatRef, Threads};
use crate::model::norm::Tensor1;

/// A Linear layer of P-tuning's encoder: `y = x Wᵀ + b`, `W [out, in]`.
#[derive(Clone, Debug)]
pub struct Dense {
    pub weight: Tensor1,
    pub bias: Tensor1,
    pub in_features: usize,
    pub out_features: usize,
}

/// The trained virtual tokens of a run.
#[derive(Clone, Debug)]
pub struct VirtualPrompt {
    pub method: PromptMethod,
    /// `[n, width]`: the virtual tokens (prompt tuning), the prefix's keys and values (prefix
    /// tuning), or the encoder's input.
    pub embedding: Tensor1,
    /// The encoder, its layers in order, an activation between each two: P-tuning's `mlp_head`
    /// (Linear(d, h), ReLU, Linear(h, h), ReLU, Linear(h, d)) or prefix tuning's `transform`
    /// (Linear(d, h), Tanh, Linear(h, layers · 2 · d)); empty without one.
    pub encoder: Vec<Dense>,
    pub n: usize,
    /// The width of `embedding`'s rows.
    pub width: usize,
}

/// What the encoder's forward keeps: each layer's input (the first is the embedding itself).
pub struct EncoderSaved {
    inputs: Vec<Vec<f32>>,
}

/// N(0, 1) draws (Box–Muller), the start of PEFT's `nn.Embedding`.
pub fn normal(n: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            let v: f64 = rng.random_range(0.0..1.0);
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

impl Dense {
    /// PyTorch's `nn.Linear` start: weight and bias from U(−1/√in, 1/√in).
    fn init(in_features: usize, out_features: usize, rng: &mut StdRng) -> Dense {
        let bound = 1.0 / (in_features as f32).sqrt();
        let mut draw = |n: usize| -> Tensor1 {
            let values = (0..n).map(|_| rng.random_range(-bound..bound)).collect();
            Tensor1::new(values, true)
        };
        Dense {
            weight: draw(out_features * in_features),
            bias: draw(out_features),
            in_features,
            out_features,
        }
    }

    fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y: Vec<f32> = self.bias.value.repeat(rows);
        matmul(
            MatMut::new(&mut y, rows, self.out_features),
            MatRef::new(x, rows, self.in_features),
            MatRef::new(&self.weight.value, self.out_features, self.in_features).t(),
            true,
            Threads::Pool,
        );
        y
    }

    /// `dx` for `dy`, accumulating the weight and bias gradients.
    fn backward(&mut self, dy: &[f32], x: &[f32], rows: usize) -> Vec<f32> {
        let (inp, out) = (self.in_features, self.out_features);
        if let Some(grad) = &mut self.weight.grad {
            matmul(
                MatMut::new(grad, out, inp),
                MatRef::new(dy, rows, out).t(),
                MatRef::new(x, rows, inp),
                true,
                Threads::Pool,
            );
        }
        if let Some(grad) = &mut self.bias.grad {
            for row in dy.chunks_exact(out) {
                grad.iter_mut().zip(row).for_each(|(g, d)| *g += d);
            }
        }
        let mut dx = vec![0.0; rows * inp];
        matmul(
            MatMut::new(&mut dx, rows, inp),
            MatRef::new(dy, rows, out),
            MatRef::new(&self.weight.value, out, inp),
            false,
            Threads::Pool,
        );
        dx
    }
}

impl VirtualPrompt {
    /// A new prompt of `n` virtual tokens `width` wide starting from `start` (`[n, width]`), with
    /// an encoder through `encoder_widths` (its layers' input and output widths in turn: empty,
    /// or at least two) drawn from `seed` as `nn.Linear` layers start.
    pub fn new(
        method: PromptMethod,
        start: Vec<f32>,
        (n, width): (usize, usize),
        encoder_widths: &[usize],
        seed: u64,
    ) -> VirtualPrompt {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5052_4f4d_5054);
        let encoder = encoder_widths
            .windows(2)
            .map(|w| Dense::init(w[0], w[1], &mut rng))
            .collect();
        VirtualPrompt {
            method,
            embedding: Tensor1::new(start, true),
            encoder,
            n,
            width,
        }
    }

    /// PEFT's name of the encoder's module, under `prompt_encoder.`.
    pub fn encoder_name(&self) -> &'static str {
        match self.method {
            PromptMethod::PrefixTuning => "transform",
            _ => "mlp_head",
        }
    }

    /// Whether the prompt is prefix tuning's keys and values rather than tokens.
    pub fn is_prefix(&self) -> bool {
        self.method == PromptMethod::PrefixTuning
    }

    /// The activation between two encoder layers: prefix tuning's tanh, P-tuning's ReLU.
    fn activate(&self, mut x: Vec<f32>) -> Vec<f32> {
        match self.method {
            PromptMethod::PrefixTuning => x.iter_mut().for_each(|v| *v = v.tanh()),
            _ => x.iter_mut().for_each(|v| *v = v.max(0.0)),
        }
        x
    }

    /// The gradient through [`Self::activate`] from its output `y`: tanh' = 1 − y², and ReLU
    /// passes it on exactly where its output is positive.
    fn activate_backward(&self, mut dy: Vec<f32>, y: &[f32]) -> Vec<f32> {
        let tanh = self.method == PromptMethod::PrefixTuning;
        for (d, &y) in dy.iter_mut().zip(y) {
            *d = match tanh {
                true => *d * (1.0 - y * y),
                false if y > 0.0 => *d,
                false => 0.0,
            };
        }
        dy
    }

    /// The virtual tokens as the model reads them (`[n, hidden]` embeddings, or prefix tuning's
    /// `[n, layers · 2 · kv width]` table), and what the backward needs.
    pub fn forward(&self) -> (Vec<f32>, Option<EncoderSaved>) {
        let Some((last, hidden)) = self.encoder.split_last() else {
            return (self.embedding.value.clone(), None);
        };
        let mut inputs = vec![self.embedding.value.clone()];
        for layer in hidden {
            let x = inputs.last().expect("the embedding at least");
            let y = self.activate(layer.forward(x, self.n));
            inputs.push(y);
        }
        let out = last.forward(inputs.last().expect("the embedding at least"), self.n);
        (out, Some(EncoderSaved { inputs }))
    }

    /// Accumulates the gradients of the trained tensors from `dprompt`, that of the forward's
    /// output.
    pub fn backward(&mut self, dprompt: &[f32], saved: Option<&EncoderSaved>) {
        let Some(saved) = saved.filter(|_| !self.encoder.is_empty()) else {
            add_to(self.embedding.grad.as_mut(), dprompt);
            return;
        };
        let n = self.n;
        let mut layers = std::mem::take(&mut self.encoder);
        let mut d = dprompt.to_vec();
        for (l, layer) in layers.iter_mut().enumerate().rev() {
            let x = &saved.inputs[l];
            d = layer.backward(&d, x, n);
            if l > 0 {
                d = self.activate_backward(d, x);
            }
        }
        self.encoder = layers;
        add_to(self.embedding.grad.as_mut(), &d);
    }
}

fn add_to(grad: Option<&mut Vec<f32>>, values: &[f32]) {
    if let Some(grad) = grad {
        grad.iter_mut().zip(values).for_each(|(g, v)| *g += v);
    }
}

/// A batch with the virtual tokens' places, and where they are.
pub struct Prompted {
    pub batch: Batch,
    /// The flat token index where each copy of the virtual tokens starts.
    pub starts: Vec<usize>,
}

/// `batch` with every example preceded by `n` virtual tokens, as PEFT's forward prepends them to
/// each sequence: a placeholder id (their embeddings are written over, [`insert`]), no label,
/// positions 0..n, the example's own positions moved up by n. An example is a row, or each
/// segment of a padding-free row (one row of several examples). Under prefix tuning (`prefix`)
/// the placeholders only hold the prefix's keys and values ([`crate::model::attend::PrefixKv`]),
/// so the last of them predicts nothing: each example's first token gets no label, as in PEFT,
/// where the logits start at it.
pub fn prompted_batch(batch: &Batch, n: usize, prefix: bool) -> Result<Prompted> {
    let (b, t) = (batch.batch, batch.seq);
    ensure!(
        batch.segment_ids.is_none() || b == 1,
        "prompt learning (prompt tuning, P-tuning, prefix tuning) cannot train on packed rows (packing: false)"
    );
    let segment = |i: usize| {
        batch
            .segment_ids
            .as_ref()
            .map_or(i / t.max(1), |s| s[i] as usize)
    };
    let mut out = Batch {
        batch: b,
        seq: 0,
        input_ids: Vec::new(),
        labels: Vec::new(),
        position_ids: Vec::new(),
        segment_ids: batch.segment_ids.as_ref().map(|_| Vec::new()),
    };
    let mut starts = Vec::new();
    for i in 0..b * t {
        if i % t.max(1) == 0 || segment(i) != segment(i - 1) {
            starts.push(out.input_ids.len());
            out.input_ids.extend(repeat_n(0, n));
            out.labels.extend(repeat_n(IGNORE_INDEX, n));
            out.position_ids.extend(0..n as u32);
            if let Some(ids) = &mut out.segment_ids {
                ids.extend(repeat_n(segment(i) as u32, n));
            }
            out.labels.push(match prefix {
                true => IGNORE_INDEX,
                false => batch.labels[i],
            });
        } else {
            out.labels.push(batch.labels[i]);
        }
        out.input_ids.push(batch.input_ids[i]);
        out.position_ids.push(batch.position_ids[i] + n as u32);
        if let Some(ids) = &mut out.segment_ids {
            ids.push(segment(i) as u32);
        }
    }
    out.seq = out.input_ids.len() / b.max(1);
    Ok(Prompted { batch: out, starts })
}

/// Prefix tuning's places in a prompted batch: each placeholder's token index and which virtual
/// token it is, from where each copy of the `n` starts.
pub fn places(starts: &[usize], n: usize) -> Vec<(usize, usize)> {
    starts
        .iter()
        .flat_map(|&start| (0..n).map(move |j| (start + j, j)))
        .collect()
}

/// Writes the virtual tokens `prompt` (`[n, hidden]`) at each of `starts` (flat token indices)
/// of `x` (`[tokens, hidden]`).
pub fn insert(x: &mut [f32], prompt: &[f32], starts: &[usize], hidden: usize) {
    for &start in starts {
        x[start * hidden..start * hidden + prompt.len()].copy_from_slice(prompt);
    }
}

/// The gradient of the virtual tokens (`[n, hidden]`) from `dx`, that of every token's input:
/// summed over the places they were written to.
pub fn gather_grad(dx: &[f32], starts: &[usize], n: usize, hidden: usize) -> Vec<f32> {
    let mut grad = vec![0.0; n * hidden];
    for &start in starts {
        let rows = &dx[start * hidden..(start + n) * hidden];
        grad.iter_mut().zip(rows).for_each(|(g, d)| *g += d);
    }
    grad
}
