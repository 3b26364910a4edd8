//! Hone's text metrics against the reference tools' own numbers on the fixture corpora
//! (scripts/golden/metrics.py: sacrebleu, rouge-score, LLaMA-Factory's jieba + rouge-chinese +
//! NLTK BLEU-4, the SQuAD v2.0 script), per row and for the corpus, to |Δ| < 5e-5 on 0-100.

mod common;

use common::fixture;
use hone::eval::metrics::{
    llamafactory, rouge, sacrebleu::BleuTokenizer, score, squad, Lang, Pair, ScoreOptions, Scores,
};
use serde_json::Value;

const TOLERANCE: f64 = 5e-5;

fn golden(lang: &str) -> Value {
    let path = fixture(&format!("metrics/{lang}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rows(golden: &Value) -> &Vec<Value> {
    golden["rows"].as_array().unwrap()
}

fn text<'a>(row: &'a Value, key: &str) -> &'a str {
    row[key].as_str().unwrap()
}

fn pairs(golden: &Value) -> Vec<Pair> {
    rows(golden)
        .iter()
        .map(|row| Pair {
            prediction: text(row, "predict").to_string(),
            reference: text(row, "label").to_string(),
        })
        .collect()
}

fn check(got: f64, want: &Value, what: &str) {
    let want = want.as_f64().unwrap_or_else(|| panic!("{what}: no number"));
    assert!(
        (got - want).abs() < TOLERANCE,
        "{what}: Hone {got}, reference {want}"
    );
}

#[test]
fn sacrebleu_tokens_match_per_row() {
    for (lang, tokenizer) in [("en", BleuTokenizer::Mteval13a), ("zh", BleuTokenizer::Zh)] {
        for row in rows(&golden(lang)) {
            for side in ["predict", "label"] {
                assert_eq!(
                    tokenizer.tokenize(text(row, side)),
                    text(&row["sacrebleu_tokens"], side),
                    "{lang} {side}: {}",
                    text(row, side)
                );
            }
        }
    }
}

#[test]
fn rouge_score_per_row_with_and_without_stemmer() {
    let golden = golden("en");
    for row in rows(&golden) {
        for (stem, suffix) in [(false, ""), (true, "_stem")] {
            let got = rouge::rouge(text(row, "label"), text(row, "predict"), stem);
            let what = |key: &str| format!("{key}{suffix} of {:?}", text(row, "predict"));
            check(
                100.0 * got.rouge1,
                &row[format!("rouge1{suffix}")],
                &what("rouge1"),
            );
            check(
                100.0 * got.rouge2,
                &row[format!("rouge2{suffix}")],
                &what("rouge2"),
            );
            check(
                100.0 * got.rouge_l,
                &row[format!("rougeL{suffix}")],
                &what("rougeL"),
            );
        }
    }
}

#[test]
fn jieba_rs_cuts_like_python_jieba() {
    let jieba = jieba_rs::Jieba::new();
    for lang in ["en", "zh"] {
        for row in rows(&golden(lang)) {
            for (side, words) in [("predict", "predict_words"), ("label", "label_words")] {
                let want: Vec<&str> = row["llamafactory"][words]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| w.as_str().unwrap())
                    .collect();
                assert_eq!(
                    llamafactory::cut(&jieba, text(row, side)),
                    want,
                    "{lang} {side}"
                );
            }
        }
    }
}

#[test]
fn llamafactory_rouge_and_bleu4_per_row() {
    let jieba = jieba_rs::Jieba::new();
    for lang in ["en", "zh"] {
        for row in rows(&golden(lang)) {
            let (predict, label) = (text(row, "predict"), text(row, "label"));
            let want = &row["llamafactory"];
            let what = |key: &str| format!("{lang} {key} of {predict:?} vs {label:?}");
            let got = llamafactory::rouge(&jieba, predict, label);
            check(got.rouge1, &want["rouge-1"], &what("rouge-1"));
            check(got.rouge2, &want["rouge-2"], &what("rouge-2"));
            check(got.rouge_l, &want["rouge-l"], &what("rouge-l"));
            check(
                llamafactory::bleu4(predict, label),
                &want["bleu-4"],
                &what("bleu-4"),
            );
        }
    }
}

#[test]
fn squad_exact_match_and_f1_per_row() {
    for lang in ["en", "zh"] {
        for row in rows(&golden(lang)) {
            let (predict, label) = (text(row, "predict"), text(row, "label"));
            check(
                100.0 * squad::exact_match(label, predict),
                &row["exact_match"],
                predict,
            );
            check(100.0 * squad::f1(label, predict), &row["f1"], predict);
        }
    }
}

#[test]
fn corpus_scores_english() {
    let golden = golden("en");
    for (stemmer, suffix) in [(false, ""), (true, "_stem")] {
        let options = ScoreOptions {
            lang: Lang::En,
            stemmer,
        };
        let got = score(&pairs(&golden), options).unwrap();
        let rouge = ["rouge1", "rouge2", "rougeL"].map(|k| format!("{k}{suffix}"));
        check_corpus(&got, &golden, rouge.each_ref().map(String::as_str));
    }
}

#[test]
fn corpus_scores_chinese() {
    let golden = golden("zh");
    let options = ScoreOptions {
        lang: Lang::Zh,
        stemmer: false,
    };
    let got = score(&pairs(&golden), options).unwrap();
    let rouge = [
        "llamafactory_rouge1",
        "llamafactory_rouge2",
        "llamafactory_rougeL",
    ];
    check_corpus(&got, &golden, rouge);
}

/// Every corpus score against the golden file's, the ROUGE ones under the given keys.
fn check_corpus(got: &Scores, golden: &Value, rouge_keys: [&str; 3]) {
    let corpus = &golden["corpus"];
    check(got.bleu, &corpus["bleu"], "bleu");
    check(got.rouge1, &corpus[rouge_keys[0]], "rouge1");
    check(got.rouge2, &corpus[rouge_keys[1]], "rouge2");
    check(got.rouge_l, &corpus[rouge_keys[2]], "rougeL");
    check(
        got.bleu4_sentence_avg,
        &corpus["bleu4_sentence_avg"],
        "bleu4",
    );
    check(got.exact_match, &corpus["exact_match"], "exact_match");
    check(got.f1, &corpus["f1"], "f1");
    assert_eq!(got.n, rows(golden).len());
}
