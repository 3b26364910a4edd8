//! The Llama decoder and its families (Mistral, Qwen2/3, SmolLM3, Granite, OLMo 2, Gemma 2/3,
//! Phi-3, GLM-4, StarCoder2, ChatGLM2/3, Baichuan 2, Qwen v1 as `ModelConfig`'s switches, their
//! linear layers from `layout`):
//! embeddings, N of the one decoder block (`block`, the same the training engine runs) over these
//! linear layers, final norm, LM head. Inference forward pass with a KV cache, adapters per
//! request.
//!
//! Weights come named as in HF checkpoints (`weights` maps other formats to these names), each
//! either f32 or in its stored type (`linear::Weight`); norms are f32.

use std::borrow::Cow;
use std::collections::HashMap;
use std::iter::repeat_n;

use anyhow::{bail, Context as _, Result};
use candle_core::{Device, Tensor};

use super::adaption::AdaptionKv;
use super::attend::{Attend, Pass};
use super::block::{self, Norms, Project, QkNorm};
use super::config::ModelConfig;
use super::kv_cache::Cache;
use super::layout::{block_linears, slot_linears, Slot, SLOTS};
use super::linear::{
    with_f32_slice, InputRotation, Linear, LoraDelta, PartUpdate, Projection, RowsLora, Weight,
};
use super::norm::{NormCtx, NormParam, Tensor1};
use super::rope::{ntk_alpha, RopeSet, RopeTables};
use super::virtual_tokens::{self, Virtual};
use super::weights::norm_bias_name;
use crate::adapters::ia3::SHARED_INPUT_SCALING;
use crate::adapters::merge::check_fits;
use crate::adapters::Adapter;
use crate::kernels::cross_entropy::{self, CeShape, IGNORE_INDEX};
use crate::kernels::matrix::MatrixRef;

/// The one block (`model::block`) with the inference model's products.
type Block = block::Block<Linear>;

/// One adapter's updates laid out as a model's layers ([`Llama::lora_set`]): per block and
/// linear layer, one update per projection. Built once when a server loads an adapter, then
/// applied to whichever rows of a batch ask for it.
pub struct LoraSet {
    blocks: Vec<[Vec<PartUpdate>; 4]>,
    lm_head: Vec<PartUpdate>,
    /// A prompt-learning adapter's virtual tokens, put before the sequences it serves instead of
    /// the model's own.
    prompt: Option<Virtual>,
    /// A LLaMA-Adapter adapter's prompts, attended by the rows it serves instead of the model's.
    adaption: Option<AdaptionKv>,
}

impl LoraSet {
    fn part_mut(&mut self, (layer, slot, part): (usize, Option<Slot>, usize)) -> &mut PartUpdate {
        match slot {
            Some(slot) => &mut self.blocks[layer][slot as usize][part],
            None => &mut self.lm_head[part],
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

/// Each adapter's token rows in a pass, from which a product of layer `layer` takes its own
/// updates.
pub struct AdapterRows<'a> {
    layer: usize,
    rows: &'a [Vec<usize>],
    groups: &'a [(Vec<usize>, &'a LoraSet)],
}

/// The inference model's products: the base weights for every row, each adapter's updates on its
/// own rows; nothing is kept for a backward.
impl Project for Linear {
    type Context<'a> = AdapterRows<'a>;
    type Saved = ();

    fn out_features(&self) -> usize {
        Linear::out_features(self)
    }

    fn project(
        &self,
        x: &[f32],
        rows: usize,
        slot: Slot,
        adapters: &AdapterRows,
    ) -> Result<(Vec<f32>, ())> {
        let lora = row_updates(adapters.rows, adapters.groups, |set| {
            &set.blocks[adapters.layer][slot as usize]
        });
        Ok((self.forward_rows_with(x, rows, &lora)?, ()))
    }
}

pub struct Llama {
    cfg: ModelConfig,
    embed_tokens: Weight,
    blocks: Vec<Block>,
    norm: NormParam,
    lm_head: Linear,
    rope: RopeTables,
    /// A prompt-learning adapter's virtual tokens: every sequence starts with them.
    prompt: Option<Virtual>,
    /// A LLaMA-Adapter adapter's prompts: the top layers' attention attends them.
    adaption: Option<AdaptionKv>,
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
        let dims = |name: &str| weights.get(name).map(|w| w.dims().to_vec());
        let resolved = adapter.map(|a| a.resolved(dims)).transpose()?;
        let adapter = resolved.as_deref();
        let mut parts = Parts { weights, adapter };
        let h = cfg.hidden_size;
        let embed_tokens = parts.take("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut blocks = Vec::new();
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
            let [qkv, o, gate_up, down] = SLOTS.map(&mut linear);
            let linears = [qkv?, o?, gate_up?, down?];
            let mut norms = Norms::default();
            for &(position, name, _) in cfg.norm_placement.norms() {
                let w = parts.take_norm(&format!("{p}.{name}.weight"), &[h], &cfg)?;
                *norms.slot_mut(position) = Some(w);
            }
            blocks.push(Block::new(&cfg, l, norms, qk_norm, linears));
        }
        let norm = parts.take_norm("model.norm.weight", &[h], &cfg)?;
        let lm_head = if cfg.tie_word_embeddings {
            Projection {
                weight: embed_tokens.clone(),
                bias: None,
                lora: None,
                ia3: None,
                oft: None,
            }
        } else {
            parts.projection("lm_head", cfg.vocab_size, h, false)?
        };
        let rope = RopeTables::new(&cfg, cfg.max_position_embeddings.max(1));
        let model = Llama {
            cfg,
            embed_tokens,
            blocks,
            norm,
            lm_head: Linear::new(vec![lm_head])?,
            rope,
            prompt: None,
            adaption: None,
            device: device.clone(),
        };
        match adapter {
            Some(adapter) => model.with_prompt(adapter),
            None => Ok(model),
        }
    }

    /// The model with a prompt-learning adapter's virtual tokens before every sequence (any other
    /// adapter: as it is).
    pub fn with_prompt(mut self, adapter: &Adapter) -> Result<Self> {
        self.prompt = Virtual::of(adapter, &self.cfg)?;
        self.adaption = self.adaption_of(adapter)?;
        Ok(self)
    }

    /// A LLaMA-Adapter adapter's prompts through this model's layers (None for other adapters).
    fn adaption_of(&self, adapter: &Adapter) -> Result<Option<AdaptionKv>> {
        AdaptionKv::of(adapter, &self.cfg, |layer, prompt, rows| {
            self.blocks[layer]
                .linear(Slot::Qkv)
                .forward_rows(prompt, rows)
        })
    }

    /// Each of `b` rows' LLaMA-Adapter prompts: its adapter's, else the model's (empty when no
    /// row has any).
    fn adaption_rows<'a>(
        &'a self,
        b: usize,
        groups: &[(Vec<usize>, &'a LoraSet)],
    ) -> Vec<Option<&'a AdaptionKv>> {
        let row = |r: usize| {
            let set = groups.iter().find(|(rows, _)| rows.contains(&r));
            set.and_then(|(_, s)| s.adaption.as_ref())
                .or(self.adaption.as_ref())
        };
        let rows: Vec<_> = (0..b).map(row).collect();
        match rows.iter().any(Option::is_some) {
            true => rows,
            false => Vec::new(),
        }
    }

    /// How many virtual tokens start every sequence (0 without a prompt-learning adapter).
    pub fn virtual_tokens(&self) -> usize {
        self.prompt.as_ref().map_or(0, |p| p.len(&self.cfg))
    }

    /// The virtual tokens of a pass: those of its adapter when it has one adapter with them (a
    /// server's request), else the model's own.
    fn pass_prompt<'a>(&'a self, groups: &[(Vec<usize>, &'a LoraSet)]) -> Option<&'a Virtual> {
        match groups {
            [(_, set)] if set.prompt.is_some() => set.prompt.as_ref(),
            _ => self.prompt.as_ref(),
        }
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
        let (hidden, labels, t) = match self.virtual_tokens() {
            0 => {
                let hidden = self.hidden_states(ids, None)?;
                (hidden.flatten_all()?.to_vec1::<f32>()?, labels.to_vec(), t)
            }
            // As PEFT's forward: the virtual tokens carry no label, and the last of them
            // predicts each row's first token — but for prefix tuning, whose places here only
            // hold the cached prefix.
            n => {
                let ids = ids.flatten_all()?.to_vec1::<u32>()?;
                let vocab = self.checked_vocab(&ids)?;
                let with_prompt = virtual_tokens::insert(&ids, t, &vec![0; b], (vocab, n));
                let whole = &mut Attend::Whole { segment_ids: None };
                let hidden = self.run_layers(&with_prompt, (b, n + t), whole, &[])?;
                let prefix = matches!(self.prompt, Some(Virtual::Prefix(_)));
                let labels = labels
                    .chunks(t)
                    .flat_map(|row| {
                        let first = if prefix { IGNORE_INDEX } else { row[0] };
                        let rest = row[1..].iter().copied();
                        repeat_n(IGNORE_INDEX, n).chain([first]).chain(rest)
                    })
                    .collect();
                (hidden.flatten_all()?.to_vec1::<f32>()?, labels, n + t)
            }
        };
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
            None => Attend::Whole { segment_ids: None },
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
        let hidden = self.run_blocks(
            ids,
            (1, t),
            &mut Attend::Whole { segment_ids: None },
            &groups,
        )?;
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
        let vocab = self.checked_vocab(ids)?;
        let n = self.pass_prompt(groups).map_or(0, |p| p.len(&self.cfg));
        let starts = match context {
            Attend::Whole { .. } => true,
            Attend::Batch(cache) => cache.is_empty(),
            Attend::PerRow(_) => false,
        };
        if n == 0 || !starts {
            return self.run_layers(ids, (b, t), context, groups);
        }
        // Each row's virtual tokens go right after its left padding, as its first real tokens.
        let pads: Vec<usize> = (0..b).map(|r| context.left_pad(r).min(t)).collect();
        let with_prompt = virtual_tokens::insert(ids, t, &pads, (vocab, n));
        let hidden = self.run_layers(&with_prompt, (b, n + t), context, groups)?;
        // The caller's positions only: the virtual tokens' outputs are never read.
        let h = self.cfg.hidden_size;
        let values = hidden.flatten_all()?.to_vec1::<f32>()?;
        let mut out = Vec::with_capacity(b * t * h);
        for (row, &pad) in values.chunks((n + t) * h).zip(&pads) {
            out.extend_from_slice(&row[..pad * h]);
            out.extend_from_slice(&row[(pad + n) * h..]);
        }
        Ok(Tensor::from_vec(out, (b, t, h), &self.device)?)
    }

    /// The vocabulary's size, after checking every id of `ids` is in it.
    fn checked_vocab(&self, ids: &[u32]) -> Result<u32> {
        let vocab = self.cfg.vocab_size as u32;
        if let Some(&bad) = ids.iter().find(|&&i| i >= vocab) {
            bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        Ok(vocab)
    }

    /// [`Self::run_blocks`] over ids that already hold any virtual tokens.
    fn run_layers(
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
        let long_rope = self.prepare_caches(ids, (b, t), &positions, context, groups)?;
        let rope_sets = self.rope_sets(long_rope, t, context);
        let logn = self.logn_factors(&positions, t, context);
        let prompt = self.pass_prompt(groups);
        let mut x = self.embed(ids, prompt.and_then(Virtual::tokens))?;
        let places = virtual_tokens::places(ids, self.cfg.vocab_size as u32);
        let adaption = self.adaption_rows(b, groups);
        let pass = Pass {
            batch: b,
            seq: t,
            positions: &positions,
            rope: &self.rope,
            rope_sets: &rope_sets,
            logn: logn.as_deref(),
            prefix: prompt.and_then(|p| p.prefix(&self.cfg, &places)),
            adaption: &adaption,
        };
        let rows = token_rows(groups, t);
        for block in &self.blocks {
            let adapters = AdapterRows {
                layer: block.index,
                rows: &rows,
                groups,
            };
            block.forward(&self.cfg, &mut x, &pass, &adapters, context)?;
        }
        let (mut hidden, _) = self.norm.forward(&x, NormCtx::of(&self.cfg));
        // Dividing the head's input divides the logits (Granite's `logits_scaling`).
        scale_in_place(&mut hidden, 1.0 / self.cfg.scales.logits);
        let h = self.cfg.hidden_size;
        Ok(Tensor::from_vec(hidden, (b, t, h), &self.device)?)
    }

    /// The blocks' input for `ids`: token embeddings times the family's embedding multiplier,
    /// and the virtual tokens for ids past the vocabulary (multiplied too unless the family's
    /// embedding layer multiplies, as Gemma's does, before PEFT appends them); without virtual
    /// tokens' embeddings (prefix tuning's places), token 0's.
    fn embed(&self, ids: &[u32], prompt: Option<&[f32]>) -> Result<Vec<f32>> {
        let vocab = self.cfg.vocab_size as u32;
        let factor = self.cfg.scales.embedding;
        // Virtual tokens' places read token 0 (then written over), the rest their own rows.
        let real: Cow<[u32]> = match ids.iter().any(|&i| i >= vocab) {
            true => Cow::Owned(ids.iter().map(|&i| if i < vocab { i } else { 0 }).collect()),
            false => Cow::Borrowed(ids),
        };
        let mut x = self.embed_tokens.gather_rows(&real)?;
        scale_in_place(&mut x, factor);
        let Some(prompt) = prompt else {
            return Ok(x);
        };
        let h = self.cfg.hidden_size;
        let prompt_factor = match self.cfg.architecture.scales_in_embedding_layer() {
            true => 1.0,
            false => factor as f32,
        };
        for (row, &id) in x.chunks_exact_mut(h).zip(ids) {
            if let Some(k) = id.checked_sub(vocab).map(|k| k as usize) {
                let token = &prompt[k * h..(k + 1) * h];
                row.iter_mut()
                    .zip(token)
                    .for_each(|(x, &p)| *x = p * prompt_factor);
            }
        }
        Ok(x)
    }

    /// One adapter's updates laid out as this model's layers, for [`Self::prefill`] and
    /// [`Self::decode_step`]. The adapter must fit the model (checked here, errors name the
    /// module); biases it trains become shifts added to its own rows only.
    pub fn lora_set(&self, adapter: &Adapter) -> Result<LoraSet> {
        let adapter = &*adapter.resolved(|name| self.tensor_dims(name))?;
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
            prompt: None,
            adaption: None,
        };
        set.prompt = Virtual::of(adapter, &self.cfg)?;
        set.adaption = self.adaption_of(adapter)?;
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
        for (module, rotation) in &adapter.oft {
            let at = self.linear_of(module).context("checked to fit above")?;
            set.part_mut(at).oft = Some(InputRotation::new(rotation));
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
                    Attend::Whole { .. } => vec![alpha(t); b],
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
            Attend::Whole { .. } => return Ok(vec![self.rope.reaches_long(positions); b]),
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
        self.run_layers(&seen, (rows, len), &mut Attend::Batch(cache), groups)?;
        Ok(())
    }
}

/// Multiplies `values` by `factor` unless it is 1.
fn scale_in_place(values: &mut [f32], factor: f64) {
    if factor != 1.0 {
        let factor = factor as f32;
        values.iter_mut().for_each(|v| *v *= factor);
    }
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

    /// The norm whose weight is `name` (`….weight`), its bias beside it in a LayerNorm family (the
    /// family's offset, Gemma's `1 + w`, is added where the norm computes).
    fn take_norm(&mut self, name: &str, shape: &[usize], cfg: &ModelConfig) -> Result<NormParam> {
        let weight = Tensor1::new(self.take_f32(name, shape)?, false);
        let bias = match cfg.architecture.layer_norm() {
            true => Some(Tensor1::new(
                self.take_f32(&norm_bias_name(name), shape)?,
                false,
            )),
            false => None,
        };
        Ok(NormParam { weight, bias })
    }

    /// An f32 vector's values.
    fn take_f32(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let w = self.take(name, shape)?;
        let w = w.f32_tensor().with_context(|| format!("tensor `{name}`"))?;
        Ok(w.to_vec1::<f32>()?)
    }

    /// Layer `layer`'s (`model.layers.N`) q and k norms when the family has them.
    fn qk_norm(&mut self, layer: &str, cfg: &ModelConfig) -> Result<Option<QkNorm>> {
        let Some((q_width, k_width)) = cfg.qk_norm_widths() else {
            return Ok(None);
        };
        let mut norm = |name: &str, width: usize| -> Result<NormParam> {
            let name = format!("{layer}.self_attn.{name}.weight");
            let weight = Tensor1::new(self.take_f32(&name, &[width])?, false);
            Ok(NormParam { weight, bias: None })
        };
        Ok(Some(QkNorm {
            q: norm("q_norm", q_width)?,
            k: norm("k_norm", k_width)?,
        }))
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
            Some(self.take_f32(&bias_name, &[out])?)
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
        let oft = self.adapter.and_then(|a| a.oft.get(module));
        Ok(Projection {
            weight,
            bias,
            lora,
            ia3,
            oft: oft.map(InputRotation::new),
        })
    }
}
