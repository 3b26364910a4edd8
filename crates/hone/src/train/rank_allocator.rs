//! AdaLoRA's rank allocator (PEFT's `RankAllocator` and `update_and_allocate`, run after each
//! optimizer step as PEFT's training loop does): every triplet's sensitivity is smoothed, and on
//! the budget's schedule the most important triplets across all layers are kept and the others'
//! E zeroed. The budget (total rank) stays at its start for `tinit` steps, shrinks as a cubic to
//! `target_r` per layer by step `total_step − tfinal`, reallocating every `deltaT` steps, and the
//! final pattern then holds to the end.

use std::collections::HashMap;

use anyhow::{ensure, Context, Result};

use super::adalora::{Adalora, Importance};
use super::factored::Factored;
use super::model::TrainModel;
use crate::adapters::adalora::KEYS;
use crate::adapters::AdaloraConfig;

/// The schedule and the penalty of an AdaLoRA run.
#[derive(Clone, Debug, PartialEq)]
pub struct RankAllocator {
    pub tinit: u64,
    pub tfinal: u64,
    pub delta_t: u64,
    pub total_step: u64,
    pub betas: (f32, f32),
    pub orth_reg_weight: f64,
    /// The total rank at the start (every layer's r summed) and at the end (`target_r` each).
    pub init_budget: usize,
    pub target_budget: usize,
}

impl RankAllocator {
    /// The allocator of `config` over `parts`, for a run of `total_step` steps.
    pub fn new(config: &AdaloraConfig, total_step: u64, parts: &[&mut Adalora]) -> RankAllocator {
        RankAllocator {
            tinit: config.tinit,
            tfinal: config.tfinal,
            delta_t: config.delta_t,
            total_step,
            betas: (config.beta1 as f32, config.beta2 as f32),
            orth_reg_weight: config.orth_reg_weight,
            init_budget: parts.iter().map(|p| p.r).sum(),
            target_budget: config.target_r * parts.len(),
        }
    }

    /// PEFT's `budget_schedule`: the budget at `step` and whether to reallocate then.
    pub fn budget(&self, step: u64) -> (usize, bool) {
        let end = self.total_step.saturating_sub(self.tfinal);
        if step <= self.tinit {
            return (self.init_budget, false);
        }
        if step > end {
            return (self.target_budget, true);
        }
        let progress = (step - self.tinit) as f64 / (end - self.tinit) as f64;
        let shrink = (1.0 - progress).powi(3);
        let span = self.init_budget as f64 - self.target_budget as f64;
        let budget = (span * shrink + self.target_budget as f64) as i64;
        (budget.max(0) as usize, step.is_multiple_of(self.delta_t))
    }

    /// After optimizer step `step` (0-based): smooth the sensitivities and reallocate on the
    /// schedule; at `total_step − tfinal` the final allocation (its sensitivities then
    /// forgotten); after it, the final pattern applied again (the optimizer may have moved E).
    pub fn after_step(&self, parts: &mut [&mut Adalora], step: u64) {
        let end = self.total_step.saturating_sub(self.tfinal);
        if step < end {
            for part in parts.iter_mut() {
                update_importance(part, self.betas);
            }
            let (budget, reallocate) = self.budget(step);
            if reallocate {
                self.allocate(parts, budget);
            }
        } else if step == end {
            let (budget, _) = self.budget(step);
            self.allocate(parts, budget);
            parts.iter_mut().for_each(|p| p.importance = None);
        } else {
            for part in parts.iter_mut() {
                if let Some(kept) = part.kept.clone() {
                    part.mask(kept);
                }
            }
        }
    }

    /// PEFT's `mask_to_budget`: each triplet's score (E's, plus the means of its A row's and B
    /// column's), the `init_budget − budget` lowest across all layers (and any tied with the
    /// highest of them) masked.
    fn allocate(&self, parts: &mut [&mut Adalora], budget: usize) {
        let scores: Vec<Vec<f32>> = parts.iter().map(|p| triplet_scores(p)).collect();
        let masked = self.init_budget.saturating_sub(budget);
        let threshold = match masked {
            // PEFT's kthvalue(k = 0) would fail; nothing to mask.
            0 => f32::NEG_INFINITY,
            k => {
                let mut all: Vec<f32> = scores.iter().flatten().copied().collect();
                let k = k.min(all.len());
                let (_, kth, _) = all.select_nth_unstable_by(k - 1, f32::total_cmp);
                *kth
            }
        };
        for (part, scores) in parts.iter_mut().zip(scores) {
            part.mask(scores.iter().map(|&s| s > threshold).collect());
        }
    }
}

/// PEFT's `update_ipt` for A, E and B from their values and gradients.
fn update_importance(part: &mut Adalora, betas: (f32, f32)) {
    let importance = part.importance.get_or_insert_with(Default::default);
    let tensors = [&part.a, &part.e, &part.b];
    for (imp, t) in importance.iter_mut().zip(tensors) {
        if let Some(grad) = &t.grad {
            imp.update(&t.value, grad, betas);
        }
    }
}

/// Each triplet's score: `s(E_i) + mean_k s(A_ik) + mean_o s(B_oi)`, `s = ipt · unc`.
fn triplet_scores(part: &Adalora) -> Vec<f32> {
    let r = part.r;
    let Some([a, e, b]) = &part.importance else {
        return vec![0.0; r];
    };
    let a: Vec<f32> = a.scores().collect();
    let b: Vec<f32> = b.scores().collect();
    let e: Vec<f32> = e.scores().collect();
    let (inp, out) = (part.in_features, part.out_features);
    (0..r)
        .map(|i| {
            let a_mean = a[i * inp..(i + 1) * inp].iter().sum::<f32>() / inp as f32;
            let b_mean = (0..out).map(|o| b[o * r + i]).sum::<f32>() / out as f32;
            e[i] + (a_mean + b_mean)
        })
        .collect()
}

impl TrainModel {
    /// The rows every AdaLoRA layer kept, as PEFT's `rank_pattern` (by `<module>.lora_E`, the
    /// module named by `name`); None before the first allocation.
    pub fn rank_pattern(
        &self,
        name: &dyn Fn(&str) -> String,
    ) -> Option<std::collections::BTreeMap<String, Vec<bool>>> {
        let parts = self.blocks.iter().flat_map(|b| b.projections());
        let kept: std::collections::BTreeMap<String, Vec<bool>> = parts
            .filter_map(|p| match &p.factored {
                Some(Factored::Adalora(a)) => {
                    Some((format!("{}.lora_E", name(&p.path)), a.kept.clone()?))
                }
                _ => None,
            })
            .collect();
        (!kept.is_empty()).then_some(kept)
    }

    /// The allocator's state for a checkpoint, by name: each layer's kept rows (1 or 0) and its
    /// tensors' sensitivities (`<path>.lora_A.ipt`, `.unc`, ...).
    pub fn allocator_state(&mut self) -> Vec<(String, Vec<f32>)> {
        let mut state = Vec::new();
        for (path, part) in self.adalora_named() {
            if let Some(kept) = &part.kept {
                let flags = kept.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
                state.push((format!("{path}.kept"), flags));
            }
            for (suffix, imp) in KEYS.iter().zip(part.importance.iter().flatten()) {
                state.push((format!("{path}{suffix}.ipt"), imp.ipt.clone()));
                state.push((format!("{path}{suffix}.unc"), imp.unc.clone()));
            }
        }
        state
    }

    /// Restores [`Self::allocator_state`]; errors name a tensor that is missing or misshapen.
    pub fn restore_allocator_state(&mut self, mut state: HashMap<String, Vec<f32>>) -> Result<()> {
        for (path, part) in self.adalora_named() {
            part.kept = state
                .remove(&format!("{path}.kept"))
                .map(|flags| flags.iter().map(|&f| f != 0.0).collect());
            let smoothed = state.contains_key(&format!("{path}{}.ipt", KEYS[0]));
            let mut take = |name: String, len: usize| -> Result<Vec<f32>> {
                let values = state
                    .remove(&name)
                    .with_context(|| format!("no tensor {name}"))?;
                ensure!(
                    values.len() == len,
                    "{name}: {} values, not {len}",
                    values.len()
                );
                Ok(values)
            };
            part.importance = match smoothed {
                false => None,
                true => {
                    let lens = [part.a.value.len(), part.e.value.len(), part.b.value.len()];
                    let mut imps: [Importance; 3] = Default::default();
                    for ((imp, suffix), len) in imps.iter_mut().zip(KEYS).zip(lens) {
                        imp.ipt = take(format!("{path}{suffix}.ipt"), len)?;
                        imp.unc = take(format!("{path}{suffix}.unc"), len)?;
                    }
                    Some(imps)
                }
            };
        }
        Ok(())
    }

    /// AdaLoRA's work after optimizer step `step` (nothing for other runs).
    pub fn after_optimizer_step(&mut self, step: u64) {
        if let Some(allocator) = self.rank_allocator.take() {
            allocator.after_step(&mut self.adalora_parts(), step);
            self.rank_allocator = Some(allocator);
        }
    }

    /// AdaLoRA's orthogonality penalty for this step (0 for other runs): see
    /// [`TrainModel::orthogonality_penalty`].
    pub fn step_penalty(&mut self) -> f64 {
        match self.rank_allocator.as_ref().map(|a| a.orth_reg_weight) {
            Some(weight) => self.orthogonality_penalty(weight),
            None => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocator(init: usize, target: usize) -> RankAllocator {
        RankAllocator {
            tinit: 2,
            tfinal: 3,
            delta_t: 2,
            total_step: 15,
            betas: (0.85, 0.85),
            orth_reg_weight: 0.5,
            init_budget: init,
            target_budget: target,
        }
    }

    /// PEFT's schedule: flat to tinit, a cubic down to the target at total − tfinal, every
    /// deltaT steps.
    #[test]
    fn the_budget_shrinks_as_a_cubic() {
        let a = allocator(48, 24);
        assert_eq!(a.budget(0), (48, false));
        assert_eq!(a.budget(2), (48, false));
        // (48 − 24)·(1 − 1/10)³ + 24 = 41.496 → 41; step 3 is odd.
        assert_eq!(a.budget(3), (41, false));
        assert_eq!(a.budget(4), (36, true));
        assert_eq!(a.budget(12), (24, true));
        assert_eq!(a.budget(13), (24, true));
    }

    /// The lowest-scoring triplets lose their E; a triplet's score counts its A row and B
    /// column.
    #[test]
    fn the_least_important_triplets_are_masked() {
        let config = AdaloraConfig::new(2, 1, 8.0, vec![]);
        let mut parts: Vec<Adalora> = (0..2)
            .map(|s| Adalora::init(&config, (3, 2), (7, s)))
            .collect();
        for (p, scale) in parts.iter_mut().zip([1.0, 3.0]) {
            p.e.value = vec![1.0, 1.0];
            let imp = |n: usize, v: f32| Importance {
                ipt: vec![v; n],
                unc: vec![1.0; n],
            };
            // Triplet 0 of part 0 matters least, then triplet 1 of part 0.
            p.importance = Some([imp(6, scale), imp(2, scale), imp(4, scale)]);
            if scale == 1.0 {
                p.importance.as_mut().unwrap()[1].ipt = vec![0.0, 0.5];
            }
        }
        let mut refs: Vec<&mut Adalora> = parts.iter_mut().collect();
        allocator(4, 2).allocate(&mut refs, 3);
        assert_eq!(parts[0].kept, Some(vec![false, true]));
        assert_eq!(parts[0].e.value, vec![0.0, 1.0]);
        assert_eq!(parts[1].kept, Some(vec![true, true]));
    }
}
