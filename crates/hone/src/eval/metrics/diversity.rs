//! How varied a model's answers are, for the guide's signals "generation lacks diversity" and
//! "repetitive output", on the tokens BLEU counts (sacrebleu's tokenizer for the language):
//!
//! - distinct-1 / distinct-2 (Li et al., 2016): distinct n-grams over all n-grams of all answers,
//!   so one answer given to every prompt scores low;
//! - repetition: per answer, the share of its 4-grams that repeat an earlier one of that answer
//!   (1 − unique/total, Welleck et al.'s seq-rep-4), averaged over the answers; an answer too
//!   short to hold a 4-gram repeats nothing.
//!
//! All on the 0-100 scale.

use std::collections::HashSet;

use serde::Serialize;

use super::sacrebleu::BleuTokenizer;
use super::Lang;

/// The n of the repetition rate's n-grams.
const REPETITION_N: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Diversity {
    pub distinct_1: f64,
    pub distinct_2: f64,
    /// Repeated 4-grams within an answer, averaged over answers.
    pub repetition_4: f64,
}

/// The figures' display names, in [`Diversity::values`] order, each with whether a higher value
/// is better (more varied answers).
pub const FIGURES: [(&str, bool); 3] = [
    ("distinct-1", true),
    ("distinct-2", true),
    ("repetition (4-gram)", false),
];

impl Diversity {
    /// The figures in [`FIGURES`] order.
    pub fn values(&self) -> [f64; 3] {
        [self.distinct_1, self.distinct_2, self.repetition_4]
    }
}

/// The diversity of `answers`, tokenized as BLEU tokenizes `lang`.
pub fn diversity(answers: &[&str], lang: Lang) -> Diversity {
    let tokenizer = match lang {
        Lang::En => BleuTokenizer::Mteval13a,
        Lang::Zh => BleuTokenizer::Zh,
    };
    let tokenized: Vec<String> = answers.iter().map(|a| tokenizer.tokenize(a)).collect();
    let tokens: Vec<Vec<&str>> = tokenized
        .iter()
        .map(|t| t.split_whitespace().collect())
        .collect();
    let repetition = tokens.iter().map(|t| repeated_share(t)).sum::<f64>();
    Diversity {
        distinct_1: distinct(&tokens, 1),
        distinct_2: distinct(&tokens, 2),
        repetition_4: 100.0 * repetition / tokens.len().max(1) as f64,
    }
}

/// Distinct `n`-grams over all `n`-grams of every answer, ×100 (0 when there are none).
fn distinct(answers: &[Vec<&str>], n: usize) -> f64 {
    let mut seen = HashSet::new();
    let mut total = 0usize;
    for grams in answers.iter().flat_map(|t| t.windows(n)) {
        seen.insert(grams);
        total += 1;
    }
    if total == 0 {
        0.0
    } else {
        100.0 * seen.len() as f64 / total as f64
    }
}

/// The share of the answer's 4-grams that repeat an earlier one (0 when it has none).
fn repeated_share(tokens: &[&str]) -> f64 {
    let grams: Vec<&[&str]> = tokens.windows(REPETITION_N).collect();
    if grams.is_empty() {
        return 0.0;
    }
    let unique: HashSet<&[&str]> = grams.iter().copied().collect();
    1.0 - unique.len() as f64 / grams.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_counts_over_all_answers_and_repetition_within_each() {
        // Tokens (13a splits the final period): "the cat sat .", "the cat ran ."
        let d = diversity(&["the cat sat.", "the cat ran."], Lang::En);
        // 1-grams: the cat sat . the cat ran . -> 5 distinct of 8.
        assert_eq!(d.distinct_1, 62.5);
        // 2-grams: the-cat cat-sat sat-. the-cat cat-ran ran-. -> 5 distinct of 6.
        assert!((d.distinct_2 - 500.0 / 6.0).abs() < 1e-12);
        assert_eq!(d.repetition_4, 0.0);

        // "a b a b a b": 4-grams abab baba abab -> 1 of 3 repeats; the short answer adds 0.
        let d = diversity(&["a b a b a b", "c"], Lang::En);
        assert!((d.repetition_4 - 100.0 / 6.0).abs() < 1e-12);
        // Chinese is counted by character, as sacrebleu's zh tokenizer splits it.
        let d = diversity(&["好好好好好"], Lang::Zh);
        assert_eq!((d.distinct_1, d.repetition_4), (20.0, 50.0));
        assert_eq!(diversity(&[""], Lang::En).distinct_1, 0.0);
    }
}
