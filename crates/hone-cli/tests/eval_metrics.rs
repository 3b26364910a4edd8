//! `hone eval score` and `hone eval generate`: the scores the reference tools give on the fixture
//! corpora from text files and from JSONL, the `--json` keys, the table, one-line errors for
//! mismatched or malformed inputs, and generation on the tiny GGUF.

mod common;

use std::path::{Path, PathBuf};

use common::{arg, fixture, hone, read_json, tiny_gguf, write};
use serde_json::{json, Value};

const KEYS: [&str; 8] = [
    "bleu",
    "rouge1",
    "rouge2",
    "rougeL",
    "bleu4_sentence_avg",
    "exact_match",
    "f1",
    "n",
];

/// The fixture corpus `lang` as text files (predictions, references) and as one JSONL file.
fn corpus_files(dir: &Path, lang: &str) -> (PathBuf, PathBuf, PathBuf, Value) {
    let golden = read_json(&fixture(&format!("metrics/{lang}.json")));
    let rows = golden["rows"].as_array().unwrap();
    let column = |key: &str| -> String {
        rows.iter()
            .map(|r| format!("{}\n", r[key].as_str().unwrap()))
            .collect()
    };
    let jsonl: String = rows
        .iter()
        .map(|r| {
            format!(
                "{}\n",
                json!({"prompt": "p", "predict": r["predict"], "label": r["label"]})
            )
        })
        .collect();
    (
        write(dir, &format!("{lang}.pred.txt"), &column("predict")),
        write(dir, &format!("{lang}.ref.txt"), &column("label")),
        write(dir, &format!("{lang}.jsonl"), &jsonl),
        golden["corpus"].clone(),
    )
}

fn score(args: &[&str]) -> Value {
    let mut all = vec!["eval", "score", "--json"];
    all.extend_from_slice(args);
    hone(&all).json()
}

fn assert_scores(got: &Value, want: &Value, keys: &[(&str, &str)]) {
    for (key, golden_key) in keys {
        let (g, w) = (
            got[key].as_f64().unwrap(),
            want[golden_key].as_f64().unwrap(),
        );
        assert!((g - w).abs() < 5e-5, "{key}: hone {g}, reference {w}");
    }
    assert_eq!(got["n"], want["n"]);
}

#[test]
fn english_text_files_and_jsonl_match_the_reference_tools() {
    let tmp = tempfile::tempdir().unwrap();
    let (pred, reference, jsonl, want) = corpus_files(tmp.path(), "en");
    let from_text = score(&["--predictions", arg(&pred), "--references", arg(&reference)]);
    let mut keys: Vec<&str> = from_text
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut want_keys = KEYS;
    want_keys.sort_unstable();
    assert_eq!(keys, want_keys);
    assert_scores(
        &from_text,
        &want,
        &[
            ("bleu", "bleu"),
            ("rouge1", "rouge1"),
            ("rouge2", "rouge2"),
            ("rougeL", "rougeL"),
            ("bleu4_sentence_avg", "bleu4_sentence_avg"),
            ("exact_match", "exact_match"),
            ("f1", "f1"),
        ],
    );
    assert_eq!(score(&["--predictions", arg(&jsonl)]), from_text);
    let stemmed = score(&["--predictions", arg(&jsonl), "--stemmer"]);
    assert_scores(
        &stemmed,
        &want,
        &[
            ("rouge1", "rouge1_stem"),
            ("rouge2", "rouge2_stem"),
            ("rougeL", "rougeL_stem"),
        ],
    );
}

#[test]
fn chinese_jsonl_matches_llamafactory_and_sacrebleu_zh() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, jsonl, want) = corpus_files(tmp.path(), "zh");
    let got = score(&["--predictions", arg(&jsonl), "--lang", "zh"]);
    assert_scores(
        &got,
        &want,
        &[
            ("bleu", "bleu"),
            ("rouge1", "llamafactory_rouge1"),
            ("rouge2", "llamafactory_rouge2"),
            ("rougeL", "llamafactory_rougeL"),
            ("bleu4_sentence_avg", "bleu4_sentence_avg"),
            ("exact_match", "exact_match"),
            ("f1", "f1"),
        ],
    );
}

#[test]
fn table_shows_every_score_to_4_decimals() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, jsonl, _) = corpus_files(tmp.path(), "en");
    let json = score(&["--predictions", arg(&jsonl)]);
    let run = hone(&["eval", "score", "--predictions", arg(&jsonl)]);
    let table = run.ok();
    assert!(
        table.starts_with(&format!("{:<20}{}\n", "rows", json["n"])),
        "{table}"
    );
    for (name, key) in [("BLEU", "bleu"), ("ROUGE-L", "rougeL"), ("F1", "f1")] {
        let line = format!("{name:<20}{:.4}\n", json[key].as_f64().unwrap());
        assert!(table.contains(&line), "{line:?} not in\n{table}");
    }
}

#[test]
fn mismatched_line_counts_name_both_files() {
    let tmp = tempfile::tempdir().unwrap();
    let pred = write(tmp.path(), "pred.txt", "a\n\nc\n");
    let reference = write(tmp.path(), "ref.txt", "a\nb\n");
    let run = hone(&[
        "eval",
        "score",
        "--predictions",
        arg(&pred),
        "--references",
        arg(&reference),
    ]);
    let err = run.error();
    let want = format!("{} has 3 lines but {} has 2", arg(&pred), arg(&reference));
    assert!(err.contains(&want), "{err}");
}

#[test]
fn malformed_jsonl_rows_are_named_with_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let good = r#"{"predict": "a", "label": "a"}"#;
    for (name, contents, problem) in [
        (
            "missing.jsonl",
            format!("{good}\n{{\"predict\": \"x\"}}\n"),
            ":2: field `label`: missing",
        ),
        (
            "number.jsonl",
            format!("{good}\n\n{{\"predict\": 7, \"label\": \"x\"}}\n"),
            ":3: field `predict`: expected a string, found a number",
        ),
        (
            "array.jsonl",
            "[1, 2]\n".to_string(),
            ":1: expected a JSON object, found an array",
        ),
        ("text.txt", "plain text\n".to_string(), ":1: not valid JSON"),
        ("empty.jsonl", String::new(), "no rows to score"),
    ] {
        let path = write(tmp.path(), name, &contents);
        let run = hone(&["eval", "score", "--predictions", arg(&path)]);
        let err = run.error();
        let want = if name == "empty.jsonl" {
            problem.to_string()
        } else {
            format!("{}{problem}", arg(&path))
        };
        assert!(err.contains(&want), "{name}: {err}");
    }
}

#[test]
fn stemmer_is_refused_for_chinese() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(
        tmp.path(),
        "p.jsonl",
        "{\"predict\": \"好\", \"label\": \"好\"}\n",
    );
    let run = hone(&[
        "eval",
        "score",
        "--predictions",
        arg(&path),
        "--lang",
        "zh",
        "--stemmer",
    ]);
    assert!(run.error().contains("--stemmer"));
}

#[test]
fn generate_on_the_tiny_gguf_writes_predictions_and_scores_them() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = [
        ("Say hello.", "", "Hello!"),
        ("Translate to French:", "cat", "chat"),
        ("What is 2 + 2?", "", "4"),
    ];
    let data: String = rows
        .iter()
        .map(|(instruction, input, output)| {
            format!(
                "{}\n",
                json!({"instruction": instruction, "input": input, "output": output})
            )
        })
        .collect();
    let data = write(tmp.path(), "eval.jsonl", &data);
    let out = tmp.path().join("generated_predictions.jsonl");
    let model = tiny_gguf();
    let args = [
        "eval",
        "generate",
        "--model",
        arg(&model),
        "--data",
        arg(&data),
        "--max-new-tokens",
        "8",
        "--out",
        arg(&out),
        "--json",
    ];
    let report = hone(&args).json();
    let written = std::fs::read_to_string(&out).unwrap();
    let predictions: Vec<Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(predictions.len(), rows.len());
    assert!(
        written.lines().all(|l| l.starts_with("{\"prompt\":")),
        "LLaMA-Factory's field order: {written}"
    );
    for (prediction, (instruction, _, output)) in predictions.iter().zip(rows) {
        let keys: Vec<&str> = prediction
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        // LLaMA-Factory's order.
        assert_eq!(keys, ["prompt", "predict", "label"]);
        assert_eq!(prediction["label"], output);
        let prompt = prediction["prompt"].as_str().unwrap();
        assert!(prompt.contains(instruction), "{prompt:?}");
        assert!(prompt.ends_with("<|im_start|>assistant\n"), "{prompt:?}");
        assert!(prediction["predict"].is_string());
    }
    let mut expected = score(&["--predictions", arg(&out)]);
    expected["rows_per_second"] = report["rows_per_second"].clone();
    // How varied the answers are, on the predictions as written.
    let answers: Vec<&str> = predictions
        .iter()
        .map(|p| p["predict"].as_str().unwrap())
        .collect();
    let diversity = hone::eval::metrics::diversity(&answers, hone::eval::metrics::Lang::En);
    expected["distinct_1"] = diversity.distinct_1.into();
    expected["distinct_2"] = diversity.distinct_2.into();
    expected["repetition_4"] = diversity.repetition_4.into();
    assert_eq!(
        report, expected,
        "the report scores the written predictions"
    );
    assert!(report["rows_per_second"].as_f64().unwrap() > 0.0);
    let again = hone(&args).json();
    assert_eq!(
        again["bleu4_sentence_avg"], report["bleu4_sentence_avg"],
        "greedy is deterministic"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), written);
    // The three prompts differ in length: one batch pads them; rows one at a time must agree.
    hone(&[&args[..], &["--batch-size", "1"]].concat()).json();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        written,
        "batched and unbatched"
    );
    // The same rows by dataset name, as LLaMA-Factory's dataset_info.json names them.
    write(
        tmp.path(),
        "dataset_info.json",
        r#"{"heldout": {"file_name": "eval.jsonl"}}"#,
    );
    let mut by_name = args.to_vec();
    by_name[5] = "heldout";
    hone(&[&by_name[..], &["--dataset-dir", arg(tmp.path())]].concat()).json();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), written, "by name");
    // Sampling: every row's sampler starts from the seed, so the batch size changes nothing.
    let sampled = |batch: &str| {
        let sampling = ["--temperature", "1.0", "--seed", "7", "--batch-size", batch];
        hone(&[&args[..], &sampling].concat()).json();
        std::fs::read_to_string(&out).unwrap()
    };
    let one_by_one = sampled("1");
    assert_ne!(
        one_by_one, written,
        "sampling at temperature 1 leaves the greedy answers"
    );
    assert_eq!(one_by_one, sampled("8"), "sampled, batched and unbatched");
}
