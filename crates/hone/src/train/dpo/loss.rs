//! The preference losses of one pair, their derivatives with respect to the sequence
//! log-probabilities, and the implicit rewards that are logged — in f64, as closed forms.
//!
//! Notation: `π_w`, `π_l` are the policy's log-probabilities of the chosen (winning) and rejected
//! (losing) responses, `ρ_w`, `ρ_l` the reference's; each is a sum over the response's tokens, or
//! the mean for IPO, ORPO and SimPO (as LLaMA-Factory and TRL compute them). `h = (π_w − π_l) −
//! (ρ_w − ρ_l)` and `log σ(x) = −softplus(−x)`.
//!
//! | `pref_loss` | loss | reward logged |
//! |---|---|---|
//! | sigmoid | `−(1−ε)·log σ(βh) − ε·log σ(−βh)` | `β(π − ρ)` |
//! | hinge | `max(0, 1 − βh)` | `β(π − ρ)` |
//! | ipo | `(h − 1/(2β))²` | `β(π − ρ)` |
//! | orpo | `−π_w − β·log σ(o)`, `o = π_w − π_l − log(1−e^{π_w}) + log(1−e^{π_l})` | `β·π` |
//! | simpo | `−log σ(β(π_w − π_l) − γ)` | `β·π` |
//!
//! `pref_ftx` adds `ftx · (−mean token log-probability of the chosen response)` to every loss.
//! LLaMA-Factory passes its `pref_loss` to TRL 0.20–0.24 in a way that silently trains hinge and
//! IPO as sigmoid; here each is its own formula (TRL's `dpo_loss` with that `loss_type`).

use crate::train::config::PrefLoss;

/// The settings of a preference loss (LLaMA-Factory's keys).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PreferenceLoss {
    pub loss: PrefLoss,
    /// `pref_beta`.
    pub beta: f64,
    /// `dpo_label_smoothing` (sigmoid only).
    pub label_smoothing: f64,
    /// `pref_ftx`.
    pub ftx: f64,
    /// `simpo_gamma`.
    pub simpo_gamma: f64,
}

/// A response's log-probability: the sum over its labelled tokens and their count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SequenceLogp {
    pub sum: f64,
    pub tokens: usize,
}

impl SequenceLogp {
    fn mean(self) -> f64 {
        self.sum / self.tokens as f64
    }
}

/// One pair's inputs: the policy's log-probabilities and, for the losses that use one, the
/// reference's (in the same form the loss takes: sums, or means for IPO).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairLogps {
    pub chosen: SequenceLogp,
    pub rejected: SequenceLogp,
    pub reference: Option<(f64, f64)>,
}

/// One pair's loss, its derivative with respect to each response's *summed* log-probability,
/// and what is logged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairLoss {
    pub loss: f64,
    pub d_chosen: f64,
    pub d_rejected: f64,
    pub reward_chosen: f64,
    pub reward_rejected: f64,
    /// The policy's log-probabilities as the loss takes them (sums, or means).
    pub logp_chosen: f64,
    pub logp_rejected: f64,
    /// ORPO's two parts, `−π_w` and `−log σ(o)`, logged as `sft_loss` and `odds_ratio_loss`.
    pub orpo_parts: Option<(f64, f64)>,
}

impl PreferenceLoss {
    /// The log-probability of a response in the form this loss takes it.
    pub fn logp(&self, s: SequenceLogp) -> f64 {
        if self.loss.averages_tokens() {
            s.mean()
        } else {
            s.sum
        }
    }

    /// The loss of one pair (see the module comment).
    pub fn pair(&self, p: PairLogps) -> PairLoss {
        let beta = self.beta;
        let (w, l) = (self.logp(p.chosen), self.logp(p.rejected));
        let mut orpo_parts = None;
        // (loss, ∂/∂w, ∂/∂l, reward_w, reward_l), w and l in the loss's form.
        let (mut loss, mut dw, mut dl, rw, rl) = match self.loss {
            PrefLoss::Sigmoid | PrefLoss::Hinge | PrefLoss::Ipo => {
                let (ref_w, ref_l) = p
                    .reference
                    .expect("reference log-probabilities for a reference-based loss");
                let h = (w - l) - (ref_w - ref_l);
                let (loss, dh) = match self.loss {
                    PrefLoss::Sigmoid => {
                        let eps = self.label_smoothing;
                        let loss = (1.0 - eps) * softplus(-beta * h) + eps * softplus(beta * h);
                        let dh = -(1.0 - eps) * beta * sigmoid(-beta * h)
                            + eps * beta * sigmoid(beta * h);
                        (loss, dh)
                    }
                    PrefLoss::Hinge => {
                        let margin = 1.0 - beta * h;
                        if margin > 0.0 {
                            (margin, -beta)
                        } else {
                            (0.0, 0.0)
                        }
                    }
                    _ => {
                        let d = h - 1.0 / (2.0 * beta);
                        (d * d, 2.0 * d)
                    }
                };
                (loss, dh, -dh, beta * (w - ref_w), beta * (l - ref_l))
            }
            PrefLoss::Orpo => {
                // d/dx log(1 − eˣ) = −eˣ/(1 − eˣ), so ∂o/∂w = 1/(1 − e^w), ∂o/∂l = −1/(1 − e^l).
                let odds = (w - l) - (log1m_exp(w) - log1m_exp(l));
                let ratio_loss = softplus(-odds);
                let d_odds = -beta * sigmoid(-odds);
                orpo_parts = Some((-w, ratio_loss));
                let dw = -1.0 + d_odds / -w.exp_m1();
                let dl = -d_odds / -l.exp_m1();
                (-w + beta * ratio_loss, dw, dl, beta * w, beta * l)
            }
            PrefLoss::Simpo => {
                let z = beta * (w - l) - self.simpo_gamma;
                let dz = -beta * sigmoid(-z);
                (softplus(-z), dz, -dz, beta * w, beta * l)
            }
        };
        if self.loss.averages_tokens() {
            dw /= p.chosen.tokens as f64;
            dl /= p.rejected.tokens as f64;
        }
        if self.ftx > 0.0 {
            loss -= self.ftx * p.chosen.mean();
            dw -= self.ftx / p.chosen.tokens as f64;
        }
        PairLoss {
            loss,
            d_chosen: dw,
            d_rejected: dl,
            reward_chosen: rw,
            reward_rejected: rl,
            logp_chosen: w,
            logp_rejected: l,
            orpo_parts,
        }
    }
}

pub(super) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log(1 + eˣ)` without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// `log(1 − eˣ)` for `x < 0` (a log-probability), as torch's `log1p(−exp(x))`.
fn log1m_exp(x: f64) -> f64 {
    (-x.exp()).ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(loss: PrefLoss) -> PreferenceLoss {
        PreferenceLoss {
            loss,
            beta: 0.1,
            label_smoothing: 0.0,
            ftx: 0.0,
            simpo_gamma: 0.5,
        }
    }

    fn logps(w: f64, l: f64, reference: Option<(f64, f64)>) -> PairLogps {
        PairLogps {
            chosen: SequenceLogp { sum: w, tokens: 4 },
            rejected: SequenceLogp { sum: l, tokens: 5 },
            reference,
        }
    }

    #[test]
    fn sigmoid_dpo_starts_at_ln_2_when_the_policy_is_the_reference() {
        let pair = settings(PrefLoss::Sigmoid).pair(logps(-7.0, -9.0, Some((-7.0, -9.0))));
        assert!((pair.loss - std::f64::consts::LN_2).abs() < 1e-15);
        assert!((pair.d_chosen + 0.05).abs() < 1e-15, "−β/2");
        assert_eq!((pair.reward_chosen, pair.reward_rejected), (0.0, 0.0));
    }

    /// Each loss, its gradients with respect to the summed log-probabilities and the rewards equal
    /// TRL's `dpo_loss` (sigmoid, hinge, ipo) and LLaMA-Factory's formulas (orpo, simpo, pref_ftx)
    /// on fixed inputs (fixtures/train/dpo_losses.json, `scripts/golden/dpo.py`).
    #[test]
    fn losses_match_trl_and_llamafactory() {
        let golden = super::super::golden("dpo_losses.json");
        let column = super::super::numbers;
        let (tc, tr) = (
            column(&golden["tokens_chosen"]),
            column(&golden["tokens_rejected"]),
        );
        let (sc, sr) = (
            column(&golden["sum_chosen"]),
            column(&golden["sum_rejected"]),
        );
        let (rc, rr) = (
            column(&golden["reference_sum_chosen"]),
            column(&golden["reference_sum_rejected"]),
        );
        for case in golden["cases"].as_array().unwrap() {
            let loss: PrefLoss = serde_json::from_value(case["pref_loss"].clone()).unwrap();
            let s = PreferenceLoss {
                loss,
                beta: case["pref_beta"].as_f64().unwrap(),
                label_smoothing: case["dpo_label_smoothing"].as_f64().unwrap(),
                ftx: case["pref_ftx"].as_f64().unwrap(),
                simpo_gamma: case["simpo_gamma"].as_f64().unwrap(),
            };
            let name = case["name"].as_str().unwrap();
            for k in 0..sc.len() {
                let chosen = SequenceLogp {
                    sum: sc[k],
                    tokens: tc[k] as usize,
                };
                let rejected = SequenceLogp {
                    sum: sr[k],
                    tokens: tr[k] as usize,
                };
                let reference = loss.uses_reference().then(|| {
                    let form = |sum: f64, tokens: f64| match loss.averages_tokens() {
                        true => sum / tokens,
                        false => sum,
                    };
                    (form(rc[k], tc[k]), form(rr[k], tr[k]))
                });
                let pair = s.pair(PairLogps {
                    chosen,
                    rejected,
                    reference,
                });
                let close = |ours: f64, key: &str| {
                    let want = case[key][k].as_f64().unwrap();
                    assert!(
                        (ours - want).abs() <= 1e-12 * want.abs().max(1.0),
                        "{name} pair {k}: {key} {ours} vs {want}"
                    );
                };
                close(pair.loss, "losses");
                close(pair.d_chosen, "d_sum_chosen");
                close(pair.d_rejected, "d_sum_rejected");
                close(pair.reward_chosen, "rewards_chosen");
                close(pair.reward_rejected, "rewards_rejected");
            }
        }
    }

    /// Every derivative against a central difference of the loss itself.
    #[test]
    fn derivatives_match_finite_differences() {
        let mut cases: Vec<PreferenceLoss> = [
            PrefLoss::Sigmoid,
            PrefLoss::Hinge,
            PrefLoss::Ipo,
            PrefLoss::Orpo,
            PrefLoss::Simpo,
        ]
        .into_iter()
        .map(settings)
        .collect();
        cases.push(PreferenceLoss {
            label_smoothing: 0.2,
            ftx: 0.7,
            ..settings(PrefLoss::Sigmoid)
        });
        cases.push(PreferenceLoss {
            ftx: 0.3,
            ..settings(PrefLoss::Orpo)
        });
        let reference = Some((-6.0, -8.5));
        for s in cases {
            let (w, l) = (-6.3, -8.1);
            let f = |w: f64, l: f64| s.pair(logps(w, l, reference)).loss;
            let pair = s.pair(logps(w, l, reference));
            let e = 1e-6;
            let dw = (f(w + e, l) - f(w - e, l)) / (2.0 * e);
            let dl = (f(w, l + e) - f(w, l - e)) / (2.0 * e);
            assert!(
                (pair.d_chosen - dw).abs() < 1e-6,
                "{s:?}: {} vs {dw}",
                pair.d_chosen
            );
            assert!(
                (pair.d_rejected - dl).abs() < 1e-6,
                "{s:?}: {} vs {dl}",
                pair.d_rejected
            );
        }
    }
}
