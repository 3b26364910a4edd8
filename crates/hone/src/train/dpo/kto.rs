//! KTO (`stage: kto`): single responses marked desirable or not (`kto_tag`) instead of pairs.
//!
//! For a micro-batch of n responses with log-ratios `lr = log π(y|x) − log π_ref(y|x)` (sums over
//! the response's tokens), the reference point is `z0 = max(0, mean(log π(y'|x) − log π_ref(y'|x)))`
//! over mismatched responses `y'` (each prompt with the previous row's response, LLaMA-Factory's
//! KL set), detached. Each response's loss is `λ_D·(1 − σ(β(lr − z0)))` when desirable and
//! `λ_U·(1 − σ(β(z0 − lr)))` when not; the micro-batch's loss is their mean (TRL 0.24's `kto_loss`,
//! as LLaMA-Factory calls it), plus LLaMA-Factory's `pref_ftx` term: `ftx · mean over desirable
//! responses of (−mean token log-probability) · n / n_desirable`.

use anyhow::Result;

use super::loss::sigmoid;
use super::{sequence_logps, weighted_head, Metrics};
use crate::data::{flatten, Row};
use crate::train::model::TrainModel;

/// The settings of a KTO loss (LLaMA-Factory's keys).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KtoLoss {
    /// `pref_beta`.
    pub beta: f64,
    /// `kto_chosen_weight` (λ_D) and `kto_rejected_weight` (λ_U).
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
    /// `pref_ftx`.
    pub ftx: f64,
}

/// One response of a micro-batch: its summed log-probability and token count, the reference's
/// summed log-probability, and its tag.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Response {
    pub sum: f64,
    pub tokens: usize,
    pub reference: f64,
    pub desirable: bool,
}

/// A micro-batch's loss, its derivative with respect to each response's summed log-probability,
/// and the rewards `β·lr` logged.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchLoss {
    pub loss: f64,
    pub d_sums: Vec<f64>,
    pub rewards: Vec<f64>,
}

impl KtoLoss {
    /// The loss of `responses` against the reference point `kl` (z0, already clamped at 0).
    pub fn batch(&self, responses: &[Response], kl: f64) -> BatchLoss {
        let beta = self.beta;
        let n = responses.len() as f64;
        let desirable = responses.iter().filter(|r| r.desirable).count() as f64;
        let mut loss = 0.0;
        let mut d_sums = Vec::with_capacity(responses.len());
        let mut rewards = Vec::with_capacity(responses.len());
        for r in responses {
            let lr = r.sum - r.reference;
            // 1 − σ(x) with x = β(lr − z0) (desirable) or β(z0 − lr); d/dlr = ∓β σ(x)(1 − σ(x)).
            let (weight, x, sign) = match r.desirable {
                true => (self.desirable_weight, beta * (lr - kl), -1.0),
                false => (self.undesirable_weight, beta * (kl - lr), 1.0),
            };
            let s = sigmoid(x);
            loss += weight * (1.0 - s) / n;
            let mut d = sign * weight * beta * s * (1.0 - s) / n;
            if self.ftx > 0.0 && r.desirable {
                let tokens = r.tokens as f64;
                loss -= self.ftx * (r.sum / tokens) / desirable * n / desirable;
                d -= self.ftx / tokens / desirable * n / desirable;
            }
            d_sums.push(d);
            rewards.push(beta * lr);
        }
        BatchLoss {
            loss,
            d_sums,
            rewards,
        }
    }
}

/// Forward and backward of a KTO micro-batch: `rows` holds each response's example and its KL
/// example in turn, `desirable` their tags, `reference` the reference's summed log-probabilities
/// in the same layout. The KL examples go forward without gradients (z0 is detached); the
/// responses' loss gradient, times `grad_scale`, is added to the trainable gradients. With
/// `train` false nothing is backpropagated (evaluation). Returns the micro-batch's metrics.
pub fn micro_batch(
    model: &mut TrainModel,
    rows: &[&Row],
    desirable: &[bool],
    reference: &[f64],
    settings: &KtoLoss,
    (grad_scale, dropout_seed, train): (f32, u64, bool),
) -> Result<Metrics> {
    let targets: Vec<&Row> = rows.iter().step_by(2).copied().collect();
    let mismatched: Vec<&Row> = rows.iter().skip(1).step_by(2).copied().collect();
    let kl_batch = flatten(&mismatched);
    let kl_policy: Vec<f64> = sequence_logps(&model.position_losses(&kl_batch)?, &kl_batch)
        .iter()
        .map(|s| s.sum)
        .collect();
    let kl_reference: Vec<f64> = reference.iter().skip(1).step_by(2).copied().collect();
    let kl = reference_point(&kl_policy, &kl_reference);
    let batch = flatten(&targets);
    let responses = |losses: &[f64]| -> Vec<Response> {
        sequence_logps(losses, &batch)
            .iter()
            .zip(reference.iter().step_by(2))
            .zip(desirable)
            .map(|((s, &r), &d)| Response {
                sum: s.sum,
                tokens: s.tokens,
                reference: r,
                desirable: d,
            })
            .collect()
    };
    let record = |responses: &[Response], out: &BatchLoss| {
        let mut metrics = Metrics::default();
        let logged: Vec<(f64, f64, bool)> = responses
            .iter()
            .zip(&out.rewards)
            .map(|(r, &reward)| (reward, r.sum, r.desirable))
            .collect();
        metrics.add_kto(out.loss, &logged, kl);
        metrics
    };
    if !train {
        let responses = responses(&model.position_losses(&batch)?);
        return Ok(record(&responses, &settings.batch(&responses, kl)));
    }
    let segments = batch.segment_ids.clone().expect("flattened");
    model.forward_backward_with(&batch, dropout_seed, |head| {
        weighted_head(head, |losses| {
            let responses = responses(losses);
            let out = settings.batch(&responses, kl);
            // ∂loss/∂(position's cross-entropy) = −∂loss/∂(its response's summed log-probability).
            let weights: Vec<f32> = segments
                .iter()
                .map(|&s| -(out.d_sums[s as usize] as f32) * grad_scale)
                .collect();
            Ok((record(&responses, &out), weights))
        })
    })
}

/// The reference point z0 of a micro-batch: the mean log-ratio of its mismatched responses,
/// clamped at 0.
pub fn reference_point(policy: &[f64], reference: &[f64]) -> f64 {
    let n = policy.len().max(1) as f64;
    let mean = policy
        .iter()
        .zip(reference)
        .map(|(p, r)| p - r)
        .sum::<f64>()
        / n;
    mean.max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn responses() -> Vec<Response> {
        [
            (-30.0, 10, -29.0, true),
            (-12.0, 4, -13.5, false),
            (-20.0, 7, -21.0, true),
        ]
        .into_iter()
        .map(|(sum, tokens, reference, desirable)| Response {
            sum,
            tokens,
            reference,
            desirable,
        })
        .collect()
    }

    /// Each loss, its gradients with respect to the summed log-probabilities and the rewards
    /// equal TRL 0.24's `kto_loss` (with LLaMA-Factory's `pref_ftx` term) on fixed inputs
    /// (fixtures/train/kto_losses.json, `scripts/golden/dpo.py`).
    #[test]
    fn losses_match_trl() {
        let golden = super::super::golden("kto_losses.json");
        let column = super::super::numbers;
        let (sums, tokens, refs) = (
            column(&golden["sums"]),
            column(&golden["tokens"]),
            column(&golden["reference_sums"]),
        );
        let tags: Vec<bool> = golden["desirable"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_bool().unwrap())
            .collect();
        let kl = reference_point(
            &column(&golden["kl_sums"]),
            &column(&golden["kl_reference_sums"]),
        );
        assert!((kl - golden["kl"].as_f64().unwrap()).abs() < 1e-12);
        let responses: Vec<Response> = (0..sums.len())
            .map(|i| Response {
                sum: sums[i],
                tokens: tokens[i] as usize,
                reference: refs[i],
                desirable: tags[i],
            })
            .collect();
        for case in golden["cases"].as_array().unwrap() {
            let s = KtoLoss {
                beta: case["beta"].as_f64().unwrap(),
                desirable_weight: case["desirable_weight"].as_f64().unwrap(),
                undesirable_weight: case["undesirable_weight"].as_f64().unwrap(),
                ftx: case["ftx"].as_f64().unwrap(),
            };
            let out = s.batch(&responses, kl);
            let name = case["name"].as_str().unwrap();
            let want = case["loss"].as_f64().unwrap();
            assert!(
                (out.loss - want).abs() < 1e-12,
                "{name}: loss {} vs {want}",
                out.loss
            );
            for (i, (d, w)) in out.d_sums.iter().zip(column(&case["d_sums"])).enumerate() {
                assert!((d - w).abs() < 1e-12, "{name}: response {i}: {d} vs {w}");
            }
            for (r, w) in out.rewards.iter().zip(column(&case["rewards"])) {
                assert!((r - w).abs() < 1e-12, "{name}: reward {r} vs {w}");
            }
        }
    }

    #[test]
    fn derivatives_match_finite_differences() {
        let s = KtoLoss {
            beta: 0.3,
            desirable_weight: 1.0,
            undesirable_weight: 1.5,
            ftx: 0.4,
        };
        let base = responses();
        let out = s.batch(&base, 0.2);
        for i in 0..base.len() {
            let e = 1e-6;
            let at = |delta: f64| {
                let mut r = base.clone();
                r[i].sum += delta;
                s.batch(&r, 0.2).loss
            };
            let numeric = (at(e) - at(-e)) / (2.0 * e);
            assert!(
                (out.d_sums[i] - numeric).abs() < 1e-7,
                "{i}: {} vs {numeric}",
                out.d_sums[i]
            );
        }
    }
}
