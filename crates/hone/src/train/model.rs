//! The Llama-family model as the training engine sees it: f32 parameter buffers (frozen or with a
//! gradient), LoRA adapters where requested, and one `forward_backward` that runs the blocks
//! forward keeping their activations, the LM head fused with the loss, and the blocks backward.
//!
//! Which tensors train is decided once, at construction, by parameter name (HF names such as
//! `model.layers.3.mlp.down_proj.weight`): full fine-tuning, freezing, LoRA and IA3 are the same
//! engine with different choices. Frozen tensors never get a gradient buffer, and frozen matrices
//! loaded in a stored type (a quantized GGUF) stay in it: LoRA on such a base is QLoRA.

use std::collections::HashMap;

use anyhow::{bail, ensure, Context, Result};

use super::adaption::{Adaption, AdaptionSaved};
use super::dropout;
use super::ia3::{self, Ia3, Ia3Settings};
use super::linear::{MatrixParam, Part, Projection};
use super::lora::{Lora, LoraSettings, LoraShape};
use super::lora_init;
use super::norm_head;
use super::prompt::{self, Prompted, VirtualPrompt};
use super::reward::ValueHead;
use crate::adapters::Adapter;
use crate::data::Batch;
use crate::kernels::cross_entropy::{self, CeShape, IGNORE_INDEX};
use crate::kernels::matrix::{Matrix, MatrixRef};
use crate::kernels::stored::StoredMatrix;
use crate::model::adaption::AdaptionKv;
use crate::model::attend::{Attend, Pass, PassGrads, PrefixKv};
use crate::model::block::{Activations, Norms, QkNorm};
use crate::model::layout::{slot_linears, Slot};
use crate::model::norm::{NormCtx, NormParam, Tensor1};
use crate::model::rope::{RopeSet, RopeTables};
use crate::model::virtual_tokens::prefix_width;
use crate::model::{ModelConfig, Weight};

/// The one block (`model::block`) with the training engine's products.
pub type Block = crate::model::block::Block<Projection>;

/// Which tensors train: base parameters chosen by HF name, plus LoRA adapters or IA3 vectors.
pub struct TrainableSpec<'a> {
    pub base: &'a dyn Fn(&str) -> bool,
    pub lora: Option<&'a LoraSettings>,
    pub ia3: Option<&'a Ia3Settings>,
}

pub struct TrainModel {
    pub(super) cfg: ModelConfig,
    pub(super) embed_tokens: MatrixParam,
    pub(super) blocks: Vec<Block>,
    pub(super) norm: NormParam,
    /// None when the head is tied to `embed_tokens`.
    pub(super) lm_head: Option<MatrixParam>,
    rope: RopeTables,
    /// NEFTune: uniform noise of magnitude `alpha / √(seq · hidden)` added to the embeddings
    /// in training (transformers' `neftune_noise_alpha`).
    pub neftune_alpha: Option<f32>,
    /// Gradient checkpointing: the forward keeps only each block's input and the backward runs
    /// the block's forward again to get its activations (same dropout masks, same values), so
    /// activation memory is one hidden width per token and layer plus one block's worth.
    pub recompute: bool,
    /// `stage: rm`: the value head that scores responses (trains with the model).
    pub value_head: Option<ValueHead>,
    /// Prompt tuning, P-tuning and prefix tuning: the virtual tokens every sequence starts with.
    pub prompt: Option<VirtualPrompt>,
    /// LLaMA-Adapter: the top layers' gated prompts.
    pub adaption: Option<Adaption>,
    /// AdaLoRA: the rank allocator run after each optimizer step, and its penalty.
    pub rank_allocator: Option<super::rank_allocator::RankAllocator>,
}

/// What an objective sees at the LM head in [`TrainModel::forward_backward_with`]: the head's
/// input (final-norm output, `[n, hidden]`), its weight and gradient (when it trains), the labels
/// already shifted, and `dh` to write the gradient with respect to the input into.
pub struct Head<'a> {
    pub input: &'a [f32],
    pub weight: MatrixRef<'a>,
    pub grad: Option<&'a mut [f32]>,
    pub labels: &'a [i64],
    pub shape: CeShape,
    pub dh: &'a mut [f32],
    /// What the final norm's output was multiplied by to make `input` (Granite's
    /// `1 / logits_scaling`; 1 for other families).
    pub input_scale: f64,
    /// The reward model's value head (`stage: rm`), which reads the final norm's output.
    pub value_head: Option<&'a mut ValueHead>,
}

/// What the forward keeps of a block for its backward.
enum Saved {
    Activations(Box<Activations<super::linear::Saved>>),
    /// The block's input only, when its activations are recomputed.
    Input(Vec<f32>),
}

/// Rows of the LM head's logits computed at once by the fused loss: 256 × 49K floats = 48 MB.
pub(crate) const CE_CHUNK: usize = 256;

impl TrainModel {
    /// Takes the base weights (HF names, f32, as `model::weights` loads them) and the choice of
    /// what trains. LoRA adapters start at PEFT's init, or from `adapter` (e.g. one read from a
    /// PEFT directory, whose saved biases then replace the model's).
    pub fn new(
        cfg: ModelConfig,
        weights: HashMap<String, candle_core::Tensor>,
        spec: &TrainableSpec,
        adapter: Option<&Adapter>,
    ) -> Result<TrainModel> {
        let weights = weights
            .into_iter()
            .map(|(name, t)| (name, Weight::F32(t)))
            .collect();
        Self::from_stored(cfg, weights, spec, adapter)
    }

    /// [`TrainModel::new`] on weights as `model::weights::load_stored` loads them: frozen
    /// matrices in a stored type stay in it; those that train are expanded to f32.
    pub fn from_stored(
        cfg: ModelConfig,
        mut weights: HashMap<String, Weight>,
        spec: &TrainableSpec,
        adapter: Option<&Adapter>,
    ) -> Result<TrainModel> {
        if let Some(adapter) = adapter {
            replace_biases(&mut weights, &adapter.biases)?;
        }
        if cfg.norm_head && !(spec.base)("lm_head.weight") {
            crate::model::weights::normalize_head(&mut weights)?;
        }
        // Each tensor once, by HF name, with whether it trains.
        let mut take = |name: &str, shape: &[usize]| -> Result<(Weight, bool)> {
            let w = weights
                .remove(name)
                .with_context(|| format!("tensor `{name}` is missing"))?;
            ensure!(
                w.dims() == shape,
                "tensor `{name}` has shape {:?} but the config implies {shape:?}",
                w.dims()
            );
            Ok((w, (spec.base)(name)))
        };
        let h = cfg.hidden_size;
        let layer_norm = cfg.architecture.layer_norm();
        let embed_tokens = matrix_param(take("model.embed_tokens.weight", &[cfg.vocab_size, h])?)?;
        let mut lora_stream = 0u64;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut projection = |slot: Slot| -> Result<Projection> {
                let linears = slot_linears(&cfg, slot);
                let inp = linears[0].in_features;
                let mut matrices = Vec::new();
                let mut built = Vec::new();
                for linear in linears {
                    let (out, has_bias) = (linear.out_features, linear.bias);
                    let path = format!("{p}.{}", linear.name);
                    let w = matrix_param(take(&format!("{path}.weight"), &[out, inp])?)?;
                    matrices.push(w.matrix);
                    let bias = has_bias
                        .then(|| vector_param(take(&format!("{path}.bias"), &[out])?))
                        .transpose()?;
                    let lora = lora_for(&path, inp, out, spec.lora, adapter, lora_stream)?;
                    lora_stream += 1;
                    let ia3 = ia3_for(&path, inp, out, spec.ia3, adapter)?;
                    built.push(Part {
                        path,
                        out_features: out,
                        weight_grad: w.grad,
                        bias,
                        lora,
                        ia3,
                        factored: None,
                        oft: None,
                    });
                }
                ia3::check_input_scaling(&built)?;
                let mut projection = Projection {
                    in_features: inp,
                    weight: stack(matrices, inp),
                    bf16: None,
                    parts: built,
                };
                if let Some(settings) = spec.lora.filter(|s| s.init.from_weight()) {
                    ensure!(
                        adapter.is_none(),
                        "init_lora_weights: a run that continues an adapter starts from its weights"
                    );
                    lora_init::start_from_weight(&mut projection, settings)?;
                }
                if spec.lora.is_some_and(|s| s.config.use_dora) {
                    projection.init_dora_magnitudes();
                }
                Ok(projection)
            };
            let qkv = projection(Slot::Qkv)?;
            let o_proj = projection(Slot::O)?;
            let gate_up = projection(Slot::GateUp)?;
            let down_proj = projection(Slot::Down)?;
            let mut norm = |name: &str, width: usize, bias: bool| -> Result<NormParam> {
                norm_param(&mut take, &format!("{p}.{name}"), width, bias)
            };
            let qk_norm = match cfg.qk_norm_widths() {
                Some((q_width, k_width)) => Some(QkNorm {
                    q: norm("self_attn.q_norm", q_width, false)?,
                    k: norm("self_attn.k_norm", k_width, false)?,
                }),
                None => None,
            };
            let mut norms = Norms::default();
            for &(position, name, _) in cfg.norm_placement.norms() {
                *norms.slot_mut(position) = Some(norm(name, h, layer_norm)?);
            }
            let linears = [qkv, o_proj, gate_up, down_proj];
            blocks.push(Block::new(&cfg, l, norms, qk_norm, linears));
        }
        let norm = norm_param(&mut take, "model.norm", h, layer_norm)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(matrix_param(take("lm_head.weight", &[cfg.vocab_size, h])?)?)
        };
        if let Some(settings) = spec.lora {
            settings.check_targets_exist(&cfg)?;
        }
        if let Some(extra) = adapter.and_then(|a| {
            a.modules.keys().chain(a.scales.keys()).find(|k| {
                !blocks
                    .iter()
                    .any(|b| b.projections().any(|p| &p.path == *k))
            })
        }) {
            bail!("the adapter has weights for `{extra}`, which this model does not have");
        }
        let rope = RopeTables::new(&cfg, cfg.max_position_embeddings.max(1));
        Ok(TrainModel {
            cfg,
            embed_tokens,
            blocks,
            norm,
            lm_head,
            rope,
            neftune_alpha: None,
            recompute: false,
            value_head: None,
            prompt: None,
            adaption: None,
            rank_allocator: None,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Summed loss over the labelled positions of `batch` and their count; adds
    /// `grad_scale · ∂loss_sum/∂θ` into every trainable gradient (`grad_scale = 1 / labels in the
    /// accumulation window` gives the mean loss's gradient). `dropout_seed` fixes the dropout
    /// masks of this micro-batch.
    pub fn forward_backward(
        &mut self,
        batch: &Batch,
        grad_scale: f32,
        dropout_seed: u64,
    ) -> Result<(f64, usize)> {
        self.forward_backward_with(batch, dropout_seed, |head| {
            cross_entropy::forward_backward(
                head.input,
                head.weight,
                head.labels,
                head.shape,
                grad_scale,
                head.dh,
                head.grad,
            )
        })
    }

    /// The forward keeping activations, `objective` at the LM head (it writes the gradient of its
    /// loss with respect to the head's input into `head.dh`, and into the head's own gradient
    /// when that trains), then the backward. Returns what `objective` returns.
    pub fn forward_backward_with<R>(
        &mut self,
        batch: &Batch,
        dropout_seed: u64,
        objective: impl FnOnce(Head) -> Result<R>,
    ) -> Result<R> {
        let real_seq = batch.seq;
        let prompted = self.prompted(batch)?;
        let (batch, starts) = match &prompted {
            Some(p) => (&p.batch, p.starts.as_slice()),
            None => (batch, &[][..]),
        };
        let sets = rope_sets(&self.rope, batch);
        let mut pass = pass(&self.cfg, &self.rope, batch, &sets)?;
        let segment_ids = batch.segment_ids.as_deref();
        let neftune = |x: &mut [f32]| {
            let Some(alpha) = self.neftune_alpha else {
                return;
            };
            let magnitude = alpha / ((real_seq * self.cfg.hidden_size) as f32).sqrt();
            let seed = dropout::stream(dropout_seed, u64::MAX);
            for (i, v) in x.iter_mut().enumerate() {
                *v += magnitude * dropout::uniform(seed, i);
            }
        };
        let (virtual_tokens, encoder_saved) = self.prompt.as_ref().map(|p| p.forward()).unzip();
        let places = self.prefix_places(starts);
        let tokens = self.carry(&mut pass, virtual_tokens.as_deref(), &places, starts);
        let adaption = self.adaption_kv();
        let rows = adaption_rows(adaption.as_ref().map(|a| &a.0), batch.batch);
        pass.adaption = &rows;
        let mut x = self.block_input(&batch.input_ids, tokens, neftune);
        let block_seed = |l: usize| Some(dropout::stream(dropout_seed, l as u64));
        let mut saved = Vec::with_capacity(self.blocks.len());
        for (l, block) in self.blocks.iter().enumerate() {
            if self.recompute {
                saved.push(Saved::Input(x.clone()));
                let mut attend = Attend::Whole { segment_ids };
                block.forward(&self.cfg, &mut x, &pass, &block_seed(l), &mut attend)?;
            } else {
                let acts =
                    block.forward_keeping(&self.cfg, &mut x, &pass, &block_seed(l), segment_ids)?;
                saved.push(Saved::Activations(Box::new(acts)));
            }
        }
        let (hidden, rstd) = self.final_norm(&x);
        let logit_scale = self.logit_scale();
        let head_input = scaled(hidden, logit_scale);
        let labels = shifted_labels(batch);
        let mut dh = vec![0.0; head_input.len()];
        let shape = self.ce_shape(batch);
        let normalized = self.trained_norm_head();
        let mut normalized_grad = normalized.as_ref().map(|(n, _)| vec![0.0; n.len()]);
        let head = self.lm_head.as_mut().unwrap_or(&mut self.embed_tokens);
        let (weight, head_grad) = match (&normalized, normalized_grad.as_mut()) {
            (Some((n, _)), Some(grad)) => (
                MatrixRef::F32 {
                    values: n,
                    cols: shape.hidden,
                },
                Some(grad.as_mut_slice()),
            ),
            _ => (
                head.bf16.as_ref().unwrap_or(&head.matrix).as_ref(),
                head.grad.as_deref_mut(),
            ),
        };
        let out = objective(Head {
            input: &head_input,
            weight,
            grad: head_grad,
            labels: &labels,
            shape,
            dh: &mut dh,
            input_scale: logit_scale,
            value_head: self.value_head.as_mut(),
        })?;
        if let (Some((n, lengths)), Some(dn), Some(dw)) =
            (normalized, normalized_grad, head.grad.as_mut())
        {
            norm_head::backward(&n, &lengths, &dn, dw);
        }
        scale(&mut dh, logit_scale);
        let mut dx = self.norm.backward(&dh, &x, &rstd, NormCtx::of(&self.cfg));
        drop((dh, head_input, x));
        let mut grads = PassGrads {
            prefix: pass.prefix.map(|p| vec![0.0; p.table.len()]),
            ..PassGrads::default()
        };
        for (l, block) in self.blocks.iter_mut().enumerate().rev() {
            let acts = match saved.pop().expect("one saved entry per block") {
                Saved::Activations(acts) => *acts,
                Saved::Input(mut x) => {
                    block.forward_keeping(&self.cfg, &mut x, &pass, &block_seed(l), segment_ids)?
                }
            };
            let context = (&pass, segment_ids);
            block.backward(&self.cfg, &mut dx, acts, context, &mut grads);
        }
        if let (Some(a), Some((_, saved))) = (&mut self.adaption, &adaption) {
            let mut qkv: Vec<_> = self.blocks[a.first_layer..]
                .iter_mut()
                .map(|b| &mut b.qkv)
                .collect();
            a.backward(&self.cfg, &mut qkv, &grads.adaption, saved);
        }
        let h = self.cfg.hidden_size;
        if let (Some(p), Some(dprefix)) = (&mut self.prompt, &grads.prefix) {
            p.backward(dprefix, encoder_saved.flatten().as_ref());
        } else if let Some(p) = &mut self.prompt {
            let mut dtokens = prompt::gather_grad(&dx, starts, p.n, h);
            if !self.cfg.architecture.scales_in_embedding_layer() {
                scale(&mut dtokens, self.cfg.scales.embedding);
            }
            p.backward(&dtokens, encoder_saved.flatten().as_ref());
        }
        scale(&mut dx, self.cfg.scales.embedding);
        if let Some(grad) = &mut self.embed_tokens.grad {
            // The virtual tokens' places hold a placeholder id, not a token.
            let mut placeholder = vec![false; batch.input_ids.len()];
            let n = self.prompt.as_ref().map_or(0, |p| p.n);
            for &start in starts {
                placeholder[start..start + n].fill(true);
            }
            let rows = batch.input_ids.iter().zip(dx.chunks_exact(h)).enumerate();
            for (i, (&id, row)) in rows {
                if placeholder[i] {
                    continue;
                }
                let dst = &mut grad[id as usize * h..(id as usize + 1) * h];
                for (d, &g) in dst.iter_mut().zip(row) {
                    *d += g;
                }
            }
        }
        Ok(out)
    }

    /// Summed loss and label count without gradients or dropout (evaluation).
    pub fn loss(&self, batch: &Batch) -> Result<(f64, usize)> {
        let prompted = self.prompted(batch)?;
        let batch = prompted.as_ref().map_or(batch, |p| &p.batch);
        let head_input = self.head_input(batch, prompted.as_ref())?;
        let (labels, shape) = (shifted_labels(batch), self.ce_shape(batch));
        self.with_head(|head| cross_entropy::loss(&head_input, head, &labels, shape))
    }

    /// Each position's loss (0 where it has no label), without gradients or dropout: sequence
    /// log-probabilities for preference objectives.
    pub fn position_losses(&self, batch: &Batch) -> Result<Vec<f64>> {
        let prompted = self.prompted(batch)?;
        let batch = prompted.as_ref().map_or(batch, |p| &p.batch);
        let head_input = self.head_input(batch, prompted.as_ref())?;
        let (labels, shape) = (shifted_labels(batch), self.ce_shape(batch));
        self.with_head(|head| cross_entropy::position_losses(&head_input, head, &labels, shape))
    }

    /// `f` of the matrix the LM head multiplies by: Baichuan's trained head normalized for this
    /// pass, else the head (the embeddings when tied) as held.
    fn with_head<R>(&self, f: impl FnOnce(MatrixRef) -> R) -> R {
        match self.trained_norm_head() {
            Some((n, _)) => f(MatrixRef::F32 {
                values: &n,
                cols: self.cfg.hidden_size,
            }),
            None => f(self.head().as_ref()),
        }
    }

    /// The matrix the LM head's products read (the embeddings when tied).
    fn head(&self) -> &Matrix {
        self.lm_head
            .as_ref()
            .unwrap_or(&self.embed_tokens)
            .for_products()
    }

    /// Baichuan 2's head when it trains: its raw rows normalized for this pass, with their lengths
    /// ([`norm_head`]); None for other heads (a frozen normalized head was normalized at load).
    fn trained_norm_head(&self) -> Option<(Vec<f32>, Vec<f32>)> {
        let head = self.lm_head.as_ref().filter(|h| h.grad.is_some())?;
        match (&head.matrix, self.cfg.norm_head) {
            (Matrix::F32 { values, cols }, true) => Some(norm_head::forward(values, *cols)),
            _ => None,
        }
    }

    /// The LM head's input for `batch` (virtual tokens included), without gradients or dropout.
    fn head_input(&self, batch: &Batch, prompted: Option<&Prompted>) -> Result<Vec<f32>> {
        let starts = prompted.map_or(&[][..], |p| p.starts.as_slice());
        Ok(scaled(
            self.blocks_output(batch, starts)?,
            self.logit_scale(),
        ))
    }

    /// The final norm's output for `batch` (transformers' last hidden state), without
    /// gradients or dropout; under prompt learning, each row starts with the virtual tokens'.
    pub fn final_hidden(&self, batch: &Batch) -> Result<Vec<f32>> {
        match self.prompted(batch)? {
            Some(p) => self.blocks_output(&p.batch, &p.starts),
            None => self.blocks_output(batch, &[]),
        }
    }

    /// `batch` as the blocks see it: each row preceded by the virtual tokens under prompt
    /// learning (None: as it is).
    fn prompted(&self, batch: &Batch) -> Result<Option<Prompted>> {
        self.prompt
            .as_ref()
            .map(|p| prompt::prompted_batch(batch, p.n, p.is_prefix()))
            .transpose()
    }

    /// LLaMA-Adapter's keys and values for this step (None for other runs).
    fn adaption_kv(&self) -> Option<(AdaptionKv, AdaptionSaved)> {
        let a = self.adaption.as_ref()?;
        let qkv: Vec<_> = self.blocks[a.first_layer..]
            .iter()
            .map(|b| &b.qkv)
            .collect();
        Some(a.forward(&self.cfg, &qkv))
    }

    /// Prefix tuning's places in a prompted batch whose copies of the virtual tokens start at
    /// `starts` (empty for other runs).
    fn prefix_places(&self, starts: &[usize]) -> Vec<(usize, usize)> {
        match &self.prompt {
            Some(p) if p.is_prefix() => prompt::places(starts, p.n),
            _ => Vec::new(),
        }
    }

    /// Puts prefix tuning's keys and values (`virtual_tokens`, the prompt's forward) at `places`
    /// into `pass`; for other prompt learning, returns the virtual tokens to write at `starts`.
    fn carry<'a>(
        &self,
        pass: &mut Pass<'a>,
        virtual_tokens: Option<&'a [f32]>,
        places: &'a [(usize, usize)],
        starts: &'a [usize],
    ) -> Option<(&'a [f32], &'a [usize])> {
        let virtual_tokens = virtual_tokens?;
        let Some(p) = self.prompt.as_ref().filter(|p| p.is_prefix()) else {
            return Some((virtual_tokens, starts));
        };
        pass.prefix = Some(PrefixKv {
            table: virtual_tokens,
            n: p.n,
            width: prefix_width(&self.cfg),
            places,
        });
        None
    }

    /// The final norm's output for a batch that already holds any virtual tokens' places, at
    /// `starts`.
    fn blocks_output(&self, batch: &Batch, starts: &[usize]) -> Result<Vec<f32>> {
        let sets = rope_sets(&self.rope, batch);
        let mut pass = pass(&self.cfg, &self.rope, batch, &sets)?;
        let virtual_tokens = self.prompt.as_ref().map(|p| p.forward().0);
        let places = self.prefix_places(starts);
        let tokens = self.carry(&mut pass, virtual_tokens.as_deref(), &places, starts);
        let adaption = self.adaption_kv();
        let rows = adaption_rows(adaption.as_ref().map(|a| &a.0), batch.batch);
        pass.adaption = &rows;
        let mut x = self.block_input(&batch.input_ids, tokens, |_| ());
        let segment_ids = batch.segment_ids.as_deref();
        for block in &self.blocks {
            let mut attend = Attend::Whole { segment_ids };
            block.forward(&self.cfg, &mut x, &pass, &None, &mut attend)?;
        }
        Ok(self.final_norm(&x).0)
    }

    /// The blocks' input for `ids`: their embeddings with `noise` (NEFTune's) added to the
    /// embedding layer's output and the virtual tokens written at their places after it, times the
    /// family's embedding multiplier where transformers applies it (Gemma's embedding layer
    /// multiplies its own output only; Granite multiplies after everything).
    fn block_input(
        &self,
        ids: &[u32],
        virtual_tokens: Option<(&[f32], &[usize])>,
        noise: impl FnOnce(&mut [f32]),
    ) -> Vec<f32> {
        let mut x = self.embed_tokens.matrix.gather_rows(ids);
        let in_layer = self.cfg.architecture.scales_in_embedding_layer();
        if in_layer {
            scale(&mut x, self.cfg.scales.embedding);
        }
        noise(&mut x);
        if let Some((tokens, starts)) = virtual_tokens {
            prompt::insert(&mut x, tokens, starts, self.cfg.hidden_size);
        }
        if !in_layer {
            scale(&mut x, self.cfg.scales.embedding);
        }
        x
    }

    fn ce_shape(&self, batch: &Batch) -> CeShape {
        CeShape {
            n: batch.batch * batch.seq,
            hidden: self.cfg.hidden_size,
            vocab: self.cfg.vocab_size,
            chunk: CE_CHUNK,
            softcap: self.cfg.final_softcap,
        }
    }

    /// Rows `ids` of the embedding matrix, as f32 (a prompt's start from token embeddings).
    pub fn token_embeddings(&self, ids: &[u32]) -> Vec<f32> {
        self.embed_tokens.matrix.gather_rows(ids)
    }

    /// What the LM head's input is multiplied by: dividing it divides the logits (Granite's
    /// `logits_scaling`), as the gradient flowing back through it is.
    fn logit_scale(&self) -> f64 {
        1.0 / self.cfg.scales.logits
    }

    /// The final norm's output and scales, as the blocks' norms compute (Gemma's `1 + w` too).
    fn final_norm(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        self.norm.forward(x, NormCtx::of(&self.cfg))
    }
}

/// Each of `rows` batch rows' LLaMA-Adapter prompts: all `kv` (empty without).
fn adaption_rows(kv: Option<&AdaptionKv>, rows: usize) -> Vec<Option<&AdaptionKv>> {
    match kv {
        Some(kv) => vec![Some(kv); rows],
        None => Vec::new(),
    }
}

/// Multiplies `values` by `factor` unless it is 1.
fn scale(values: &mut [f32], factor: f64) {
    if factor != 1.0 {
        let factor = factor as f32;
        values.iter_mut().for_each(|v| *v *= factor);
    }
}

/// `values · factor`.
fn scaled(mut values: Vec<f32>, factor: f64) -> Vec<f32> {
    scale(&mut values, factor);
    values
}

/// The rotary tables every row of `batch` rotates with: LongRoPE's long ones when any position
/// reaches past the original context, as transformers picks them for the whole call.
fn rope_sets(rope: &RopeTables, batch: &Batch) -> Vec<RopeSet> {
    vec![rope.call_set(&batch.position_ids); batch.batch]
}

/// What the blocks need to know about `batch`, after checking it fits the model.
fn pass<'a>(
    cfg: &ModelConfig,
    rope: &'a RopeTables,
    batch: &'a Batch,
    rope_sets: &'a [RopeSet],
) -> Result<Pass<'a>> {
    let n = batch.batch * batch.seq;
    ensure!(
        batch.input_ids.len() == n && batch.labels.len() == n && batch.position_ids.len() == n,
        "batch of {} × {} has {} ids, {} labels, {} positions",
        batch.batch,
        batch.seq,
        batch.input_ids.len(),
        batch.labels.len(),
        batch.position_ids.len()
    );
    let vocab = cfg.vocab_size;
    if let Some(bad) = batch.input_ids.iter().find(|&&id| id as usize >= vocab) {
        bail!("token id {bad} is outside the vocabulary of {vocab}");
    }
    let max_pos = rope.n_positions();
    if let Some(bad) = batch.position_ids.iter().find(|&&p| p as usize >= max_pos) {
        bail!("position {bad} exceeds the model's context of {max_pos} (max_position_embeddings)");
    }
    Ok(Pass {
        batch: batch.batch,
        seq: batch.seq,
        positions: &batch.position_ids,
        rope,
        rope_sets,
        logn: None,
        prefix: None,
        adaption: &[],
    })
}

/// LoRA for the module at `path`, when the settings target it: from `adapter` if it has the
/// module, else PEFT's init.
fn lora_for(
    path: &str,
    inp: usize,
    out: usize,
    settings: Option<&LoraSettings>,
    adapter: Option<&Adapter>,
    stream: u64,
) -> Result<Option<Lora>> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    if !settings.matcher.is_target(path)? {
        return Ok(None);
    }
    let dropout = settings.config.lora_dropout as f32;
    let Some(w) = adapter.and_then(|a| a.modules.get(path)) else {
        let shape = LoraShape {
            r: settings.matcher.rank(path)?,
            in_features: inp,
            out_features: out,
        };
        let scale = settings.matcher.scale(path)? as f32;
        return Ok(Some(Lora::init(
            shape,
            scale,
            dropout,
            settings.seed,
            stream,
        )));
    };
    ensure!(
        w.in_features == inp && w.out_features == out,
        "adapter for `{path}`: lora_A is [{}, {}] and lora_B [{}, {}], but the layer is [{out}, {inp}]: \
         is it an adapter for a different base model?",
        w.r,
        w.in_features,
        w.out_features,
        w.r
    );
    Ok(Some(Lora::from_weights(w, dropout)))
}

/// The IA3 vector of module `path` (`[out, in]`) when `settings` target it: from `adapter`, else
/// PEFT's init.
fn ia3_for(
    path: &str,
    inp: usize,
    out: usize,
    settings: Option<&Ia3Settings>,
    adapter: Option<&Adapter>,
) -> Result<Option<Ia3>> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    if !settings.matcher.is_target(path)? {
        return Ok(None);
    }
    let feedforward = settings.matcher.is_feedforward(path)?;
    let Some(v) = adapter.and_then(|a| a.scales.get(path)) else {
        return Ok(Some(Ia3::ones(
            if feedforward { inp } else { out },
            feedforward,
        )));
    };
    let width = if v.feedforward { inp } else { out };
    ensure!(
        v.feedforward == feedforward && v.values.len() == width,
        "adapter for `{path}`: ia3_l is {:?}, but the layer is [{out}, {inp}]: is it an adapter for a different \
         base model?",
        v.shape()
    );
    Ok(Some(Ia3::from_vector(v)))
}

/// A norm weight or bias, with a gradient when it trains.
fn vector_param((w, trains): (Weight, bool)) -> Result<Tensor1> {
    Ok(Tensor1::new(f32_values(&w)?, trains))
}

/// The norm `module` (`width` wide) through `take`: its weight and, with `bias` (a LayerNorm),
/// its bias.
fn norm_param(
    take: &mut impl FnMut(&str, &[usize]) -> Result<(Weight, bool)>,
    module: &str,
    width: usize,
    bias: bool,
) -> Result<NormParam> {
    let weight = vector_param(take(&format!("{module}.weight"), &[width])?)?;
    let bias = match bias {
        true => Some(vector_param(take(&format!("{module}.bias"), &[width])?)?),
        false => None,
    };
    Ok(NormParam { weight, bias })
}

/// A matrix, kept in its stored type when it is frozen, with a gradient when it trains.
fn matrix_param((w, trains): (Weight, bool)) -> Result<MatrixParam> {
    let dims = w.dims();
    let matrix = match w {
        Weight::Stored(m) if !trains => Matrix::Stored(vec![m]),
        w => Matrix::F32 {
            values: f32_values(&w)?,
            cols: dims[1],
        },
    };
    let grad = trains.then(|| vec![0.0; dims[0] * dims[1]]);
    Ok(MatrixParam {
        matrix,
        grad,
        bf16: None,
    })
}

/// A weight's values as f32, expanding a stored matrix.
fn f32_values(w: &Weight) -> Result<Vec<f32>> {
    Ok(match w {
        Weight::F32(t) => t.flatten_all()?.to_vec1::<f32>()?,
        Weight::Stored(m) => m.to_f32(),
    })
}

/// The parts of a projection stacked by rows: stored when every part stays stored, else f32.
fn stack(parts: Vec<Matrix>, cols: usize) -> Matrix {
    if parts.iter().all(|p| matches!(p, Matrix::Stored(_))) {
        let stored: Vec<StoredMatrix> = parts
            .into_iter()
            .flat_map(|p| match p {
                Matrix::Stored(m) => m,
                Matrix::F32 { .. } | Matrix::Bf16 { .. } => unreachable!("all parts are stored"),
            })
            .collect();
        return Matrix::Stored(stored);
    }
    let values = parts.iter().flat_map(|p| p.rows_f32(0..p.rows())).collect();
    Matrix::F32 { values, cols }
}

/// Puts an adapter's saved biases (PEFT `bias: all|lora_only`) in place of the model's.
fn replace_biases(
    weights: &mut HashMap<String, Weight>,
    biases: &std::collections::BTreeMap<String, Vec<f32>>,
) -> Result<()> {
    for (name, values) in biases {
        let Some(old) = weights.get(name) else {
            bail!("the adapter has a bias `{name}`, which this model does not have");
        };
        let old = old.f32_tensor()?;
        ensure!(
            old.elem_count() == values.len(),
            "the adapter's bias `{name}` has {} values, the model's {}",
            values.len(),
            old.elem_count()
        );
        let t = candle_core::Tensor::from_slice(values, old.shape().clone(), old.device())?;
        weights.insert(name.clone(), Weight::F32(t));
    }
    Ok(())
}

/// Labels shifted for next-token prediction: position i predicts the label of i + 1, unless i + 1
/// starts another row or another packed example.
pub fn shifted_labels(batch: &Batch) -> Vec<i64> {
    let t = batch.seq;
    (0..batch.batch * t)
        .map(|i| {
            let last_in_row = i % t == t - 1;
            let crosses = batch
                .segment_ids
                .as_ref()
                .is_some_and(|seg| !last_in_row && seg[i] != seg[i + 1]);
            if last_in_row || crosses {
                IGNORE_INDEX
            } else {
                batch.labels[i + 1]
            }
        })
        .collect()
}

impl Block {
    /// Every part of the block's products, in slot order.
    pub fn projections(&self) -> impl Iterator<Item = &Part> {
        [&self.qkv, &self.o_proj, &self.gate_up, &self.down_proj]
            .into_iter()
            .flat_map(|p| &p.parts)
    }
}
