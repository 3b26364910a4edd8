//! The Llama decoder and its families (Mistral, Qwen2/3, SmolLM3, Granite, OLMo 2, Gemma 2/3,
//! Phi-3, GLM-4, StarCoder2, ChatGLM2/3, Baichuan 2, Qwen v1 as `ModelConfig`'s switches, their
//! linear layers from `layout`):
//! embeddings, N blocks of grouped-query attention and an MLP with their norms, final norm, LM
//! head. Inference forward pass with a KV cache.
//!
//! Weights come named as in HF checkpoints (`weights` maps other formats to these names), each
//! either f32 or in its stored type (`linear::Weight`); norms are f32.

use std::collections::HashMap;

use anyhow::{bail, Context as _, Result};
use candle_core::{Device, Tensor};
use candle_nn::ops::rms_norm;

use super::config::{BlockNorm, ModelConfig};
use super::kv_cache::{Cache, CachedAttnShape};
use super::layout::{self, block_linears, slot_linears, Slot, SLOTS};
use super::linear::{with_f32_slice, Linear, LoraDelta, PartUpdate, Projection, RowsLora, Weight};
use super::rope::{ntk_alpha, RopeSet, RopeTables};
use super::weights::norm_bias_name;
use crate::adapters::ia3::SHARED_INPUT_SCALING;
use crate::adapters::merge::check_fits;
use crate::adapters::Adapter;
use crate::kernels::attention::{self, AttnInputs, AttnShape};
use crate::kernels::cross_entropy::{self, CeShape, IGNORE_INDEX};
use crate::kernels::layernorm;
use crate::kernels::matrix::MatrixRef;
use crate::kernels::rmsnorm as rmsnorm_kernel;
use crate::kernels::rope::{self as rope_kernel, RopeShape};

/// q, k and v projections run as one product, as do gate and up: one larger product keeps the
/// matmul kernels busier than several narrow ones.
struct Attention {
    qkv_proj: Linear,
    o_proj: Linear,
    /// RMSNorm weights of q and k (per head, `[head_dim]`: Qwen3, Gemma 3; or as wide as the
    /// projection: OLMo 2) with the family's norm offset, applied before the rotary embedding.
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
}

struct Mlp {
    gate_up_proj: Linear,
    down_proj: Linear,
}

/// A block or final norm: an RMSNorm's weight, with the family's offset added (Gemma scales by
/// `1 + w`), or a LayerNorm's weight and bias (StarCoder2).
enum Norm {
    Rms(Tensor),
    /// Weight and bias as the LayerNorm kernel reads them.
    Layer {
        w: Vec<f32>,
        b: Vec<f32>,
    },
}

impl Norm {
    fn apply(&self, x: &Tensor, eps: f32) -> Result<Tensor> {
        let (w, b) = match self {
            Norm::Rms(w) => return Ok(rms_norm(x, w, eps)?),
            Norm::Layer { w, b } => (w, b),
        };
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        let mut y = vec![0f32; values.len()];
        let mut rstd = vec![0f32; values.len() / w.len()];
        layernorm::forward(&values, w, b, eps, &mut y, &mut rstd);
        Ok(Tensor::from_vec(y, x.shape(), x.device())?)
    }
}

/// A block's norms by position (those its family has, `norm_placement`).
#[derive(Default)]
struct Norms {
    attn_in: Option<Norm>,
    attn_out: Option<Norm>,
    mlp_in: Option<Norm>,
    mlp_out: Option<Norm>,
}

impl Norms {
    fn slot(&mut self, position: BlockNorm) -> &mut Option<Norm> {
        match position {
            BlockNorm::AttnIn => &mut self.attn_in,
            BlockNorm::AttnOut => &mut self.attn_out,
            BlockNorm::MlpIn => &mut self.mlp_in,
            BlockNorm::MlpOut => &mut self.mlp_out,
        }
    }
}

struct Block {
    norms: Norms,
    attn: Attention,
    mlp: Mlp,
}

impl Block {
    fn linear(&self, slot: Slot) -> &Linear {
        match slot {
            Slot::Qkv => &self.attn.qkv_proj,
            Slot::O => &self.attn.o_proj,
            Slot::GateUp => &self.mlp.gate_up_proj,
            Slot::Down => &self.mlp.down_proj,
        }
    }
}

/// One adapter's updates laid out as a model's layers ([`Llama::lora_set`]): per block and
/// linear layer, one update per projection. Built once when a server loads an adapter, then
/// applied to whichever rows of a batch ask for it.
pub struct LoraSet {
    blocks: Vec<[Vec<PartUpdate>; 4]>,
    lm_head: Vec<PartUpdate>,
}

impl LoraSet {
    fn part_mut(&mut self, (layer, slot, part): (usize, Option<Slot>, usize)) -> &mut PartUpdate {
        match slot {
            Some(slot) => &mut self.blocks[layer][slot as usize][part],
            None => &mut self.lm_head[part],
        }
    }
}

/// Where the rows of a forward pass are and how their attention reads keys and values.
enum Attend<'c, 'd> {
    /// Whole sequences from position 0, no cache.
    Whole,
    /// One cache for all rows, which sit at the same position.
    Batch(&'c mut Cache),
    /// Each row one token, continuing its own cache.
    PerRow(&'c mut [&'d mut Cache]),
}

impl Attend<'_, '_> {
    /// The position of every token of `[b, t]`.
    fn positions(&self, b: usize, t: usize) -> Vec<u32> {
        let start = |r: usize| match self {
            Attend::Whole => 0,
            Attend::Batch(cache) => cache.len(),
            Attend::PerRow(caches) => caches[r].len(),
        };
        (0..b)
            .flat_map(|r| (start(r)..start(r) + t).map(|p| p as u32))
            .collect()
    }

    /// How many leading positions of row `r` are padding.
    fn left_pad(&self, r: usize) -> usize {
        match self {
            Attend::Whole => 0,
            Attend::Batch(cache) => cache.left_pad(r),
            Attend::PerRow(caches) => caches[r].left_pad(0),
        }
    }
}

/// The batch rows of each adapter in `adapters` (one entry per row; None: the base alone).
fn group_rows<'a>(adapters: &[Option<&'a LoraSet>]) -> Vec<(Vec<usize>, &'a LoraSet)> {
    let mut groups: Vec<(Vec<usize>, &LoraSet)> = Vec::new();
    for (row, set) in adapters.iter().enumerate() {
        let Some(set) = set else { continue };
        match groups.iter_mut().find(|(_, s)| std::ptr::eq(*s, *set)) {
            Some((rows, _)) => rows.push(row),
            None => groups.push((vec![row], set)),
        }
    }
    groups
}

/// Each group's token rows, `t` tokens per batch row.
fn token_rows(groups: &[(Vec<usize>, &LoraSet)], t: usize) -> Vec<Vec<usize>> {
    groups
        .iter()
        .map(|(rows, _)| rows.iter().flat_map(|&r| r * t..(r + 1) * t).collect())
        .collect()
}

/// Each group's updates of one linear layer (`parts` picks it from a set), as the product takes
/// them.
fn row_updates<'a>(
    rows: &'a [Vec<usize>],
    groups: &[(Vec<usize>, &'a LoraSet)],
    parts: impl Fn(&'a LoraSet) -> &'a [PartUpdate],
) -> Vec<RowsLora<'a>> {
    rows.iter()
        .zip(groups)
        .map(|(rows, (_, set))| RowsLora {
            rows,
            parts: parts(set),
        })
        .collect()
}

pub struct Llama {
    cfg: ModelConfig,
    embed_tokens: Weight,
    blocks: Vec<Block>,
    norm: Norm,
    lm_head: Linear,
    rope: RopeTables,
    device: Device,
}

impl Llama {
    /// Build the model from f32 tensors with HF names (the exact path), checking every shape
    /// against the config.
    pub fn from_weights(
        cfg: ModelConfig,
        weights: HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let weights = weights
            .into_iter()
            .map(|(n, t)| (n, Weight::F32(t)))
            .collect();
        Self::from_stored(cfg, weights, None, device)
    }

    /// Build the model from weights with HF names, each f32 or in its stored type, checking every
    /// shape against the config. `adapter`'s LoRA updates, checked to fit with
    /// [`crate::adapters::merge::check_fits`], are kept unmerged beside the weights.
    pub fn from_stored(
        cfg: ModelConfig,
        weights: HashMap<String, Weight>,
        adapter: Option<&Adapter>,
        device: &Device,
    ) -> Result<Self> {
        let mut weights = weights;
        if cfg.norm_head {
            super::weights::normalize_head(&mut weights)?;
        }
        let mut parts = Parts { weights, adapter };
        let h = cfg.hidden_size;
        let embed_tokens = parts.take("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let qk_norm = parts.qk_norm(&p, &cfg)?;
            let mut linear = |slot: Slot| -> Result<Linear> {
                let projections = slot_linears(&cfg, slot).into_iter().map(|l| {
                    let name = format!("{p}.{}", l.name);
                    parts.projection(&name, l.out_features, l.in_features, l.bias)
                });
                Linear::new(projections.collect::<Result<_>>()?)
            };
            let attn = Attention {
                qkv_proj: linear(Slot::Qkv)?,
                o_proj: linear(Slot::O)?,
                qk_norm,
            };
            let mlp = Mlp {
                gate_up_proj: linear(Slot::GateUp)?,
                down_proj: linear(Slot::Down)?,
            };
            let mut norms = Norms::default();
            for &(position, name, _) in cfg.norm_placement.norms() {
                let w = parts.take_norm(&format!("{p}.{name}.weight"), &[h], &cfg)?;
                *norms.slot(position) = Some(w);
            }
            blocks.push(Block { norms, attn, mlp });
        }
        let norm = parts.take_norm("model.norm.weight", &[h], &cfg)?;
        let lm_head = if cfg.tie_word_embeddings {
            Projection {
                weight: embed_tokens.clone(),
                bias: None,
                lora: None,
                ia3: None,
            }
        } else {
            parts.projection("lm_head", cfg.vocab_size, h, false)?
        };
        let rope = RopeTables::new(&cfg, cfg.max_position_embeddings.max(1));
        Ok(Llama {
            cfg,
            embed_tokens,
            blocks,
            norm,
            lm_head: Linear::new(vec![lm_head])?,
            rope,
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

    /// The LM head: logits `[..., vocab]` for final-norm hidden states `[..., hidden]`, soft-capped
    /// when the family caps them.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = self.lm_head.forward(hidden)?;
        let Some(cap) = self.cfg.final_softcap else {
            return Ok(logits);
        };
        let mut values = logits.flatten_all()?.to_vec1::<f32>()?;
        cross_entropy::softcap(&mut values, cap);
        Ok(Tensor::from_vec(values, logits.shape(), logits.device())?)
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
            softcap: self.cfg.final_softcap,
        };
        match self.lm_head.plain_f32_weight() {
            Some(w) => with_f32_slice(w, |values| {
                let head = MatrixRef::F32 {
                    values,
                    cols: shape.hidden,
                };
                cross_entropy::loss(&hidden, head, &labels, shape)
            }),
            None => self.chunked_nll(&hidden, &labels, shape),
        }
    }

    /// The labelled positions' summed NLL through the LM head's own product (a stored-type or
    /// adapted head), a chunk of labelled rows at a time so the logits are never held whole.
    fn chunked_nll(&self, hidden: &[f32], labels: &[i64], shape: CeShape) -> Result<(f64, usize)> {
        let labelled: Vec<usize> = (0..shape.n)
            .filter(|&i| labels[i] != IGNORE_INDEX)
            .collect();
        let mut total = 0f64;
        for rows in labelled.chunks(shape.chunk) {
            let x: Vec<f32> = rows
                .iter()
                .flat_map(|&r| &hidden[r * shape.hidden..(r + 1) * shape.hidden])
                .copied()
                .collect();
            let mut logits = self.lm_head.forward_rows(&x, rows.len())?;
            if let Some(cap) = self.cfg.final_softcap {
                cross_entropy::softcap(&mut logits, cap);
            }
            for (&r, row) in rows.iter().zip(logits.chunks_exact(shape.vocab)) {
                let label = usize::try_from(labels[r])
                    .ok()
                    .filter(|&l| l < shape.vocab)
                    .with_context(|| format!("label {} is outside the vocabulary", labels[r]))?;
                total += cross_entropy::row_loss(row, label);
            }
        }
        Ok((total, labelled.len()))
    }

    /// Final-norm hidden states `[batch, seq, hidden]`, divided by the family's logit scaling: the
    /// LM head's input.
    pub fn hidden_states(&self, ids: &Tensor, cache: Option<&mut Cache>) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let ids = ids.flatten_all()?.to_vec1::<u32>()?;
        let mut context = match cache {
            Some(cache) => Attend::Batch(cache),
            None => Attend::Whole,
        };
        self.run_blocks(&ids, (b, t), &mut context, &[])
    }

    /// The final norm's output at the last of `ids` (transformers' last hidden state, before any
    /// logit scaling), with `adapter`'s updates when given: what a reward model's value head
    /// scores.
    pub fn last_hidden(&self, ids: &[u32], adapter: Option<&LoraSet>) -> Result<Vec<f32>> {
        if ids.is_empty() {
            bail!("nothing to score: no tokens");
        }
        let t = ids.len();
        let groups: Vec<(Vec<usize>, &LoraSet)> =
            adapter.map(|set| (vec![0], set)).into_iter().collect();
        let hidden = self.run_blocks(ids, (1, t), &mut Attend::Whole, &groups)?;
        let last = hidden
            .narrow(1, t - 1, 1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let scaling = self.cfg.scales.logits as f32;
        Ok(last.into_iter().map(|x| x * scaling).collect())
    }

    /// Feeds one sequence's tokens `ids` through the model, continuing its `cache`, with
    /// `adapter`'s updates when given; the last position's logits.
    pub fn prefill(
        &self,
        ids: &[u32],
        cache: &mut Cache,
        adapter: Option<&LoraSet>,
    ) -> Result<Vec<f32>> {
        if ids.is_empty() {
            bail!("nothing to prefill: no tokens");
        }
        let t = ids.len();
        let groups: Vec<(Vec<usize>, &LoraSet)> =
            adapter.map(|set| (vec![0], set)).into_iter().collect();
        let hidden = self.run_blocks(ids, (1, t), &mut Attend::Batch(cache), &groups)?;
        self.head_logits(&hidden.narrow(1, t - 1, 1)?, &groups)
    }

    /// One decoding step of sequences that each have their own cache (continuous batching: they
    /// joined at different times and sit at different positions). Row `r` feeds `tokens[r]` at
    /// its cache's next position, with the updates of `adapters[r]` when set, so requests for
    /// different adapters share every product with the base weights. Logits `[rows, vocab]`.
    pub fn decode_step(
        &self,
        tokens: &[u32],
        caches: &mut [&mut Cache],
        adapters: &[Option<&LoraSet>],
    ) -> Result<Vec<f32>> {
        if caches.len() != tokens.len() || adapters.len() != tokens.len() {
            bail!(
                "{} tokens for {} caches and {} adapter choices",
                tokens.len(),
                caches.len(),
                adapters.len()
            );
        }
        let groups = group_rows(adapters);
        let mut context = Attend::PerRow(caches);
        let hidden = self.run_blocks(tokens, (tokens.len(), 1), &mut context, &groups)?;
        self.head_logits(&hidden, &groups)
    }

    /// Logits `[rows, vocab]` (flattened) of one position per row, `hidden` `[rows, 1, hidden]`,
    /// each group's LM-head update on its rows.
    fn head_logits(&self, hidden: &Tensor, groups: &[(Vec<usize>, &LoraSet)]) -> Result<Vec<f32>> {
        let rows = token_rows(groups, 1);
        let lora = row_updates(&rows, groups, |set| &set.lm_head);
        let logits = self.lm_head.forward_with(hidden, &lora)?;
        let mut values = logits.flatten_all()?.to_vec1::<f32>()?;
        if let Some(cap) = self.cfg.final_softcap {
            cross_entropy::softcap(&mut values, cap);
        }
        Ok(values)
    }

    /// The decoder blocks and final norm over `ids` (`[b, t]` flattened), attention as `context`
    /// says, each group's adapter updates on its rows; the LM head's input `[b, t, hidden]`.
    fn run_blocks(
        &self,
        ids: &[u32],
        (b, t): (usize, usize),
        context: &mut Attend,
        groups: &[(Vec<usize>, &LoraSet)],
    ) -> Result<Tensor> {
        let positions = context.positions(b, t);
        if let Some(&last) = positions.iter().max() {
            if last as usize >= self.cfg.max_position_embeddings {
                bail!(
                    "sequence of {} tokens exceeds the model's context of {} (max_position_embeddings)",
                    last + 1,
                    self.cfg.max_position_embeddings
                );
            }
        }
        let vocab = self.cfg.vocab_size as u32;
        if let Some(&bad) = ids.iter().find(|&&i| i >= vocab) {
            bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        let long_rope = self.prepare_caches(ids, (b, t), &positions, context, groups)?;
        let rope_sets = self.rope_sets(long_rope, t, context);
        let logn = self.logn_factors(&positions, t, context);
        let mut embedded = self.embed_tokens.gather_rows(ids)?;
        scale_in_place(&mut embedded, self.cfg.scales.embedding);
        let mut x = Tensor::from_vec(embedded, (b, t, self.cfg.hidden_size), &self.device)?;
        let residual = self.cfg.scales.residual;
        let eps = self.cfg.rms_norm_eps as f32;
        // A branch's input or output, normalized where the family has a norm.
        let norm = |x: &Tensor, w: &Option<Norm>| -> Result<Tensor> {
            Ok(match w {
                Some(w) => w.apply(x, eps)?,
                None => x.clone(),
            })
        };
        let rows = token_rows(groups, t);
        for (l, block) in self.blocks.iter().enumerate() {
            let lora =
                |slot: Slot| row_updates(&rows, groups, move |set| &set.blocks[l][slot as usize]);
            let input = norm(&x, &block.norms.attn_in)?;
            let qkv = block.attn.qkv_proj.forward_with(&input, &lora(Slot::Qkv))?;
            let rotation = (positions.as_slice(), rope_sets.as_slice(), logn.as_deref());
            let attn = self.attention(&qkv, (b, t), rotation, l, context)?;
            let o = block.attn.o_proj.forward_with(&attn, &lora(Slot::O))?;
            x = (x + scaled(norm(&o, &block.norms.attn_out)?, residual)?)?;
            let input = norm(&x, &block.norms.mlp_in)?;
            let gate_up = block
                .mlp
                .gate_up_proj
                .forward_with(&input, &lora(Slot::GateUp))?;
            let gated = mlp_activation(&self.cfg, &gate_up)?;
            let down = block
                .mlp
                .down_proj
                .forward_with(&gated, &lora(Slot::Down))?;
            x = (x + scaled(norm(&down, &block.norms.mlp_out)?, residual)?)?;
        }
        // Dividing the head's input divides the logits (Granite's `logits_scaling`).
        scaled(self.norm.apply(&x, eps)?, 1.0 / self.cfg.scales.logits)
    }

    /// Self-attention of a block on its q|k|v product `[b, t, (nh + 2·nkv)·hd]`: over whole
    /// sequences from position 0 through the training engine's fused causal kernel, or over the
    /// cache(s) for tokens at `positions`, rotated with each row's tables and the queries scaled
    /// by `logn` when given. Output `[b, t, nh·hd]`, before `o_proj`.
    fn attention(
        &self,
        qkv: &Tensor,
        (b, t): (usize, usize),
        (positions, rope_sets, logn): (&[u32], &[RopeSet], Option<&[f32]>),
        layer: usize,
        context: &mut Attend,
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
        );
        let qkv = qkv.flatten_all()?.to_vec1::<f32>()?;
        let (mut q, k, v) = self.split_and_rotate(&qkv, (positions, rope_sets), layer);
        if let Some(factors) = logn {
            let row = q.len() / factors.len().max(1);
            for (token, &factor) in q.chunks_exact_mut(row).zip(factors) {
                token.iter_mut().for_each(|x| *x *= factor);
            }
        }
        let cached = |rows| CachedAttnShape {
            rows,
            t,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
            scale: self.cfg.attention_scale(),
            window: self.cfg.window(layer),
            softcap: self.cfg.attn_softcap,
            alibi: self.cfg.alibi,
        };
        let out = match context {
            Attend::Batch(cache) => cache.attend(layer, &q, &k, &v, cached(b)),
            Attend::PerRow(caches) => {
                let (q_row, kv_row) = (t * nh * hd, t * nkv * hd);
                let mut out = Vec::with_capacity(q.len());
                for (r, cache) in caches.iter_mut().enumerate() {
                    let kv = r * kv_row..(r + 1) * kv_row;
                    let q = &q[r * q_row..(r + 1) * q_row];
                    out.extend(cache.attend(layer, q, &k[kv.clone()], &v[kv], cached(1)));
                }
                out
            }
            Attend::Whole => {
                let shape = AttnShape {
                    batch: b,
                    seq: t,
                    heads: nh,
                    kv_heads: nkv,
                    head_dim: hd,
                    scale: self.cfg.attention_scale(),
                    window: self.cfg.window(layer),
                    softcap: self.cfg.attn_softcap,
                    alibi: self.cfg.alibi,
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
        Ok(Tensor::from_vec(out, (b, t, nh * hd), &self.device)?)
    }

    /// One adapter's updates laid out as this model's layers, for [`Self::prefill`] and
    /// [`Self::decode_step`]. The adapter must fit the model (checked here, errors name the
    /// module); biases it trains become shifts added to its own rows only.
    pub fn lora_set(&self, adapter: &Adapter) -> Result<LoraSet> {
        check_fits(&self.cfg, adapter, |name| self.tensor_dims(name))?;
        let mut set = LoraSet {
            blocks: self
                .blocks
                .iter()
                .map(|b| {
                    SLOTS.map(|slot| vec![PartUpdate::default(); b.linear(slot).widths().len()])
                })
                .collect(),
            lm_head: vec![PartUpdate::default()],
        };
        for (module, weights) in &adapter.modules {
            let at = self.linear_of(module).context("checked to fit above")?;
            let linear = self.linear(at);
            let delta = LoraDelta::new(weights, |rows, out| {
                linear.part_weight_rows(at.2, rows, out)
            })?;
            set.part_mut(at).lora = Some(delta);
        }
        for (module, vector) in &adapter.scales {
            let at = self.linear_of(module).context("checked to fit above")?;
            if vector.feedforward && self.linear(at).widths().len() > 1 {
                bail!("{module}: {SHARED_INPUT_SCALING}");
            }
            set.part_mut(at).ia3 = Some(vector.clone());
        }
        for (name, bias) in &adapter.biases {
            let module = name.strip_suffix(".bias").context("checked to fit above")?;
            let at = self.linear_of(module).context("checked to fit above")?;
            let base = self
                .linear(at)
                .part_bias(at.2)
                .context("checked to fit above")?;
            set.part_mut(at).bias_shift = Some(bias.iter().zip(base).map(|(n, o)| n - o).collect());
        }
        Ok(set)
    }

    /// The shape of a projection's weight or bias, by HF tensor name (None: no such tensor).
    fn tensor_dims(&self, name: &str) -> Option<Vec<usize>> {
        let (module, kind) = name.rsplit_once('.')?;
        let at = self.linear_of(module)?;
        let linear = self.linear(at);
        let out = linear.widths()[at.2];
        match kind {
            "weight" => {
                let inputs = match at.1 {
                    Some(Slot::O) => self.cfg.attention_widths().0,
                    Some(Slot::Down) => self.cfg.intermediate_size,
                    _ => self.cfg.hidden_size,
                };
                Some(vec![out, inputs])
            }
            "bias" => linear.part_bias(at.2).map(|_| vec![out]),
            _ => None,
        }
    }

    fn linear(&self, (layer, slot, _): (usize, Option<Slot>, usize)) -> &Linear {
        match slot {
            Some(slot) => self.blocks[layer].linear(slot),
            None => &self.lm_head,
        }
    }

    /// Where HF module `module` (e.g. `model.layers.3.mlp.up_proj`) sits: its layer, the block's
    /// linear layer holding it (None: the LM head) and its index among that layer's projections.
    fn linear_of(&self, module: &str) -> Option<(usize, Option<Slot>, usize)> {
        if module == "lm_head" {
            return Some((0, None, 0));
        }
        let rest = module.strip_prefix("model.layers.")?;
        let (layer, name) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        if layer >= self.blocks.len() {
            return None;
        }
        let linears = block_linears(&self.cfg);
        let linear = linears.iter().find(|l| l.name == name)?;
        let part = linears
            .iter()
            .filter(|l| l.slot == linear.slot)
            .position(|l| l.name == name)?;
        Some((layer, Some(linear.slot), part))
    }

    /// Which rotary tables each row of a pass of `t` tokens rotates with: LongRoPE's factor set
    /// (`long`, from [`Self::prepare_caches`]) and Qwen's dynamic NTK factor, which the first pass
    /// over a cache fixes from each row's length (a pass without a cache: from its own).
    fn rope_sets(&self, long: Vec<bool>, t: usize, context: &mut Attend) -> Vec<RopeSet> {
        let b = long.len();
        let alphas = match self.cfg.dynamic_ntk {
            None => vec![1; b],
            Some(seq_length) => {
                let alpha = |len: usize| ntk_alpha(len, seq_length);
                match context {
                    Attend::Whole => vec![alpha(t); b],
                    Attend::Batch(cache) => cache.ntk_alphas(b, t, alpha),
                    Attend::PerRow(caches) => caches
                        .iter_mut()
                        .flat_map(|c| c.ntk_alphas(1, t, alpha))
                        .collect(),
                }
            }
        };
        long.into_iter()
            .zip(alphas)
            .map(|(long, ntk_alpha)| RopeSet { long, ntk_alpha })
            .collect()
    }

    /// Qwen's logn attention scaling, once per pass: each token's factor on its rotated queries,
    /// log_seq_length(p + 1) at position `p` past `seq_length` (else 1), so attention stays as
    /// sharp over a longer context as over the trained one; positions are counted among a row's
    /// real tokens, so a left-padded row scales as it would alone. None for other models.
    fn logn_factors(&self, positions: &[u32], t: usize, context: &Attend) -> Option<Vec<f32>> {
        let seq_length = self.cfg.logn_attention?;
        let factor = |p: u32| match p as usize + 1 {
            n if n > seq_length => ((n as f64).ln() / (seq_length as f64).ln()) as f32,
            _ => 1.0,
        };
        let rows = positions.chunks(t).enumerate();
        let factors = rows.flat_map(|(r, row)| {
            let pad = context.left_pad(r) as u32;
            row.iter().map(move |&p| factor(p.saturating_sub(pad)))
        });
        Some(factors.collect())
    }

    /// Records this pass's tokens in its caches and returns, per row of the batch, whether the
    /// row rotates with LongRoPE's long factor set. transformers picks the set per forward pass by
    /// the furthest position (the whole batch's: a batch cache's rows share positions; sequences
    /// with caches of their own each decide for themselves), and its generate recomputes the whole
    /// cache the first time a sequence reaches past the original context (Phi-3's
    /// `prepare_inputs_for_generation`), since every cached key and value was computed with the
    /// short set. A cache is rebuilt here the same way, from the tokens it recorded; models without
    /// LongRoPE record nothing.
    fn prepare_caches(
        &self,
        ids: &[u32],
        (b, t): (usize, usize),
        positions: &[u32],
        context: &mut Attend,
        groups: &[(Vec<usize>, &LoraSet)],
    ) -> Result<Vec<bool>> {
        if !self.rope.has_long() {
            return Ok(vec![false; b]);
        }
        let caches: Vec<&mut Cache> = match context {
            Attend::Whole => return Ok(vec![self.rope.reaches_long(positions); b]),
            Attend::Batch(cache) => {
                let long = cache.keys_long || self.rope.reaches_long(positions);
                self.rebuild_if_short(cache, long, groups)?;
                cache.record(ids, t);
                return Ok(vec![long; b]);
            }
            Attend::PerRow(caches) => caches.iter_mut().map(|c| &mut **c).collect(),
        };
        let mut long = Vec::with_capacity(b);
        for (r, cache) in caches.into_iter().enumerate() {
            let row = &positions[r * t..(r + 1) * t];
            let row_long = cache.keys_long || self.rope.reaches_long(row);
            // The row's adapter, as the row 0 of its own batch.
            let groups: Vec<(Vec<usize>, &LoraSet)> = groups
                .iter()
                .filter(|(rows, _)| rows.contains(&r))
                .map(|&(_, set)| (vec![0], set))
                .collect();
            self.rebuild_if_short(cache, row_long, &groups)?;
            cache.record(&ids[r * t..(r + 1) * t], t);
            long.push(row_long);
        }
        Ok(long)
    }

    /// When a pass over `cache` rotates with the long set and the cache holds keys of the short
    /// one, recomputes the cache from its tokens with the long set.
    fn rebuild_if_short(
        &self,
        cache: &mut Cache,
        long: bool,
        groups: &[(Vec<usize>, &LoraSet)],
    ) -> Result<()> {
        if !long || cache.keys_long {
            return Ok(());
        }
        cache.keys_long = true;
        let (seen, rows) = cache.take_ids();
        if seen.is_empty() {
            return Ok(());
        }
        let len = seen.len() / rows;
        self.run_blocks(&seen, (rows, len), &mut Attend::Batch(cache), groups)?;
        Ok(())
    }

    /// The stacked projection's `[q | k | v]` columns of layer `layer` as separate token-major
    /// arrays, q and k of token `i` normalized per head when the layer has a q/k norm, then
    /// rotated for `positions[i]` unless the layer has no rotary embedding.
    fn split_and_rotate(
        &self,
        qkv: &[f32],
        (positions, rope_sets): (&[u32], &[RopeSet]),
        layer: usize,
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
        if let Some((q_norm, k_norm)) = &self.blocks[layer].attn.qk_norm {
            let eps = self.cfg.rms_norm_eps as f32;
            q = head_norm(&q, q_norm, eps);
            k = head_norm(&k, k_norm, eps);
        }
        if !self.cfg.uses_rope(layer) {
            return (q, k, v);
        }
        let shape = |heads| RopeShape {
            heads,
            head_dim: hd,
            rotary_dim: self.cfg.rotary_dim,
            interleaved: self.cfg.architecture.rotary_interleaved(),
        };
        // Rows that share tables rotate together (all of them, but for LongRoPE sequences on both
        // sides of the original context, or Qwen's of different NTK factors, in one step).
        let t = positions.len() / rope_sets.len();
        let local = self.cfg.window(layer).is_some();
        let mut start = 0;
        for run in rope_sets.chunk_by(|a, b| a == b) {
            let (cos, sin) = self.rope.select_set(run[0], local);
            let rows = start..start + run.len();
            let at = &positions[rows.start * t..rows.end * t];
            let q_rows = &mut q[rows.start * t * nh * hd..rows.end * t * nh * hd];
            rope_kernel::forward(q_rows, at, shape(nh), cos, sin);
            let k_rows = &mut k[rows.start * t * nkv * hd..rows.end * t * nkv * hd];
            rope_kernel::forward(k_rows, at, shape(nkv), cos, sin);
            start = rows.end;
        }
        (q, k, v)
    }
}

/// `x · factor`, or `x` itself when the factor is 1 (every family but Granite).
fn scaled(x: Tensor, factor: f64) -> Result<Tensor> {
    Ok(if factor == 1.0 { x } else { (x * factor)? })
}

/// Multiplies `values` by `factor` unless it is 1.
fn scale_in_place(values: &mut [f32], factor: f64) {
    if factor != 1.0 {
        let factor = factor as f32;
        values.iter_mut().for_each(|v| *v *= factor);
    }
}

/// Each `w.len()`-wide head of `x` RMS-normalized and scaled by `w`: the q/k norms (a weight as
/// wide as the projection makes one head per token, OLMo 2's).
fn head_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    let mut rstd = vec![0f32; x.len() / w.len()];
    rmsnorm_kernel::forward(x, w, eps, &mut y, &mut rstd);
    y
}

/// The MLP's activation of the GateUp product (`layout::mlp_activation`), `[..., intermediate]`.
fn mlp_activation(cfg: &ModelConfig, gate_up: &Tensor) -> Result<Tensor> {
    let mut shape = gate_up.dims().to_vec();
    *shape.last_mut().context("a scalar is not a product")? = cfg.intermediate_size;
    let values = gate_up.flatten_all()?.to_vec1::<f32>()?;
    let out = layout::mlp_activation(cfg, &values);
    Ok(Tensor::from_vec(out, shape, gate_up.device())?)
}

/// The model's weights while a [`Llama`] is built from them, and the adapter's updates.
struct Parts<'a> {
    weights: HashMap<String, Weight>,
    adapter: Option<&'a Adapter>,
}

impl Parts<'_> {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Weight> {
        let w = self
            .weights
            .remove(name)
            .with_context(|| format!("tensor `{name}` is missing"))?;
        if w.dims() != shape {
            bail!(
                "tensor `{name}` has shape {:?} but the config implies {shape:?}",
                w.dims()
            );
        }
        Ok(w)
    }

    /// An RMSNorm weight with the family's offset added (`1 + w` for Gemma), as the norm scales by.
    /// The norm whose weight is `name` (`….weight`), its bias beside it in a LayerNorm family.
    fn take_norm(&mut self, name: &str, shape: &[usize], cfg: &ModelConfig) -> Result<Norm> {
        let w = self.take_norm_weight(name, shape, cfg)?;
        if !cfg.architecture.layer_norm() {
            return Ok(Norm::Rms(w));
        }
        let b = self.take_f32(&norm_bias_name(name), shape)?;
        Ok(Norm::Layer {
            w: w.to_vec1::<f32>()?,
            b: b.to_vec1::<f32>()?,
        })
    }

    /// A norm weight with the family's offset added (Gemma scales by `1 + w`).
    fn take_norm_weight(
        &mut self,
        name: &str,
        shape: &[usize],
        cfg: &ModelConfig,
    ) -> Result<Tensor> {
        let w = self.take_f32(name, shape)?;
        Ok(match cfg.norm_offset {
            0.0 => w,
            offset => (w + f64::from(offset))?,
        })
    }

    fn take_f32(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let w = self.take(name, shape)?;
        w.f32_tensor()
            .with_context(|| format!("tensor `{name}`"))
            .cloned()
    }

    /// Layer `layer`'s (`model.layers.N`) q and k norm weights when the family has them.
    fn qk_norm(&mut self, layer: &str, cfg: &ModelConfig) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
        let Some((q_width, k_width)) = cfg.qk_norm_widths() else {
            return Ok(None);
        };
        let mut norm = |name: &str, width: usize| -> Result<Vec<f32>> {
            let name = format!("{layer}.self_attn.{name}.weight");
            Ok(self
                .take_norm_weight(&name, &[width], cfg)?
                .to_vec1::<f32>()?)
        };
        Ok(Some((norm("q_norm", q_width)?, norm("k_norm", k_width)?)))
    }

    /// Module `module`'s weight, bias when it has one, and the adapter's update of it (whose bias,
    /// when the adapter saved one, replaces the model's). The adapter was checked to fit.
    fn projection(
        &mut self,
        module: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<Projection> {
        let weight = self.take(&format!("{module}.weight"), &[out, inp])?;
        let bias_name = format!("{module}.bias");
        let mut bias = if bias {
            Some(self.take_f32(&bias_name, &[out])?.to_vec1::<f32>()?)
        } else {
            None
        };
        let lora = self.adapter.and_then(|a| a.modules.get(module));
        if let Some(b) = self.adapter.and_then(|a| a.biases.get(&bias_name)) {
            bias = Some(b.clone());
        }
        let lora = lora
            .map(|l| LoraDelta::new(l, |rows, out| weight.rows_into(rows, out)))
            .transpose()?;
        let ia3 = self.adapter.and_then(|a| a.scales.get(module)).cloned();
        Ok(Projection {
            weight,
            bias,
            lora,
            ia3,
        })
    }
}
