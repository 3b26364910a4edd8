//! ROUGE-1, ROUGE-2 and ROUGE-L F-measures as Google's rouge-score (`rouge_scorer.RougeScorer`)
//! computes them for one target and one prediction: its default tokenizer (lowercase, every run of
//! characters outside `[a-z0-9]` a separator, optionally NLTK's Porter stemmer on tokens longer
//! than 3 characters), n-gram counts clipped by the other side's, and ROUGE-L from the longest
//! common subsequence.

use super::ngrams::{lcs_len, ngram_counts};
use super::porter;

/// ROUGE F-measures of one row, on the 0-1 scale.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RougeScores {
    pub rouge1: f64,
    pub rouge2: f64,
    pub rouge_l: f64,
}

/// rouge-score's `tokenize.tokenize(text, stemmer)`.
pub fn tokenize(text: &str, use_stemmer: bool) -> Vec<String> {
    let lower = text.to_lowercase();
    lower
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|token| !token.is_empty())
        .map(|token| {
            if use_stemmer && token.len() > 3 {
                porter::stem(token)
            } else {
                token.to_string()
            }
        })
        .collect()
}

/// rouge-score's `RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer).score(target,
/// prediction)` F-measures.
pub fn rouge(target: &str, prediction: &str, use_stemmer: bool) -> RougeScores {
    let target = tokenize(target, use_stemmer);
    let prediction = tokenize(prediction, use_stemmer);
    RougeScores {
        rouge1: rouge_n(&target, &prediction, 1),
        rouge2: rouge_n(&target, &prediction, 2),
        rouge_l: rouge_l(&target, &prediction),
    }
}

/// rouge-score's `fmeasure`: harmonic mean, 0 when both are 0.
fn fmeasure(precision: f64, recall: f64) -> f64 {
    if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    }
}

fn rouge_n(target: &[String], prediction: &[String], n: usize) -> f64 {
    let target_counts = ngram_counts(target, n);
    let prediction_counts = ngram_counts(prediction, n);
    let overlap: usize = target_counts
        .iter()
        .map(|(gram, &count)| count.min(prediction_counts.get(gram).copied().unwrap_or(0)))
        .sum();
    let target_total: usize = target_counts.values().sum();
    let prediction_total: usize = prediction_counts.values().sum();
    let precision = overlap as f64 / prediction_total.max(1) as f64;
    let recall = overlap as f64 / target_total.max(1) as f64;
    fmeasure(precision, recall)
}

fn rouge_l(target: &[String], prediction: &[String]) -> f64 {
    if target.is_empty() || prediction.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(target, prediction) as f64;
    fmeasure(lcs / prediction.len() as f64, lcs / target.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_lowercases_splits_and_stems_long_tokens() {
        assert_eq!(
            tokenize("Hello, World! Café 3.5", false),
            ["hello", "world", "caf", "3", "5"]
        );
        assert_eq!(
            tokenize("the runners were running", true),
            ["the", "runner", "were", "run"]
        );
        assert!(tokenize(" ... 深度 ", false).is_empty());
    }

    #[test]
    fn counts_clip_and_lcs_orders() {
        let r = rouge("the cat", "the the the the", false);
        // 1 clipped match: p = 1/4, r = 1/2.
        assert!((r.rouge1 - fmeasure(0.25, 0.5)).abs() < 1e-15);
        assert_eq!(r.rouge2, 0.0);
        let r = rouge("a b c d", "d c b a", false);
        assert_eq!(r.rouge1, 1.0);
        assert!((r.rouge_l - 0.25).abs() < 1e-15);
        assert_eq!(rouge("", "x", false), RougeScores::default());
    }
}
