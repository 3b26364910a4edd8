//! Learning-rate schedules with transformers' `get_scheduler` semantics: the multiplier of each
//! group's base learning rate is the `lr_lambda` of `get_*_schedule_with_warmup`, evaluated at the
//! number of scheduler steps taken so far (0 for the first optimizer step, so a warmup starts at
//! learning rate 0, as in transformers).

use std::f64::consts::PI;
use std::str::FromStr;

use anyhow::{bail, Error};
use serde::{Deserialize, Serialize};

/// The schedule types, named as transformers' `SchedulerType` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear warmup, then linear decay to 0 at `training_steps`.
    Linear,
    /// Linear warmup, then half a cosine period down to 0 at `training_steps` (rising again
    /// beyond it, as transformers' does).
    Cosine,
    /// Always 1; like transformers, ignores the warmup.
    Constant,
    /// Linear warmup, then 1.
    ConstantWithWarmup,
}

impl FromStr for ScheduleKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "linear" => ScheduleKind::Linear,
            "cosine" => ScheduleKind::Cosine,
            "constant" => ScheduleKind::Constant,
            "constant_with_warmup" => ScheduleKind::ConstantWithWarmup,
            _ => bail!(
                "unknown learning-rate schedule {s:?} \
                 (expected linear, cosine, constant or constant_with_warmup)"
            ),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub warmup_steps: u64,
    pub training_steps: u64,
}

impl Schedule {
    /// The learning-rate multiplier for the optimizer step taken after `step` scheduler steps.
    pub fn multiplier(&self, step: u64) -> f64 {
        let (step, warmup, total) = (
            step as i64,
            self.warmup_steps as i64,
            self.training_steps as i64,
        );
        if self.kind == ScheduleKind::Constant {
            return 1.0;
        }
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        let decay_steps = (total - warmup).max(1) as f64;
        match self.kind {
            ScheduleKind::Constant | ScheduleKind::ConstantWithWarmup => 1.0,
            ScheduleKind::Linear => ((total - step) as f64 / decay_steps).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (step - warmup) as f64 / decay_steps;
                (0.5 * (1.0 + (PI * progress).cos())).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_like_transformers() {
        assert_eq!(
            "constant_with_warmup".parse::<ScheduleKind>().unwrap(),
            ScheduleKind::ConstantWithWarmup
        );
        let err = "cosine_with_restarts".parse::<ScheduleKind>().unwrap_err();
        assert!(
            err.to_string().contains("\"cosine_with_restarts\""),
            "{err}"
        );
    }
}
