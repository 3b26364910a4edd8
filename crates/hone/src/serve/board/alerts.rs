//! What a run's log says that someone watching should not miss: a non-finite loss, a loss spike,
//! and evaluation loss rising evaluation after evaluation (the guide's sign of overfitting).
//! Each alert belongs to the log line that raised it, so a replayed log raises the same alerts.

use std::collections::VecDeque;

use serde::Serialize;
use serde_json::Value;

/// Train losses a spike is measured against.
const SPIKE_WINDOW: usize = 10;
/// Fewer earlier losses than this say too little about the usual level.
const SPIKE_MIN_HISTORY: usize = 5;
/// A loss above this many times the median of the window is a spike.
const SPIKE_FACTOR: f64 = 2.0;
/// Evaluations in a row with a higher loss than the one before that raise the overfitting alert.
pub const RISING_EVALS: usize = 3;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Alert {
    /// `non_finite`, `loss_spike`, `eval_rising` or `unreadable`.
    pub kind: &'static str,
    pub step: u64,
    pub message: String,
}

/// The state the alerts need from the lines seen so far.
#[derive(Default)]
pub struct AlertWatch {
    losses: VecDeque<f64>,
    last_eval: Option<f64>,
    rising: usize,
}

impl AlertWatch {
    /// The alerts `record` (one log line, at `step`) raises.
    pub fn observe(&mut self, step: u64, record: &Value) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for key in ["loss", "eval_loss", "grad_norm"] {
            if let Some(text) = record.get(key).and_then(Value::as_str) {
                alerts.push(Alert {
                    kind: "non_finite",
                    step,
                    message: format!("{key} is {text} at step {step}"),
                });
            }
        }
        if let Some(loss) = record.get("loss").and_then(Value::as_f64) {
            alerts.extend(self.spike(step, loss));
        }
        if let Some(eval) = record.get("eval_loss").and_then(Value::as_f64) {
            alerts.extend(self.eval(step, eval));
        }
        alerts
    }

    fn spike(&mut self, step: u64, loss: f64) -> Option<Alert> {
        let alert = (self.losses.len() >= SPIKE_MIN_HISTORY)
            .then(|| median(&self.losses))
            .filter(|&usual| loss > SPIKE_FACTOR * usual)
            .map(|usual| Alert {
                kind: "loss_spike",
                step,
                message: format!(
                    "loss spiked to {loss:.4} at step {step} ({:.1}× the median {usual:.4} of the \
                     last {} logged losses)",
                    loss / usual,
                    self.losses.len()
                ),
            });
        if self.losses.len() == SPIKE_WINDOW {
            self.losses.pop_front();
        }
        self.losses.push_back(loss);
        alert
    }

    fn eval(&mut self, step: u64, eval: f64) -> Option<Alert> {
        self.rising = match self.last_eval {
            Some(before) if eval > before => self.rising + 1,
            _ => 0,
        };
        self.last_eval = Some(eval);
        (self.rising == RISING_EVALS).then(|| Alert {
            kind: "eval_rising",
            step,
            message: format!(
                "eval_loss rose {RISING_EVALS} evaluations in a row (now {eval:.4} at step \
                 {step}): the model may be overfitting; an earlier checkpoint may be better"
            ),
        })
    }
}

fn median(values: &VecDeque<f64>) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().collect();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() % 2 {
        0 => (sorted[mid - 1] + sorted[mid]) / 2.0,
        _ => sorted[mid],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kinds(watch: &mut AlertWatch, step: u64, record: Value) -> Vec<&'static str> {
        watch
            .observe(step, &record)
            .into_iter()
            .map(|a| a.kind)
            .collect()
    }

    #[test]
    fn a_non_finite_loss_is_an_alert() {
        let mut watch = AlertWatch::default();
        assert_eq!(kinds(&mut watch, 3, json!({"loss": "NaN"})), ["non_finite"]);
        let alert = &watch.observe(4, &json!({"grad_norm": "Infinity"}))[0];
        assert_eq!(alert.message, "grad_norm is Infinity at step 4");
    }

    #[test]
    fn a_spike_is_measured_against_the_recent_median() {
        let mut watch = AlertWatch::default();
        for (step, loss) in [2.0, 1.8, 1.7, 1.6].into_iter().enumerate() {
            assert!(kinds(&mut watch, step as u64, json!({ "loss": loss })).is_empty());
        }
        // Four losses are too few to call anything a spike.
        assert!(kinds(&mut watch, 4, json!({"loss": 9.0})).is_empty());
        // Median of [2.0, 1.8, 1.7, 1.6, 9.0] is 1.8: 3.5 is 1.94×, 3.7 is 2.06×.
        assert!(kinds(&mut watch, 5, json!({"loss": 3.5})).is_empty());
        let alert = &watch.observe(6, &json!({"loss": 3.9}))[0];
        assert_eq!(alert.kind, "loss_spike");
        assert!(
            alert.message.contains("3.9000 at step 6"),
            "{}",
            alert.message
        );
    }

    #[test]
    fn eval_loss_rising_three_times_in_a_row_raises_one_alert() {
        let mut watch = AlertWatch::default();
        let evals = [1.5, 1.4, 1.45, 1.5, 1.3, 1.35, 1.4, 1.41, 1.42];
        let raised: Vec<u64> = evals
            .iter()
            .enumerate()
            .filter(|(step, &eval)| {
                !kinds(&mut watch, *step as u64, json!({ "eval_loss": eval })).is_empty()
            })
            .map(|(step, _)| step as u64)
            .collect();
        // 1.3 breaks the first streak after two rises; 1.35, 1.4, 1.41 are three; 1.42 is the
        // same streak going on, not a new alert.
        assert_eq!(raised, [7]);
    }
}
