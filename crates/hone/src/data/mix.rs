//! Mixing several datasets into one training set (LLaMA-Factory's `mix_strategy` and
//! `interleave_probs`), the guide's remedy for catastrophic forgetting: general data interleaved
//! with the task's.
//!
//! The strategies follow `datasets.interleave_datasets` on map-style datasets:
//! - `concat`: the datasets one after another;
//! - `interleave_under` (`first_exhausted`) and `interleave_over` (`all_exhausted`): without
//!   probabilities, round robin — one row of each dataset in turn — until the shortest runs out
//!   (under), or until the longest does, the shorter ones starting over (over); with
//!   probabilities, each row's dataset is drawn at random, and the mix stops before the draw
//!   after any dataset ran out (under) or after every one did at least once (over), a dataset
//!   that ran out starting over;
//! - `interleave_once` (`all_exhausted_without_replacement`): every row exactly once, the order of
//!   datasets drawn as above.
//!
//! The draws use Hone's seeded generator, not numpy's: the same `seed` gives the same mix in Hone,
//! not the same rows as LLaMA-Factory's.

use std::fmt;

use anyhow::{ensure, Result};
use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

/// LLaMA-Factory's `mix_strategy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MixStrategy {
    #[default]
    Concat,
    InterleaveUnder,
    InterleaveOver,
    InterleaveOnce,
}

impl fmt::Display for MixStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MixStrategy::Concat => "concat",
            MixStrategy::InterleaveUnder => "interleave_under",
            MixStrategy::InterleaveOver => "interleave_over",
            MixStrategy::InterleaveOnce => "interleave_once",
        })
    }
}

/// The mixed rows and how many each dataset gave (repeats counted).
pub struct Mixed<T> {
    pub items: Vec<T>,
    pub taken: Vec<usize>,
}

/// Mixes `datasets` by `strategy`; `probs` (one per dataset, summing to 1) draw the datasets at
/// random, seeded by `seed`, in the interleaving strategies.
pub fn mix<T: Clone>(
    datasets: Vec<Vec<T>>,
    strategy: MixStrategy,
    probs: Option<&[f64]>,
    seed: u64,
) -> Result<Mixed<T>> {
    let lengths: Vec<usize> = datasets.iter().map(Vec::len).collect();
    if let Some(probs) = probs {
        ensure!(
            probs.len() == datasets.len(),
            "interleave_probs: {} probabilities for {} datasets",
            probs.len(),
            datasets.len()
        );
    }
    let order = match strategy {
        MixStrategy::Concat => lengths
            .iter()
            .enumerate()
            .flat_map(|(d, &n)| (0..n).map(move |i| (d, i)))
            .collect(),
        _ if lengths.contains(&0) => Vec::new(),
        _ => match probs {
            None => round_robin(&lengths, strategy),
            Some(probs) => drawn(&lengths, strategy, probs, seed)?,
        },
    };
    let mut taken = vec![0; datasets.len()];
    let items = order
        .into_iter()
        .map(|(d, i)| {
            taken[d] += 1;
            datasets[d][i].clone()
        })
        .collect();
    Ok(Mixed { items, taken })
}

/// `(dataset, row)` in turn: one row of each dataset per round.
fn round_robin(lengths: &[usize], strategy: MixStrategy) -> Vec<(usize, usize)> {
    let rounds = match strategy {
        MixStrategy::InterleaveUnder => *lengths.iter().min().expect("at least one dataset"),
        _ => *lengths.iter().max().expect("at least one dataset"),
    };
    let mut order = Vec::new();
    for round in 0..rounds {
        for (d, &n) in lengths.iter().enumerate() {
            // `interleave_once` takes each row once: a shorter dataset leaves its turn out.
            if strategy == MixStrategy::InterleaveOnce && round >= n {
                continue;
            }
            order.push((d, round % n));
        }
    }
    order
}

/// `(dataset, row)` with each row's dataset drawn by `probs`.
fn drawn(
    lengths: &[usize],
    strategy: MixStrategy,
    probs: &[f64],
    seed: u64,
) -> Result<Vec<(usize, usize)>> {
    let mut weights = WeightedIndex::new(probs).map_err(|e| {
        anyhow::anyhow!("interleave_probs: {e} (expected non-negative numbers, not all 0)")
    })?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cursor = vec![0; lengths.len()];
    let mut exhausted = vec![false; lengths.len()];
    let mut order = Vec::new();
    loop {
        let done = match strategy {
            MixStrategy::InterleaveUnder => exhausted.iter().any(|&e| e),
            _ => exhausted.iter().all(|&e| e),
        };
        if done {
            return Ok(order);
        }
        let d = weights.sample(&mut rng);
        order.push((d, cursor[d]));
        cursor[d] += 1;
        if cursor[d] == lengths[d] {
            exhausted[d] = true;
            cursor[d] = 0;
            if strategy == MixStrategy::InterleaveOnce {
                // Drawn no more: each of its rows was taken once.
                if weights.update_weights(&[(d, &0.0)]).is_err() {
                    return Ok(order);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Vec<Vec<&'static str>> {
        vec![vec!["a0", "a1", "a2", "a3"], vec!["b0", "b1"]]
    }

    fn mixed(strategy: MixStrategy, probs: Option<&[f64]>) -> (Vec<&'static str>, Vec<usize>) {
        let m = mix(sources(), strategy, probs, 7).unwrap();
        (m.items, m.taken)
    }

    #[test]
    fn round_robin_stops_at_the_shortest_or_the_longest_as_datasets_does() {
        assert_eq!(
            mixed(MixStrategy::Concat, None).0,
            ["a0", "a1", "a2", "a3", "b0", "b1"]
        );
        assert_eq!(
            mixed(MixStrategy::InterleaveUnder, None),
            (vec!["a0", "b0", "a1", "b1"], vec![2, 2])
        );
        assert_eq!(
            mixed(MixStrategy::InterleaveOver, None),
            (
                vec!["a0", "b0", "a1", "b1", "a2", "b0", "a3", "b1"],
                vec![4, 4]
            )
        );
        assert_eq!(
            mixed(MixStrategy::InterleaveOnce, None),
            (vec!["a0", "b0", "a1", "b1", "a2", "a3"], vec![4, 2])
        );
    }

    #[test]
    fn drawn_mixes_follow_the_stopping_rules() {
        let probs = [0.5, 0.5];
        let (under, taken) = mixed(MixStrategy::InterleaveUnder, Some(&probs));
        // Stops right after the first dataset runs out: one of them was taken whole.
        assert!(taken[0] == 4 || taken[1] == 2, "{under:?}");
        assert!(taken[0] <= 4 && taken[1] <= 2);
        let (over, taken) = mixed(MixStrategy::InterleaveOver, Some(&probs));
        assert!(taken[0] >= 4 && taken[1] >= 2, "{over:?}");
        let (mut once, taken) = mixed(MixStrategy::InterleaveOnce, Some(&probs));
        assert_eq!(taken, [4, 2]);
        once.sort_unstable();
        assert_eq!(once, ["a0", "a1", "a2", "a3", "b0", "b1"]);
        // Seeded: the same mix every time.
        assert_eq!(mixed(MixStrategy::InterleaveOver, Some(&probs)).0, over);
    }

    #[test]
    fn probabilities_weigh_the_draws() {
        let big = vec![(0..1000).collect::<Vec<u32>>(), (0..1000).collect()];
        let m = mix(big, MixStrategy::InterleaveUnder, Some(&[0.8, 0.2]), 1).unwrap();
        // The first dataset runs out after ~1000 of its rows and ~250 of the second's.
        assert_eq!(m.taken[0], 1000);
        assert!((150..350).contains(&m.taken[1]), "{:?}", m.taken);
    }

    #[test]
    fn bad_probabilities_are_refused() {
        let error = mix(sources(), MixStrategy::InterleaveUnder, Some(&[1.0]), 0)
            .err()
            .unwrap();
        assert_eq!(
            error.to_string(),
            "interleave_probs: 1 probabilities for 2 datasets"
        );
        assert!(mix(sources(), MixStrategy::InterleaveOver, Some(&[0.0, 0.0]), 0).is_err());
    }
}
