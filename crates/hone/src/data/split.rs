//! Holding out a validation set, as LLaMA-Factory does with `datasets`' `train_test_split`.

use anyhow::{ensure, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Splits `items` into (train, validation) after a shuffle seeded by `seed` (the same inputs give
/// the same split). `val_size` is a fraction in (0, 1) — `ceil(val_size × n)` rows, as `datasets`
/// computes it — or a whole count of rows >= 1; 0 holds out nothing (and keeps the order).
pub fn split<T>(mut items: Vec<T>, val_size: f64, seed: u64) -> Result<(Vec<T>, Vec<T>)> {
    let n_val = validation_count(val_size, items.len())?;
    if n_val == 0 {
        return Ok((items, Vec::new()));
    }
    items.shuffle(&mut StdRng::seed_from_u64(seed));
    let train = items.split_off(n_val);
    Ok((train, items))
}

fn validation_count(val_size: f64, n: usize) -> Result<usize> {
    ensure!(
        val_size.is_finite() && val_size >= 0.0,
        "val_size {val_size}: expected a fraction in (0, 1) or a whole number of rows"
    );
    let n_val = if val_size < 1.0 {
        (val_size * n as f64).ceil() as usize
    } else {
        ensure!(
            val_size.fract() == 0.0,
            "val_size {val_size}: a number of rows must be whole (a fraction must be below 1)"
        );
        val_size as usize
    };
    ensure!(
        n_val == 0 || n_val < n,
        "val_size {val_size} holds out {n_val} of the {n} rows, leaving none for training"
    );
    Ok(n_val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_datasets() {
        assert_eq!(validation_count(0.0, 10).unwrap(), 0);
        assert_eq!(validation_count(0.1, 10).unwrap(), 1);
        assert_eq!(validation_count(0.25, 10).unwrap(), 3);
        assert_eq!(validation_count(0.01, 10).unwrap(), 1);
        assert_eq!(validation_count(1.0, 10).unwrap(), 1);
        assert_eq!(validation_count(4.0, 10).unwrap(), 4);
        for bad in [-0.5, f64::NAN, f64::INFINITY, 2.5, 10.0, 0.99] {
            assert!(validation_count(bad, 10).is_err(), "{bad}");
        }
        let err = validation_count(12.0, 10).unwrap_err().to_string();
        assert_eq!(
            err,
            "val_size 12 holds out 12 of the 10 rows, leaving none for training"
        );
    }

    #[test]
    fn split_is_a_seeded_partition() {
        let items: Vec<u32> = (0..50).collect();
        let (train, val) = split(items.clone(), 0.2, 7).unwrap();
        assert_eq!((train.len(), val.len()), (40, 10));
        let mut all: Vec<u32> = train.iter().chain(&val).copied().collect();
        all.sort();
        assert_eq!(all, items);
        assert_eq!(
            split(items.clone(), 0.2, 7).unwrap(),
            (train.clone(), val.clone())
        );
        let (_, other_val) = split(items.clone(), 0.2, 8).unwrap();
        assert_ne!(other_val, val);
        let (_, counted) = split(items.clone(), 10.0, 7).unwrap();
        assert_eq!(
            counted, val,
            "a count and the same fraction hold out the same rows"
        );
        assert_eq!(split(items.clone(), 0.0, 7).unwrap(), (items, vec![]));
    }
}
