//! The training model's tensors by name: trainable ones (with their gradients) for the optimizer
//! and gradient clipping, LoRA adapters for saving, and every base tensor under its HF name
//! (optionally with the adapters merged in) for checkpoints and for inference after training.
//!
//! Names: HF names for base tensors (`model.layers.0.self_attn.q_proj.weight`), and
//! `{module}.lora_A.weight` / `{module}.lora_B.weight` (and DoRA's `{module}.lora_magnitude_vector`,
//! IA3's `{module}.ia3_l`) for adapters (PEFT's, minus its `base_model.model.` prefix).

use super::factored::Factored;
use super::linear::{MatrixParam, Projection};
use super::lora::Lora;
use super::model::TrainModel;
use super::optim::Param;
use super::reward;
use crate::adapters::adaption::{self, GATE_KEY, PROMPT_KEY};
use crate::adapters::vera::{LAMBDA_B, LAMBDA_D};
use crate::adapters::{adalora, loha, lokr, oft};
use crate::adapters::{dora, Adapter, AdaptionPrompt, PeftConfig, VeraWeights};
use crate::kernels::matmul::{matmul, MatMut, MatRef, Threads};
use crate::model::block::Norms;
use crate::model::config::BlockNorm;
use crate::model::norm::{NormParam, Tensor1};

/// Prompt learning's virtual tokens (P-tuning's encoder input), under PEFT's name less the
/// adapter's (`prompt_encoder.default.embedding.weight`); its encoder's layers are
/// `prompt_encoder.mlp_head.{0,2,4}` (P-tuning) or `prompt_encoder.transform.{0,2}` (prefix
/// tuning).
const PROMPT_EMBEDDING: &str = "prompt_encoder.embedding.weight";

/// One tensor handed out by [`TrainModel::visit_mut`]: name, value, and gradient when it trains.
type Visitor<'a, 'f> = &'f mut dyn FnMut(String, &'a mut [f32], Option<&'a mut [f32]>);

fn visit_tensor<'a>(name: String, t: &'a mut Tensor1, f: Visitor<'a, '_>) {
    f(name, &mut t.value, t.grad.as_deref_mut());
}

/// A norm's weight and, for a LayerNorm, its bias; `module` is the norm's HF module path.
fn visit_norm<'a>(module: &str, norm: &'a mut NormParam, f: Visitor<'a, '_>) {
    visit_tensor(format!("{module}.weight"), &mut norm.weight, f);
    if let Some(bias) = &mut norm.bias {
        visit_tensor(format!("{module}.bias"), bias, f);
    }
}

/// A block norm the family has.
fn visit_block_norm<'a>(module: String, norm: &'a mut Option<NormParam>, f: Visitor<'a, '_>) {
    if let Some(norm) = norm {
        visit_norm(&module, norm, f);
    }
}

/// A matrix kept in its stored type is frozen and has no f32 values to visit.
fn visit_matrix<'a>(name: String, t: &'a mut MatrixParam, f: Visitor<'a, '_>) {
    if let Some(values) = t.matrix.values_mut() {
        f(name, values, t.grad.as_deref_mut());
    }
}

fn visit_projection<'a>(p: &'a mut Projection, f: Visitor<'a, '_>) {
    let inp = p.in_features;
    let mut rest = p.weight.values_mut();
    for part in &mut p.parts {
        if let Some(values) = rest.take() {
            let (rows, tail) = values.split_at_mut(part.out_features * inp);
            rest = Some(tail);
            f(
                format!("{}.weight", part.path),
                rows,
                part.weight_grad.as_deref_mut(),
            );
        }
        if let Some(bias) = &mut part.bias {
            visit_tensor(format!("{}.bias", part.path), bias, f);
        }
        if let Some(lora) = &mut part.lora {
            let Lora {
                a,
                b,
                grad_a,
                grad_b,
                magnitude,
                ..
            } = lora;
            f(format!("{}.lora_A.weight", part.path), a, Some(grad_a));
            f(format!("{}.lora_B.weight", part.path), b, Some(grad_b));
            if let Some(m) = magnitude {
                visit_tensor(format!("{}.lora_magnitude_vector", part.path), m, f);
            }
        }
        if let Some(ia3) = &mut part.ia3 {
            visit_tensor(format!("{}.ia3_l", part.path), &mut ia3.scale, f);
        }
        if let Some(oft) = &mut part.oft {
            visit_tensor(format!("{}{}", part.path, oft::KEY), &mut oft.triangles, f);
        }
        match &mut part.factored {
            Some(Factored::Vera(vera)) => {
                visit_tensor(format!("{}{LAMBDA_D}", part.path), &mut vera.lambda_d, f);
                visit_tensor(format!("{}{LAMBDA_B}", part.path), &mut vera.lambda_b, f);
            }
            Some(Factored::Lokr(l)) => {
                let factors = [(0, &mut l.w1), (3, &mut l.w2)];
                for (first, factor) in factors {
                    for (offset, t) in factor.tensors_mut() {
                        let suffix = lokr::KEYS[first + offset];
                        visit_tensor(format!("{}{suffix}", part.path), t, f);
                    }
                }
            }
            Some(Factored::Adalora(a)) => {
                let tensors = [&mut a.a, &mut a.e, &mut a.b];
                for (suffix, t) in adalora::KEYS.iter().zip(tensors) {
                    visit_tensor(format!("{}{suffix}", part.path), t, f);
                }
            }
            Some(Factored::Loha(l)) => {
                let factors = [&mut l.w1a, &mut l.w1b, &mut l.w2a, &mut l.w2b];
                for (suffix, t) in loha::KEYS.iter().zip(factors) {
                    visit_tensor(format!("{}{suffix}", part.path), t, f);
                }
            }
            None => {}
        }
    }
}

impl TrainModel {
    /// Calls `f` on every tensor, base and adapter, with its gradient when it trains.
    fn visit_mut<'a>(&'a mut self, f: Visitor<'a, '_>) {
        visit_matrix(
            "model.embed_tokens.weight".into(),
            &mut self.embed_tokens,
            f,
        );
        let placement = self.cfg.norm_placement;
        for (l, block) in self.blocks.iter_mut().enumerate() {
            let p = format!("model.layers.{l}");
            let name = |position| format!("{p}.{}", placement.hf_name(position).unwrap_or(""));
            let Norms {
                attn_in,
                attn_out,
                mlp_in,
                mlp_out,
            } = &mut block.norms;
            visit_block_norm(name(BlockNorm::AttnIn), attn_in, f);
            visit_projection(&mut block.qkv, f);
            visit_projection(&mut block.o_proj, f);
            if let Some(norm) = &mut block.qk_norm {
                visit_norm(&format!("{p}.self_attn.q_norm"), &mut norm.q, f);
                visit_norm(&format!("{p}.self_attn.k_norm"), &mut norm.k, f);
            }
            visit_block_norm(name(BlockNorm::AttnOut), attn_out, f);
            visit_block_norm(name(BlockNorm::MlpIn), mlp_in, f);
            visit_projection(&mut block.gate_up, f);
            visit_projection(&mut block.down_proj, f);
            visit_block_norm(name(BlockNorm::MlpOut), mlp_out, f);
        }
        visit_norm("model.norm", &mut self.norm, f);
        if let Some(head) = &mut self.lm_head {
            visit_matrix("lm_head.weight".into(), head, f);
        }
        if let Some(v) = &mut self.value_head {
            visit_tensor(reward::WEIGHT.into(), &mut v.weight, f);
            visit_tensor(reward::BIAS.into(), &mut v.bias, f);
        }
        if let Some(a) = &mut self.adaption {
            for (i, layer) in a.layers.iter_mut().enumerate() {
                let module = adaption::module(a.first_layer + i);
                visit_tensor(format!("{module}{PROMPT_KEY}"), &mut layer.prompt, f);
                visit_tensor(format!("{module}{GATE_KEY}"), &mut layer.gate, f);
            }
        }
        if let Some(p) = &mut self.prompt {
            let module = p.encoder_name();
            visit_tensor(PROMPT_EMBEDDING.into(), &mut p.embedding, f);
            // nn.Sequential numbers the activations between the layers too.
            for (i, dense) in p.encoder.iter_mut().enumerate() {
                let name = format!("prompt_encoder.{module}.{}", 2 * i);
                visit_tensor(format!("{name}.weight"), &mut dense.weight, f);
                visit_tensor(format!("{name}.bias"), &mut dense.bias, f);
            }
        }
    }

    /// Every trainable tensor with its gradient, for [`super::optim::AdamW::step`].
    pub fn params_mut(&mut self) -> Vec<Param<'_>> {
        let mut out = Vec::new();
        self.visit_mut(&mut |name, value, grad| {
            if let Some(grad) = grad {
                out.push(Param {
                    name,
                    value,
                    grad: &*grad,
                });
            }
        });
        out
    }

    /// Names and sizes of the trainable tensors, for registering them with the optimizer.
    pub fn trainable_shapes(&mut self) -> Vec<(String, usize)> {
        self.params_mut()
            .into_iter()
            .map(|p| (p.name, p.value.len()))
            .collect()
    }

    /// Every gradient buffer, for clipping.
    pub fn grads_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out = Vec::new();
        self.visit_mut(&mut |_, _, grad| out.extend(grad));
        out
    }

    pub fn zero_grad(&mut self) {
        for g in self.grads_mut() {
            g.fill(0.0);
        }
    }

    /// (trainable, total) parameter counts, as PEFT's `print_trainable_parameters` counts them
    /// (a tied embedding once, adapters included).
    pub fn parameter_counts(&mut self) -> (usize, usize) {
        // PEFT's AdaLoRA layers hold their starting rank as a frozen one-value parameter
        // (`ranknum`), which its total counts.
        let ranknums = self.adalora_parts().len();
        let (mut trainable, mut total) = (0, self.stored_parameters() + ranknums);
        self.visit_mut(&mut |_, value, grad| {
            total += value.len();
            if grad.is_some() {
                trainable += value.len();
            }
        });
        (trainable, total)
    }

    /// Parameters of the matrices kept in their stored type (never visited: they are frozen).
    fn stored_parameters(&self) -> usize {
        let outer = [Some(&self.embed_tokens), self.lm_head.as_ref()];
        let outer = outer.into_iter().flatten().map(|t| &t.matrix);
        let projections = self
            .blocks
            .iter()
            .flat_map(|b| [&b.qkv, &b.o_proj, &b.gate_up, &b.down_proj].map(|p| &p.weight));
        outer
            .chain(projections)
            .filter(|m| m.values().is_none())
            .map(|m| m.rows() * m.cols())
            .sum()
    }

    /// The LoRA adapters by module path, in model order.
    pub fn lora_modules(&self) -> Vec<(&str, &Lora)> {
        self.blocks
            .iter()
            .flat_map(|b| b.projections())
            .filter_map(|part| part.lora.as_ref().map(|l| (part.path.as_str(), l)))
            .collect()
    }

    /// A VeRA run's shared projections and every module's vectors (None for other runs).
    fn vera_weights(&self) -> Option<VeraWeights> {
        let parts = self.blocks.iter().flat_map(|b| b.projections());
        let veras: Vec<_> = parts
            .filter_map(|p| match &p.factored {
                Some(Factored::Vera(v)) => Some((p.path.clone(), v)),
                _ => None,
            })
            .collect();
        let shared = &veras.first()?.1.shared;
        Some(VeraWeights {
            a: shared.a.clone(),
            b: shared.b.clone(),
            r: shared.r,
            max_in: shared.max_in,
            max_out: shared.max_out,
            lambdas: veras
                .iter()
                .map(|(p, v)| (p.clone(), v.lambdas()))
                .collect(),
        })
    }

    /// The trained adapter as PEFT saves it: the LoRA matrices (or IA3 vectors) of every module
    /// and, when `config` trains biases (`bias: all|lora_only`), those biases.
    /// A multimodal base's adapter names its modules as the wrapper class does, a remote-code
    /// family's as its checkpoints do, so PEFT applies it to that class.
    pub fn to_adapter(&self, config: PeftConfig) -> Adapter {
        let started_from_weight = self.lora_modules().iter().any(|(_, l)| l.start.is_some());
        let (wrapper, checkpoint) = (self.config().wrapper, self.config().architecture);
        let name = |path: &str| match (wrapper, checkpoint.checkpoint_names()) {
            (Some(w), _) => w.module_path(path),
            (None, Some(names)) => names.to_checkpoint(path),
            (None, None) => path.to_string(),
        };
        let config = match config {
            PeftConfig::Lora(c) if started_from_weight => {
                PeftConfig::Lora(c.converted_from_start())
            }
            PeftConfig::Adalora(mut c) => {
                c.rank_pattern = self.rank_pattern(&name).or(c.rank_pattern);
                PeftConfig::Adalora(c)
            }
            other => other,
        };
        let modules = self
            .lora_modules()
            .into_iter()
            .map(|(path, lora)| (name(path), lora.weights()))
            .collect();
        let scales = self
            .blocks
            .iter()
            .flat_map(|b| b.projections())
            .filter_map(|part| Some((name(&part.path), part.ia3.as_ref()?.vector())))
            .collect();
        let biases = self
            .blocks
            .iter()
            .flat_map(|b| b.projections())
            .filter_map(|part| {
                let bias = part.bias.as_ref().filter(|b| b.grad.is_some())?;
                Some((name(&format!("{}.bias", part.path)), bias.value.clone()))
            })
            .collect();
        Adapter {
            config,
            modules,
            scales,
            biases,
            prompt: self.prompt.as_ref().map(|p| p.forward().0),
            vera: self.vera_weights(),
            loha: self
                .blocks
                .iter()
                .flat_map(|b| b.projections())
                .filter_map(|p| match &p.factored {
                    Some(Factored::Loha(l)) => Some((p.path.clone(), l.weights())),
                    _ => None,
                })
                .collect(),
            lokr: self
                .blocks
                .iter()
                .flat_map(|b| b.projections())
                .filter_map(|p| match &p.factored {
                    Some(Factored::Lokr(l)) => Some((p.path.clone(), l.weights())),
                    _ => None,
                })
                .collect(),
            adalora: self
                .blocks
                .iter()
                .flat_map(|b| b.projections())
                .filter_map(|p| match &p.factored {
                    Some(Factored::Adalora(a)) => Some((name(&p.path), a.saved_weights())),
                    _ => None,
                })
                .collect(),
            oft: self
                .blocks
                .iter()
                .flat_map(|b| b.projections())
                .filter_map(|p| Some((name(&p.path), p.oft.as_ref()?.weights())))
                .collect(),
            adaption: self.adaption.as_ref().map_or_else(Default::default, |a| {
                let layers = a.layers.iter().enumerate();
                layers
                    .map(|(i, l)| {
                        let prompt = AdaptionPrompt {
                            prompt: l.prompt.value.clone(),
                            gate: l.gate.value[0],
                        };
                        (adaption::module(a.first_layer + i), prompt)
                    })
                    .collect()
            }),
        }
    }

    /// Every base tensor under its HF name with its shape, adapters merged in when `merge_lora`
    /// (`W + s · B A`, DoRA's rows then rescaled; IA3's vector multiplied in; as PEFT's
    /// `merge_and_unload`).
    pub fn hf_tensors(&self, merge_lora: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let cfg = self.config();
        let h = cfg.hidden_size;
        let embed = &self.embed_tokens.matrix;
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            vec![cfg.vocab_size, h],
            embed.rows_f32(0..embed.rows()),
        )];
        for (l, block) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{l}");
            let norm = |position: BlockNorm, out: &mut Vec<(String, Vec<usize>, Vec<f32>)>| {
                let (Some(name), Some(norm)) = (
                    cfg.norm_placement.hf_name(position),
                    block.norms.slot(position),
                ) else {
                    return;
                };
                norm_tensors(&format!("{p}.{name}"), norm, out);
            };
            norm(BlockNorm::AttnIn, &mut out);
            for proj in [&block.qkv, &block.o_proj] {
                projection_tensors(proj, merge_lora, &mut out);
            }
            if let Some(norm) = &block.qk_norm {
                for (name, norm) in [("q_norm", &norm.q), ("k_norm", &norm.k)] {
                    norm_tensors(&format!("{p}.self_attn.{name}"), norm, &mut out);
                }
            }
            norm(BlockNorm::AttnOut, &mut out);
            norm(BlockNorm::MlpIn, &mut out);
            for proj in [&block.gate_up, &block.down_proj] {
                projection_tensors(proj, merge_lora, &mut out);
            }
            norm(BlockNorm::MlpOut, &mut out);
        }
        norm_tensors("model.norm", &self.norm, &mut out);
        if let Some(head) = &self.lm_head {
            out.push((
                "lm_head.weight".into(),
                vec![cfg.vocab_size, h],
                head.matrix.rows_f32(0..cfg.vocab_size),
            ));
        }
        out
    }
}

fn projection_tensors(
    p: &Projection,
    merge_lora: bool,
    out: &mut Vec<(String, Vec<usize>, Vec<f32>)>,
) {
    let inp = p.in_features;
    let mut first = 0;
    for part in &p.parts {
        let mut w = p.weight.rows_f32(first..first + part.out_features);
        first += part.out_features;
        if let (true, Some(lora)) = (merge_lora, &part.lora) {
            let scaled_b: Vec<f32> = lora.b.iter().map(|&v| v * lora.scale).collect();
            matmul(
                MatMut::new(&mut w, part.out_features, inp),
                MatRef::new(&scaled_b, part.out_features, lora.r),
                MatRef::new(&lora.a, lora.r, inp),
                true,
                Threads::Pool,
            );
            if let Some(m) = &lora.magnitude {
                dora::rescale_rows(&mut w, inp, &m.value);
            }
        }
        let mut bias = part.bias.as_ref().map(|b| b.value.clone());
        if let (true, Some(ia3)) = (merge_lora, &part.ia3) {
            ia3.vector().merge_into(&mut w, bias.as_deref_mut());
        }
        out.push((
            format!("{}.weight", part.path),
            vec![part.out_features, inp],
            w,
        ));
        if let Some(bias) = bias {
            out.push((format!("{}.bias", part.path), vec![part.out_features], bias));
        }
    }
}

/// A norm's weight and, for a LayerNorm, its bias, under the norm's HF module path.
fn norm_tensors(module: &str, norm: &NormParam, out: &mut Vec<(String, Vec<usize>, Vec<f32>)>) {
    let tensors = [
        Some((".weight", &norm.weight)),
        norm.bias.as_ref().map(|b| (".bias", b)),
    ];
    for (kind, t) in tensors.into_iter().flatten() {
        out.push((
            format!("{module}{kind}"),
            vec![t.value.len()],
            t.value.clone(),
        ));
    }
}
