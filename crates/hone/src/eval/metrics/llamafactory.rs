//! The per-row similarity LLaMA-Factory reports after `do_predict`
//! (`src/llamafactory/train/sft/metric.py`, `ComputeSimilarity`): ROUGE-1/2/L from `rouge_chinese`
//! over jieba words, and BLEU-4 from NLTK's `sentence_bleu` over characters with smoothing
//! method 3. Each is ×100 and rounded to 4 decimals per row, as LLaMA-Factory does before
//! averaging.

use std::collections::HashSet;
use std::sync::LazyLock;

use jieba_rs::Jieba;
use regex::Regex;

use super::ngrams::lcs_len;
use super::rouge::RougeScores;
use super::{nltk_bleu, pytext};

/// LLaMA-Factory's `rouge-1`, `rouge-2`, `rouge-l` for one row (×100, rounded to 4 decimals).
///
/// Both sides are cut into words by jieba (accurate mode with the HMM, `jieba.cut`'s defaults) and
/// joined by spaces; if either has no word that is not whitespace, every score is 0 (LLaMA-Factory's
/// guard), otherwise `rouge_chinese.Rouge().get_scores(hypothesis, reference)`.
pub fn rouge(jieba: &Jieba, prediction: &str, label: &str) -> RougeScores {
    let hypothesis = cut(jieba, prediction).join(" ");
    let reference = cut(jieba, label).join(" ");
    if pytext::split(&hypothesis).is_empty() || pytext::split(&reference).is_empty() {
        return RougeScores::default();
    }
    let hyp_words = words(&hypothesis);
    let ref_words = words(&reference);
    let scores = RougeScores {
        rouge1: rouge_n(&hyp_words, &ref_words, 1),
        rouge2: rouge_n(&hyp_words, &ref_words, 2),
        rouge_l: rouge_l(&hyp_words, &ref_words),
    };
    RougeScores {
        rouge1: pytext::round4(scores.rouge1 * 100.0),
        rouge2: pytext::round4(scores.rouge2 * 100.0),
        rouge_l: pytext::round4(scores.rouge_l * 100.0),
    }
}

/// Python `jieba.cut(text)` (0.42.1): accurate mode with the HMM for unknown words.
///
/// jieba-rs differs in one respect: outside its dictionary it keeps a run of ASCII letters and
/// digits joined by `.`, `-` or `_` whole ("forty-two", "v1.2.3", "snake_case"), where Python
/// jieba's `re_skip` (`[a-zA-Z0-9]+(?:\.\d+)?%?`) keeps only decimals whole and cuts at every
/// other connector. Such words are cut again here as Python does.
pub fn cut<'a>(jieba: &Jieba, text: &'a str) -> Vec<&'a str> {
    let mut words = Vec::new();
    for token in jieba.cut(text, true) {
        let word = token.word;
        let identifier = word.len() > 1
            && word
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '%'));
        if identifier && !jieba.has_word(word) {
            words.extend(python_skip_split(word));
        } else {
            words.push(word);
        }
    }
    words
}

/// Python jieba's `re_skip.split(text)` without empty pieces: its matches and the gaps between.
static PYTHON_SKIP: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[a-zA-Z0-9]+(?:\.[0-9]+)?%?").expect("a valid skip pattern"));

fn python_skip_split(word: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut end = 0;
    for m in PYTHON_SKIP.find_iter(word) {
        pieces.push(&word[end..m.start()]);
        pieces.push(m.as_str());
        end = m.end();
    }
    pieces.push(&word[end..]);
    pieces.retain(|piece| !piece.is_empty());
    pieces
}

/// LLaMA-Factory's `bleu-4` for one row: `sentence_bleu([list(label)], list(pred),
/// smoothing_function=SmoothingFunction().method3)` ×100, rounded to 4 decimals.
pub fn bleu4(prediction: &str, label: &str) -> f64 {
    let hypothesis: Vec<char> = prediction.chars().collect();
    let reference: Vec<char> = label.chars().collect();
    pytext::round4(nltk_bleu::sentence_bleu_method3(&reference, &hypothesis) * 100.0)
}

/// rouge_chinese's `Rouge.cut_sent` rules: a sentence ends after 。！？? (or six dots, or two
/// ellipses) unless a closing quote follows, and after such a mark with its closing quote.
static SENTENCE_ENDS: LazyLock<[Regex; 4]> = LazyLock::new(|| {
    let re = |pattern: &str| Regex::new(pattern).expect("a valid sentence pattern");
    [
        re(r"([。！？\?])([^”’])"),
        re(r"(\.{6})([^”’])"),
        re(r"(…{2})([^”’])"),
        re(r"([。！？\?][”’])([^，。！？\?])"),
    ]
});

/// The words rouge_chinese scores: the text cut into sentences, each sentence's whitespace
/// collapsed to single spaces, then every sentence split on spaces and the words chained.
fn words(text: &str) -> Vec<String> {
    let mut text = text.to_string();
    for pattern in SENTENCE_ENDS.iter() {
        text = pattern.replace_all(&text, "${1}\n${2}").into_owned();
    }
    pytext::rstrip(&text)
        .split('\n')
        .filter(|sentence| !sentence.is_empty())
        .flat_map(|sentence| {
            let collapsed = pytext::split(sentence).join(" ");
            collapsed.split(' ').map(str::to_string).collect::<Vec<_>>()
        })
        .collect()
}

/// rouge_chinese's `f_r_p_rouge_n` F: its 1e-8 keeps 0/0 at 0 (and shifts every score slightly).
fn f_score(precision: f64, recall: f64) -> f64 {
    2.0 * ((precision * recall) / (precision + recall + 1e-8))
}

/// rouge_chinese's `rouge_n` (exclusive mode): distinct n-grams on each side.
fn rouge_n(hypothesis: &[String], reference: &[String], n: usize) -> f64 {
    let distinct = |words: &[String]| -> HashSet<Vec<String>> {
        words.windows(n).map(<[String]>::to_vec).collect()
    };
    let hyp = distinct(hypothesis);
    let reference = distinct(reference);
    let overlap = hyp.intersection(&reference).count() as f64;
    let precision = if hyp.is_empty() {
        0.0
    } else {
        overlap / hyp.len() as f64
    };
    let recall = if reference.is_empty() {
        0.0
    } else {
        overlap / reference.len() as f64
    };
    f_score(precision, recall)
}

/// rouge_chinese's `rouge_l_summary_level` (1.0.3): the LCS of all words of each side.
fn rouge_l(hypothesis: &[String], reference: &[String]) -> f64 {
    let lcs = lcs_len(reference, hypothesis) as f64;
    let recall = lcs / reference.len() as f64;
    let precision = lcs / hypothesis.len() as f64;
    f_score(precision, recall)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_after_end_marks_and_words_chain() {
        assert_eq!(
            words("你好 。 世界 ！ “ 好 ” 吗 ？"),
            ["你好", "。", "世界", "！", "“", "好", "”", "吗", "？"]
        );
        assert_eq!(words("a  b\tc"), ["a", "b", "c"]);
    }

    #[test]
    fn scores_use_distinct_ngrams_and_the_epsilon() {
        let w = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
        // Hypothesis "a a b": distinct unigrams {a, b}, both in the reference {a, b, c}.
        let r1 = rouge_n(&w("a a b"), &w("a b c"), 1);
        assert!((r1 - 2.0 * ((1.0 * (2.0 / 3.0)) / (1.0 + 2.0 / 3.0 + 1e-8))).abs() < 1e-15);
        assert_eq!(rouge_n(&w("a"), &w("a"), 2), 0.0);
        let rl = rouge_l(&w("a b c"), &w("a b c"));
        assert!((rl - 2.0 / (2.0 + 1e-8)).abs() < 1e-15);
    }

    #[test]
    fn identifiers_are_cut_as_python_jieba_cuts_them() {
        let jieba = Jieba::new();
        assert_eq!(
            cut(&jieba, "v1.2.3 snake_case forty-two 3.14% a.b"),
            [
                "v1.2", ".", "3", " ", "snake", "_", "case", " ", "forty", "-", "two", " ",
                "3.14%", " ", "a", ".", "b"
            ]
        );
    }

    #[test]
    fn whitespace_only_sides_score_zero() {
        let jieba = Jieba::new();
        assert_eq!(rouge(&jieba, "  ", "你好"), RougeScores::default());
        assert_eq!(rouge(&jieba, "你好", "").rouge1, 0.0);
        assert!(rouge(&jieba, "你好", "你好").rouge1 > 99.99);
    }
}
