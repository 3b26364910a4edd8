//! Exact match and token F1 as the official SQuAD v2.0 evaluation script computes them: answers
//! normalised (lowercase, ASCII punctuation removed, the articles a/an/the removed, whitespace
//! collapsed); F1 over the bag of normalised words; an empty side scores 1 only when both are empty.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

use super::pytext;

static ARTICLES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(a|an|the)\b").expect("a valid article pattern"));

/// SQuAD's `normalize_answer`.
pub fn normalize_answer(text: &str) -> String {
    let lower = text.to_lowercase();
    let no_punctuation: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let no_articles = ARTICLES.replace_all(&no_punctuation, " ");
    pytext::split(&no_articles).join(" ")
}

/// SQuAD's `compute_exact` (1 or 0).
pub fn exact_match(reference: &str, prediction: &str) -> f64 {
    f64::from(u8::from(
        normalize_answer(reference) == normalize_answer(prediction),
    ))
}

/// SQuAD's `compute_f1`.
pub fn f1(reference: &str, prediction: &str) -> f64 {
    let reference = normalize_answer(reference);
    let prediction = normalize_answer(prediction);
    let gold = pytext::split(&reference);
    let pred = pytext::split(&prediction);
    if gold.is_empty() || pred.is_empty() {
        return f64::from(u8::from(gold == pred));
    }
    let mut gold_counts: HashMap<&str, usize> = HashMap::new();
    for word in &gold {
        *gold_counts.entry(word).or_insert(0) += 1;
    }
    let mut same = 0usize;
    for word in &pred {
        if let Some(count) = gold_counts.get_mut(word) {
            if *count > 0 {
                *count -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pred.len() as f64;
    let recall = same as f64 / gold.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_drops_case_punctuation_and_articles() {
        assert_eq!(
            normalize_answer("The  Cat's hat, an apple!"),
            "cats hat apple"
        );
        assert_eq!(normalize_answer("theatre"), "theatre");
        assert_eq!(exact_match("The answer.", "answer"), 1.0);
    }

    #[test]
    fn f1_counts_shared_words_and_empty_sides() {
        assert!(
            (f1("w b c d", "b c x") - 2.0 * (2.0 / 3.0) * 0.5 / (2.0 / 3.0 + 0.5)).abs() < 1e-15
        );
        assert_eq!(f1("", ""), 1.0);
        assert_eq!(f1("the", ""), 1.0); // both normalise to nothing
        assert_eq!(f1("x", ""), 0.0);
        assert_eq!(f1("x x", "x"), 2.0 * 0.5 / 1.5);
    }
}
