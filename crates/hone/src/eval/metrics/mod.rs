//! Text-similarity metrics between predictions and references, each equal to the reference tool
//! the field reports it with (to 4 decimals on the 0-100 scale):
//!
//! - `bleu`: corpus BLEU as sacrebleu computes it ([`sacrebleu`]);
//! - `rouge1`/`rouge2`/`rougeL`: Google's rouge-score F-measures averaged over rows ([`rouge`]), or
//!   for Chinese LLaMA-Factory's jieba + rouge-chinese ones ([`llamafactory`]);
//! - `bleu4_sentence_avg`: LLaMA-Factory's per-row NLTK BLEU-4 over characters, averaged;
//! - `exact_match`/`f1`: SQuAD's ([`squad`]), averaged;
//!
//! and, on the answers alone, how varied they are: distinct-1/2 and a repetition rate
//! ([`diversity`]).
//!
//! [`read_pairs`] reads the text files `hone eval score` takes.

pub mod diversity;
mod input;
pub mod llamafactory;
mod ngrams;
pub mod nltk_bleu;
pub mod porter;
mod pytext;
pub mod rouge;
pub mod sacrebleu;
pub mod squad;

use anyhow::{bail, Result};
use serde::Serialize;

pub use diversity::{diversity, Diversity};
pub use input::{read_pairs, Pair};

/// The language of the texts: it chooses sacrebleu's tokenizer and the ROUGE implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    /// sacrebleu `13a`, rouge-score.
    #[default]
    En,
    /// sacrebleu `zh`, LLaMA-Factory's jieba + rouge-chinese.
    Zh,
}

/// How to score.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScoreOptions {
    pub lang: Lang,
    /// rouge-score's Porter stemmer (English ROUGE only).
    pub stemmer: bool,
}

/// Corpus scores, all on the 0-100 scale.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    pub bleu: f64,
    pub rouge1: f64,
    pub rouge2: f64,
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    pub bleu4_sentence_avg: f64,
    pub exact_match: f64,
    pub f1: f64,
    /// Rows scored.
    pub n: usize,
}

/// Scores `pairs` (prediction, reference).
pub fn score(pairs: &[Pair], options: ScoreOptions) -> Result<Scores> {
    if pairs.is_empty() {
        bail!("no rows to score");
    }
    if options.stemmer && options.lang == Lang::Zh {
        bail!("--stemmer: the Porter stemmer is for English ROUGE; Chinese ROUGE (LLaMA-Factory's) does not stem");
    }
    let predictions: Vec<&str> = pairs.iter().map(|p| p.prediction.as_str()).collect();
    let references: Vec<&str> = pairs.iter().map(|p| p.reference.as_str()).collect();
    let (tokenizer, rouge_rows) = match options.lang {
        Lang::En => (
            sacrebleu::BleuTokenizer::Mteval13a,
            pairs
                .iter()
                .map(|p| scale(rouge::rouge(&p.reference, &p.prediction, options.stemmer)))
                .collect::<Vec<_>>(),
        ),
        Lang::Zh => (
            sacrebleu::BleuTokenizer::Zh,
            pairs
                .iter()
                .map(|p| llamafactory::rouge(jieba(), &p.prediction, &p.reference))
                .collect(),
        ),
    };
    let mean = |values: &mut dyn Iterator<Item = f64>| values.sum::<f64>() / pairs.len() as f64;
    Ok(Scores {
        bleu: sacrebleu::corpus_bleu(&predictions, &references, tokenizer),
        rouge1: mean(&mut rouge_rows.iter().map(|r| r.rouge1)),
        rouge2: mean(&mut rouge_rows.iter().map(|r| r.rouge2)),
        rouge_l: mean(&mut rouge_rows.iter().map(|r| r.rouge_l)),
        bleu4_sentence_avg: mean(
            &mut pairs
                .iter()
                .map(|p| llamafactory::bleu4(&p.prediction, &p.reference)),
        ),
        exact_match: mean(
            &mut pairs
                .iter()
                .map(|p| 100.0 * squad::exact_match(&p.reference, &p.prediction)),
        ),
        f1: mean(
            &mut pairs
                .iter()
                .map(|p| 100.0 * squad::f1(&p.reference, &p.prediction)),
        ),
        n: pairs.len(),
    })
}

/// The Chinese word segmenter, loaded once: its dictionary takes a while to build, and a comparison
/// scores each row on its own.
fn jieba() -> &'static jieba_rs::Jieba {
    static JIEBA: std::sync::OnceLock<jieba_rs::Jieba> = std::sync::OnceLock::new();
    JIEBA.get_or_init(jieba_rs::Jieba::new)
}

/// rouge-score's 0-1 F-measures on the 0-100 scale.
fn scale(scores: rouge::RougeScores) -> rouge::RougeScores {
    rouge::RougeScores {
        rouge1: 100.0 * scores.rouge1,
        rouge2: 100.0 * scores.rouge2,
        rouge_l: 100.0 * scores.rouge_l,
    }
}
