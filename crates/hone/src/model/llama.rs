//! The Llama decoder (also Mistral and Qwen2): embeddings, N pre-norm blocks of grouped-query
//! attention and SwiGLU MLP, final RMSNorm, LM head. Inference forward pass with a KV cache.
//!
//! Weights are f32 candle tensors named as in HF checkpoints; `weights` maps other formats to them.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, D};
use candle_nn::ops::rms_norm;

use super::config::ModelConfig;
use super::few_rows;
use super::kv_cache::{Cache, CachedAttnShape};
use super::rope;
use crate::train::kernels::attention::{self, AttnInputs, AttnShape};
use crate::train::kernels::cross_entropy::{self, CeShape, IGNORE_INDEX};
use crate::train::kernels::rope::{self as rope_kernel, RopeShape};
use crate::train::kernels::swiglu as swiglu_kernel;

/// `y = x Wᵀ + b`, with W stored `[out, in]` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// One Linear computing the given ones side by side (outputs concatenated in order).
    pub fn stack(parts: &[Linear]) -> Result<Linear> {
        let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight).collect();
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|l| l.bias.as_ref()).collect();
        Ok(Linear {
            weight: Tensor::cat(&weights, 0)?,
            bias: biases.map(|b| Tensor::cat(&b, 0)).transpose()?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, inner) = (x.elem_count() / x.dim(D::Minus1)?, x.dim(D::Minus1)?);
        let mut out_shape = x.dims().to_vec();
        *out_shape.last_mut().expect("x has a last dim") = self.weight.dim(0)?;
        let x = x.reshape((rows, inner))?;
        let y = if rows <= few_rows::MAX_ROWS && x.device().is_cpu() {
            let out = self.weight.dim(0)?;
            let y = with_f32_slice(&x.contiguous()?, |x| {
                with_f32_slice(&self.weight, |w| {
                    Ok(few_rows::matmul_transposed(x, w, rows, inner, out))
                })
            })
            .map_err(candle_core::Error::wrap)?;
            Tensor::from_vec(y, (rows, out), x.device())?
        } else {
            x.matmul(&self.weight.t()?)?
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        y.reshape(out_shape)
    }
}

/// q, k and v projections run as one matrix product (their weights stacked by rows): one larger
/// product keeps the matmul kernel busier than three narrow ones.
struct Attention {
    qkv_proj: Linear,
    o_proj: Linear,
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

struct Block {
    input_layernorm: Tensor,
    attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
}

pub struct Llama {
    cfg: ModelConfig,
    embed_tokens: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Tensor,
    /// Rotary tables, `[positions, head_dim / 2]`.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    device: Device,
}

impl Llama {
    /// Build the model from f32 tensors with HF names, checking every shape against the config.
    pub fn from_weights(
        cfg: ModelConfig,
        mut w: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let q_dim = cfg.num_attention_heads * cfg.head_dim;
        let kv_dim = cfg.num_key_value_heads * cfg.head_dim;
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = w
                .remove(name)
                .with_context(|| format!("tensor `{name}` is missing"))?;
            if t.dims() != shape {
                bail!(
                    "tensor `{name}` has shape {:?} but the config implies {shape:?}",
                    t.dims()
                );
            }
            Ok(t)
        };
        let embed_tokens = take("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut linear = |name: &str, out: usize, inp: usize, bias: bool| -> Result<Linear> {
                Ok(Linear {
                    weight: take(&format!("{p}.{name}.weight"), &[out, inp])?,
                    bias: if bias {
                        Some(take(&format!("{p}.{name}.bias"), &[out])?)
                    } else {
                        None
                    },
                })
            };
            let attn = Attention {
                qkv_proj: Linear::stack(&[
                    linear("self_attn.q_proj", q_dim, h, cfg.attention_bias)?,
                    linear("self_attn.k_proj", kv_dim, h, cfg.attention_bias)?,
                    linear("self_attn.v_proj", kv_dim, h, cfg.attention_bias)?,
                ])?,
                o_proj: linear("self_attn.o_proj", h, q_dim, cfg.o_proj_bias)?,
            };
            let mlp = Mlp {
                gate_proj: linear("mlp.gate_proj", i, h, cfg.mlp_bias)?,
                up_proj: linear("mlp.up_proj", i, h, cfg.mlp_bias)?,
                down_proj: linear("mlp.down_proj", h, i, cfg.mlp_bias)?,
            };
            blocks.push(Block {
                input_layernorm: take(&format!("{p}.input_layernorm.weight"), &[h])?,
                attn,
                post_attention_layernorm: take(
                    &format!("{p}.post_attention_layernorm.weight"),
                    &[h],
                )?,
                mlp,
            });
        }
        let norm = take("model.norm.weight", &[h])?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            take("lm_head.weight", &[cfg.vocab_size, h])?
        };
        let n_positions = cfg.max_position_embeddings.max(1);
        let (rope_cos, rope_sin) = rope::table_vecs(&cfg, n_positions);
        Ok(Llama {
            cfg,
            embed_tokens,
            blocks,
            norm,
            lm_head,
            rope_cos,
            rope_sin,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new_cache(&self) -> Cache {
        self.new_batch_cache(Vec::new())
    }

    /// A cache for a batch of left-padded rows, `left_pad[r]` padding positions in row `r`.
    pub fn new_batch_cache(&self, left_pad: Vec<usize>) -> Cache {
        Cache::new(self.cfg.num_hidden_layers, left_pad)
    }

    /// Logits `[batch, seq, vocab]` for token ids `[batch, seq]`, continuing from `cache` when given.
    pub fn forward(&self, ids: &Tensor, cache: Option<&mut Cache>) -> Result<Tensor> {
        let hidden = self.hidden_states(ids, cache)?;
        self.logits(&hidden)
    }

    /// The LM head: logits `[..., vocab]` for final-norm hidden states `[..., hidden]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let head = Linear {
            weight: self.lm_head.clone(),
            bias: None,
        };
        Ok(head.forward(hidden)?)
    }

    /// Summed next-token negative log-likelihood over `ids` `[batch, seq]` (every position but the
    /// last of each row predicts the next token) and the number of predictions. The LM head is fused
    /// with the loss: logits are computed a chunk of rows at a time and never held whole.
    pub fn next_token_nll(&self, ids: &Tensor) -> Result<(f64, usize)> {
        let ids_flat = ids.flatten_all()?.to_vec1::<u32>()?;
        let labels: Vec<i64> = ids_flat.into_iter().map(i64::from).collect();
        self.labelled_nll(ids, &labels)
    }

    /// [`Self::next_token_nll`] over the labelled positions only: `labels` is aligned with `ids`
    /// `[batch, seq]` (flattened) as in Hugging Face's causal-LM loss, where position `i`'s label is
    /// the token predicted from positions `..i` and [`IGNORE_INDEX`] marks a token not scored.
    pub fn labelled_nll(&self, ids: &Tensor, labels: &[i64]) -> Result<(f64, usize)> {
        let (b, t) = ids.dims2()?;
        if labels.len() != b * t {
            bail!("{} labels for {b}×{t} token ids", labels.len());
        }
        let hidden = self
            .hidden_states(ids, None)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        // Position i predicts label i + 1; a row's last position predicts nothing.
        let labels: Vec<i64> = labels
            .chunks(t)
            .flat_map(|row| row[1..].iter().copied().chain([IGNORE_INDEX]))
            .collect();
        let shape = CeShape {
            n: b * t,
            hidden: self.cfg.hidden_size,
            vocab: self.cfg.vocab_size,
            chunk: 256,
        };
        with_f32_slice(&self.lm_head, |w| {
            cross_entropy::loss(&hidden, w, &labels, shape)
        })
    }

    /// Final-norm hidden states `[batch, seq, hidden]` (the LM head's input).
    pub fn hidden_states(&self, ids: &Tensor, mut cache: Option<&mut Cache>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let start = cache.as_ref().map_or(0, |c| c.len());
        if start + t > self.cfg.max_position_embeddings {
            bail!(
                "sequence of {} tokens exceeds the model's context of {} (max_position_embeddings)",
                start + t,
                self.cfg.max_position_embeddings
            );
        }
        let vocab = self.cfg.vocab_size as u32;
        let flat_ids = ids.flatten_all()?;
        if let Some(bad) = flat_ids.to_vec1::<u32>()?.into_iter().find(|&i| i >= vocab) {
            bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        let mut x =
            self.embed_tokens
                .index_select(&flat_ids, 0)?
                .reshape((b, t, self.cfg.hidden_size))?;
        let eps = self.cfg.rms_norm_eps as f32;
        for (l, block) in self.blocks.iter().enumerate() {
            let normed = rms_norm(&x, &block.input_layernorm, eps)?;
            let attn = self.attention(&block.attn, &normed, start, l, cache.as_deref_mut())?;
            x = (x + attn)?;
            let normed = rms_norm(&x, &block.post_attention_layernorm, eps)?;
            let mlp = &block.mlp;
            let gated = swiglu(
                &mlp.gate_proj.forward(&normed)?,
                &mlp.up_proj.forward(&normed)?,
            )?;
            x = (x + mlp.down_proj.forward(&gated)?)?;
        }
        Ok(rms_norm(&x, &self.norm, eps)?)
    }

    /// Self-attention of a block: over whole sequences from position 0 through the training
    /// engine's fused causal kernel (no cache), or over the cache for tokens at `start..`.
    fn attention(
        &self,
        a: &Attention,
        x: &Tensor,
        start: usize,
        layer: usize,
        cache: Option<&mut Cache>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
        );
        let qkv = a.qkv_proj.forward(x)?.flatten_all()?.to_vec1::<f32>()?;
        let (q, k, v) = self.split_and_rotate(&qkv, b, t, start);
        let out = match cache {
            Some(cache) => {
                let shape = CachedAttnShape {
                    rows: b,
                    t,
                    heads: nh,
                    kv_heads: nkv,
                    head_dim: hd,
                };
                cache.attend(layer, &q, &k, &v, shape)
            }
            None => {
                let shape = AttnShape {
                    batch: b,
                    seq: t,
                    heads: nh,
                    kv_heads: nkv,
                    head_dim: hd,
                };
                let mut out = vec![0f32; b * t * nh * hd];
                let mut lse = vec![0f32; b * nh * t];
                let inputs = AttnInputs {
                    q: &q,
                    k: &k,
                    v: &v,
                    segment_ids: None,
                };
                attention::forward(shape, inputs, &mut out, &mut lse);
                out
            }
        };
        let out = Tensor::from_vec(out, (b, t, nh * hd), &self.device)?;
        Ok(a.o_proj.forward(&out)?)
    }

    /// The stacked projection's `[q | k | v]` columns as separate token-major arrays, q and k
    /// rotated for positions `start..start + t` in every row.
    fn split_and_rotate(
        &self,
        qkv: &[f32],
        b: usize,
        t: usize,
        start: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
        );
        let row = (nh + 2 * nkv) * hd;
        let column = |from: usize, width: usize| -> Vec<f32> {
            qkv.chunks_exact(row)
                .flat_map(|r| &r[from..from + width])
                .copied()
                .collect()
        };
        let (mut q, mut k) = (column(0, nh * hd), column(nh * hd, nkv * hd));
        let v = column((nh + nkv) * hd, nkv * hd);
        let positions: Vec<u32> = (0..b)
            .flat_map(|_| (start..start + t).map(|p| p as u32))
            .collect();
        let (cos, sin) = (&self.rope_cos, &self.rope_sin);
        let shape = |heads| RopeShape {
            heads,
            head_dim: hd,
        };
        rope_kernel::forward(&mut q, &positions, shape(nh), cos, sin);
        rope_kernel::forward(&mut k, &positions, shape(nkv), cos, sin);
        (q, k, v)
    }
}

/// `silu(gate) · up` through the vectorized training kernel (candle's silu calls libm per element).
fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let mut out = vec![0f32; gate.elem_count()];
    with_f32_slice(gate, |g| {
        with_f32_slice(up, |u| {
            swiglu_kernel::forward(g, u, &mut out);
            Ok(())
        })
    })?;
    Ok(Tensor::from_vec(out, gate.shape(), gate.device())?)
}

/// Run `f` on the f32 elements of a contiguous CPU tensor, without copying them out.
fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        bail!("the fused kernels run on CPU tensors");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("the fused kernels need a contiguous tensor");
    };
    f(&cpu.as_slice::<f32>()?[start..end])
}
