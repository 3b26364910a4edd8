//! N-gram counts and longest common subsequences, over any token type.

use std::collections::HashMap;
use std::hash::Hash;

/// Every n-gram of `tokens` (as a slice of it) with its number of occurrences.
pub(crate) fn ngram_counts<T: Eq + Hash>(tokens: &[T], n: usize) -> HashMap<&[T], usize> {
    let mut counts = HashMap::new();
    for gram in tokens.windows(n) {
        *counts.entry(gram).or_insert(0) += 1;
    }
    counts
}

/// Length of the longest common subsequence (dynamic programming, one row at a time).
pub(crate) fn lcs_len<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            current[j + 1] = if x == y {
                previous[j] + 1
            } else {
                previous[j + 1].max(current[j])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_subsequences() {
        let counts = ngram_counts(&["a", "b", "a", "b"], 2);
        assert_eq!(counts[&["a", "b"][..]], 2);
        assert_eq!(counts[&["b", "a"][..]], 1);
        assert!(ngram_counts(&["a"], 2).is_empty());
        assert_eq!(lcs_len(&[1, 2, 3, 4, 5], &[2, 9, 4, 5, 1]), 3);
        assert_eq!(lcs_len::<u8>(&[], &[1]), 0);
    }
}
