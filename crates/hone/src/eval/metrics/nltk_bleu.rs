//! NLTK's `sentence_bleu(references=[reference], hypothesis, smoothing_function=
//! SmoothingFunction().method3)` with the default uniform 4-gram weights (nltk 3.10), over any
//! token type (LLaMA-Factory passes characters).

use std::hash::Hash;

use super::ngrams::ngram_counts;

const MAX_ORDER: usize = 4;

/// NLTK's `modified_precision`, unreduced: (clipped matches, max(1, hypothesis n-grams)).
fn modified_precision<T: Eq + Hash>(reference: &[T], hypothesis: &[T], n: usize) -> (usize, usize) {
    let hyp = ngram_counts(hypothesis, n);
    let reference = ngram_counts(reference, n);
    let clipped = hyp
        .iter()
        .map(|(gram, &count)| count.min(reference.get(gram).copied().unwrap_or(0)))
        .sum();
    (clipped, hyp.values().sum::<usize>().max(1))
}

/// The sentence BLEU on the 0-1 scale.
///
/// As NLTK: 0 when no unigram matches; an order with no match gets precision 1/(2^k·denominator)
/// for the k-th such order (method 3, NIST's geometric smoothing); brevity penalty
/// exp(1 - r/c) when the hypothesis is not longer than the reference.
pub fn sentence_bleu_method3<T: Eq + Hash>(reference: &[T], hypothesis: &[T]) -> f64 {
    let precisions: Vec<(usize, usize)> = (1..=MAX_ORDER)
        .map(|n| modified_precision(reference, hypothesis, n))
        .collect();
    if precisions[0].0 == 0 {
        return 0.0;
    }
    let (hyp_len, ref_len) = (hypothesis.len(), reference.len());
    let brevity_penalty = if hyp_len > ref_len {
        1.0
    } else {
        (1.0 - ref_len as f64 / hyp_len as f64).exp()
    };
    let mut smoothing_exponent = 1;
    let log_terms: Vec<f64> = precisions
        .iter()
        .map(|&(numerator, denominator)| {
            let p = if numerator == 0 {
                let p = 1.0 / ((1u64 << smoothing_exponent) * denominator as u64) as f64;
                smoothing_exponent += 1;
                p
            } else {
                numerator as f64 / denominator as f64
            };
            0.25 * p.ln()
        })
        .collect();
    brevity_penalty * exact_sum(&log_terms).exp()
}

/// The sum of a few floats rounded once, as Python's `math.fsum` (Neumaier's compensation is
/// exact for the four terms here unless they span over 2^53 in magnitude).
fn exact_sum(terms: &[f64]) -> f64 {
    let mut sum = 0.0f64;
    let mut compensation = 0.0f64;
    for &t in terms {
        let next = sum + t;
        compensation += if sum.abs() >= t.abs() {
            (sum - next) + t
        } else {
            (t - next) + sum
        };
        sum = next;
    }
    sum + compensation
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> Vec<char> {
        s.chars().collect()
    }

    #[test]
    fn identical_is_one_and_no_unigram_match_is_zero() {
        assert!((sentence_bleu_method3(&chars("abcdef"), &chars("abcdef")) - 1.0).abs() < 1e-15);
        assert_eq!(sentence_bleu_method3(&chars("abc"), &chars("xyz")), 0.0);
        assert_eq!(sentence_bleu_method3(&chars("abc"), &chars("")), 0.0);
        assert_eq!(sentence_bleu_method3(&chars(""), &chars("abc")), 0.0);
    }

    #[test]
    fn short_hypotheses_are_smoothed_per_missing_order() {
        // "ab" vs "abc": p1 = 2/2, p2 = 1/1, p3 = 0/max(1,0) → 1/2, p4 → 1/4; bp = exp(1 - 3/2).
        let got = sentence_bleu_method3(&chars("abc"), &chars("ab"));
        let want = (1.0f64 - 1.5).exp() * (0.25 * (0.5f64 * 0.25).ln()).exp();
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
    }
}
