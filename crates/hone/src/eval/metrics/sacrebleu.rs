//! Corpus BLEU exactly as sacrebleu 2.x computes it with its defaults: the `13a` (mteval-v13a)
//! tokenizer, or `zh` for Chinese; n-grams up to 4 against one reference per segment; "exp"
//! smoothing (mteval's: the k-th order with no match counts 1/2^k of a match); no effective order;
//! scores on the 0-100 scale.

use std::sync::LazyLock;

use regex::Regex;

use super::ngrams::ngram_counts;
use super::pytext;

const MAX_ORDER: usize = 4;

/// sacrebleu's tokenizer names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BleuTokenizer {
    /// `13a`: mteval-v13a's tokenization of Western text.
    Mteval13a,
    /// `zh`: every CJK character its own token, the rest as `13a`.
    Zh,
}

impl BleuTokenizer {
    /// One segment as sacrebleu's BLEU preprocesses it (trailing whitespace off, tokenized):
    /// tokens joined by single spaces.
    pub fn tokenize(self, segment: &str) -> String {
        let segment = pytext::rstrip(segment);
        match self {
            BleuTokenizer::Mteval13a => tokenize_13a(segment),
            BleuTokenizer::Zh => tokenize_zh(segment),
        }
    }
}

/// sacrebleu's `TokenizerRegexp` rules, applied in order.
static POST_TOKENIZER: LazyLock<[(Regex, &str); 4]> = LazyLock::new(|| {
    let re = |pattern: &str| Regex::new(pattern).expect("a valid tokenizer pattern");
    [
        // Most ASCII punctuation and symbols become tokens of their own.
        (re(r"([\{-~\[-`\x20-&\(-\+:-@/])"), " ${1} "),
        // Period and comma unless preceded by a digit...
        (re(r"([^0-9])([\.,])"), "${1} ${2} "),
        // ...and unless followed by one.
        (re(r"([\.,])([^0-9])"), " ${1} ${2}"),
        // A dash after a digit.
        (re(r"([0-9])(-)"), "${1} ${2} "),
    ]
});

fn post_tokenize(line: &str) -> String {
    let mut line = line.to_string();
    for (pattern, replacement) in POST_TOKENIZER.iter() {
        line = pattern.replace_all(&line, *replacement).into_owned();
    }
    pytext::split(&line).join(" ")
}

fn tokenize_13a(line: &str) -> String {
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    post_tokenize(&format!(" {line} "))
}

fn tokenize_zh(line: &str) -> String {
    let mut spaced = String::with_capacity(line.len() * 2);
    for c in pytext::strip(line).chars() {
        if is_chinese_char(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    post_tokenize(&spaced)
}

/// sacrebleu's `_UCODE_RANGES` for the `zh` tokenizer (CJK ideographs, full-width forms, CJK
/// punctuation, radicals, strokes, some symbol blocks), as Python compares them.
///
/// Two entries are written `u'\u20000'`..`u'\u2a6d6'` and `u'\u2f800'`..`u'\u2fa1d'`, which Python
/// reads as two-character strings (`\u2000` + `0`, ...); a character compared with them falls in
/// U+2001..=U+2A6D (general punctuation such as "…", arrows, math operators...) and
/// U+2F81..=U+2FA1, not in CJK Extension B. The ranges below are those effective ones.
const CHINESE_RANGES: [(u32, u32); 22] = [
    (0x3400, 0x4db5),
    (0x4e00, 0x9fa5),
    (0x9fa6, 0x9fbb),
    (0xf900, 0xfa2d),
    (0xfa30, 0xfa6a),
    (0xfa70, 0xfad9),
    (0x2001, 0x2a6d),
    (0x2f81, 0x2fa1),
    (0xff00, 0xffef),
    (0x2e80, 0x2eff),
    (0x3000, 0x303f),
    (0x31c0, 0x31ef),
    (0x2f00, 0x2fdf),
    (0x2ff0, 0x2fff),
    (0x3100, 0x312f),
    (0x31a0, 0x31bf),
    (0xfe10, 0xfe1f),
    (0xfe30, 0xfe4f),
    (0x2600, 0x26ff),
    (0x2700, 0x27bf),
    (0x3200, 0x32ff),
    (0x3300, 0x33ff),
];

fn is_chinese_char(c: char) -> bool {
    let c = c as u32;
    CHINESE_RANGES
        .iter()
        .any(|&(start, end)| (start..=end).contains(&c))
}

/// The sufficient statistics of BLEU, summed over segments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct BleuStats {
    hyp_len: usize,
    ref_len: usize,
    correct: [usize; MAX_ORDER],
    total: [usize; MAX_ORDER],
}

impl BleuStats {
    fn add_segment(&mut self, hypothesis: &str, reference: &str) {
        let hyp: Vec<&str> = pytext::split(hypothesis);
        let refs: Vec<&str> = pytext::split(reference);
        for n in 1..=MAX_ORDER {
            let ref_counts = ngram_counts(&refs, n);
            for (gram, count) in ngram_counts(&hyp, n) {
                self.total[n - 1] += count;
                self.correct[n - 1] += count.min(ref_counts.get(gram).copied().unwrap_or(0));
            }
        }
        self.hyp_len += hyp.len();
        self.ref_len += refs.len();
    }

    /// sacrebleu's `BLEU.compute_bleu` with smooth_method "exp" and effective_order off.
    fn score(&self) -> f64 {
        let bp = if self.hyp_len >= self.ref_len {
            1.0
        } else if self.hyp_len > 0 {
            (1.0 - self.ref_len as f64 / self.hyp_len as f64).exp()
        } else {
            0.0
        };
        if self.correct.iter().all(|&c| c == 0) {
            return 0.0;
        }
        let mut precisions = [0.0f64; MAX_ORDER];
        let mut smooth = 1.0f64;
        let orders = precisions
            .iter_mut()
            .zip(self.correct.iter().zip(&self.total));
        for (precision, (&correct, &total)) in orders {
            if total == 0 {
                break;
            }
            *precision = if correct == 0 {
                smooth *= 2.0;
                100.0 / (smooth * total as f64)
            } else {
                100.0 * correct as f64 / total as f64
            };
        }
        // sacrebleu's `my_log` floors log(0) (an order with no n-grams at all) to -9999999999.
        let log_sum: f64 = precisions
            .iter()
            .map(|&p| if p == 0.0 { -9_999_999_999.0 } else { p.ln() })
            .sum();
        bp * (log_sum / MAX_ORDER as f64).exp()
    }
}

/// sacrebleu's `corpus_bleu(hypotheses, [references], tokenize=...)`.score (0-100).
pub fn corpus_bleu(hypotheses: &[&str], references: &[&str], tokenizer: BleuTokenizer) -> f64 {
    assert_eq!(
        hypotheses.len(),
        references.len(),
        "one reference per hypothesis"
    );
    let mut stats = BleuStats::default();
    for (hyp, reference) in hypotheses.iter().zip(references) {
        stats.add_segment(&tokenizer.tokenize(hyp), &tokenizer.tokenize(reference));
    }
    stats.score()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_like_mteval_13a() {
        let t = |s| BleuTokenizer::Mteval13a.tokenize(s);
        assert_eq!(t("Hello, world!"), "Hello , world !");
        assert_eq!(
            t("It costs $3.50, i.e. 3,500"),
            "It costs $ 3.50 , i . e . 3,500"
        );
        assert_eq!(t("1999-2001 (approx.)"), "1999 - 2001 ( approx . )");
        assert_eq!(t("a &amp; b &lt;c&gt;"), "a & b < c >");
        assert_eq!(t("   "), "");
    }

    #[test]
    fn zh_splits_cjk_characters() {
        let t = |s| BleuTokenizer::Zh.tokenize(s);
        assert_eq!(
            t("深度学习（Deep Learning）。"),
            "深 度 学 习 （ Deep Learning ） 。"
        );
        assert_eq!(t("价格是3.5元"), "价 格 是 3.5 元");
        // sacrebleu's mistyped Extension B range: "…" (U+2026) splits, U+20000 does not.
        assert_eq!(t("a……b\u{20000}c"), "a … … b\u{20000}c");
    }

    #[test]
    fn identical_corpus_scores_100_and_disjoint_scores_0() {
        let text = ["the cat sat on the mat", "a dog ran in the park today"];
        let bleu = corpus_bleu(&text, &text, BleuTokenizer::Mteval13a);
        assert!((bleu - 100.0).abs() < 1e-9, "{bleu}");
        let other = ["x y z", "p q"];
        assert_eq!(corpus_bleu(&other, &text, BleuTokenizer::Mteval13a), 0.0);
    }

    #[test]
    fn exp_smoothing_and_brevity_penalty() {
        // A 3-token hypothesis has no 4-gram at all: that order's log is floored, so BLEU is ~0.
        let bleu = corpus_bleu(&["a b c"], &["a b c d"], BleuTokenizer::Mteval13a);
        assert!(bleu < 1e-6, "{bleu}");
        // 5 hypothesis tokens, one wrong at the end: p = 4/5, 3/4, 2/3, 1/2; ref 5 long, bp = 1.
        let bleu = corpus_bleu(&["a b c d x"], &["a b c d e"], BleuTokenizer::Mteval13a);
        let want = 100.0 * ((0.8f64 * 0.75 * (2.0 / 3.0) * 0.5).ln() / 4.0).exp();
        assert!((bleu - want).abs() < 1e-9, "{bleu} vs {want}");
        // No 4-gram match but 4-grams exist: 100/(2·total).
        let bleu = corpus_bleu(&["a b c x y"], &["a b c d e"], BleuTokenizer::Mteval13a);
        let p = [60.0f64, 50.0, 100.0 / 3.0, 100.0 / (2.0 * 2.0)];
        let want = (p.iter().map(|p| p.ln()).sum::<f64>() / 4.0).exp();
        assert!((bleu - want).abs() < 1e-9, "{bleu} vs {want}");
    }
}
