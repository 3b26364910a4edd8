//! `hone eval perplexity`: the figure transformers gives on the default model and on the tiny HF
//! model, JSONL and plain-text data, and one-line errors for malformed data files.

mod common;

use std::path::Path;

use candle_core::{DType, Device, D};
use common::{arg, char_text, fixture, hone, read_json, real_model, tiny_gguf, tiny_hf_dir, write};
use hone::io::gguf::GgufFile;
use hone::tokenizer::Tokenizer;
use serde_json::{json, Value};

fn perplexity(model: &Path, data: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "eval",
        "perplexity",
        "--model",
        arg(model),
        "--data",
        arg(data),
        "--json",
    ];
    args.extend_from_slice(extra);
    hone(&args).json()
}

fn assert_close(got: f64, want: f64, rel: f64, what: &str) {
    assert!(
        (got - want).abs() <= rel * want.abs(),
        "{what}: got {got}, want {want} (relative tolerance {rel})"
    );
}

/// `--exact` (f32) gives transformers' figure; the default, weights as stored (prompts on the bf16
/// units where the CPU has them), is within the 0.5% the fast path promises.
#[test]
fn default_model_matches_transformers() {
    let Some(model) = real_model() else { return };
    let golden = read_json(&fixture("smollm2/perplexity.json"));
    let max = golden["max_tokens"].to_string();
    let want = golden["perplexity"].as_f64().unwrap();
    for (extra, tolerance) in [(Some("--exact"), 1e-4), (None, 5e-3)] {
        let mut args = vec!["--max-length", &max];
        args.extend(extra);
        let report = perplexity(&model, &fixture("smollm2/ppl.jsonl"), &args);
        assert_eq!(report["n_tokens"], golden["n_tokens_predicted"]);
        assert_eq!(
            report["n_documents"],
            json!(golden["rows"].as_array().unwrap().len())
        );
        let got = report["perplexity"].as_f64().unwrap();
        assert_close(got, want, tolerance, &format!("perplexity {extra:?}"));
    }
}

/// `--json` also reports the guide's figures, `evaluate`'s per-text `perplexities` and their
/// `mean_perplexity` (within the 3e-4 that the metric's own padded batch moves them by).
#[test]
fn json_has_evaluates_mean_perplexity() {
    let Some(model) = real_model() else { return };
    let golden = read_json(&fixture("smollm2/evaluate_perplexity.json"));
    let report = perplexity(&model, &fixture("smollm2/ppl.jsonl"), &["--exact"]);
    let got = report["perplexities"].as_array().unwrap();
    assert_eq!(got.len(), golden["perplexities"].as_array().unwrap().len());
    let want = golden["mean_perplexity"].as_f64().unwrap();
    assert_close(
        report["mean_perplexity"].as_f64().unwrap(),
        want,
        3e-4,
        "mean_perplexity",
    );
}

/// The tiny HF model's golden rows (token ids, each ≥ 3, so text under the test tokenizer) and the
/// perplexity the golden file's logits (transformers', or PEFT's for an adapter) give for them.
fn tiny_hf_golden(golden: &str) -> (Vec<String>, f64, usize) {
    let golden = candle_core::safetensors::load(fixture(golden), &Device::Cpu).unwrap();
    let rows: Vec<Vec<i64>> = golden["input_ids"].to_vec2().unwrap();
    let log_probs = log_softmax_f64(&golden["logits"]);
    let (mut nll, mut n) = (0f64, 0usize);
    for (row, ids) in rows.iter().enumerate() {
        for t in 0..ids.len() - 1 {
            nll -= log_probs[row][t][ids[t + 1] as usize];
            n += 1;
        }
    }
    let docs = rows
        .iter()
        .map(|ids| char_text(&ids.iter().map(|&i| i as u32).collect::<Vec<_>>()))
        .collect();
    (docs, (nll / n as f64).exp(), n)
}

/// log_softmax over the last axis, in f64.
fn log_softmax_f64(logits: &candle_core::Tensor) -> Vec<Vec<Vec<f64>>> {
    let x = logits.to_dtype(DType::F64).unwrap();
    let max = x.max_keepdim(D::Minus1).unwrap();
    let shifted = x.broadcast_sub(&max).unwrap();
    let log_sum = shifted
        .exp()
        .unwrap()
        .sum_keepdim(D::Minus1)
        .unwrap()
        .log()
        .unwrap();
    shifted.broadcast_sub(&log_sum).unwrap().to_vec3().unwrap()
}

#[test]
fn hf_dir_jsonl_and_plain_text_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let (docs, want, n) = tiny_hf_golden("models/llama-tied/golden.safetensors");
    let jsonl: String = docs
        .iter()
        .map(|d| format!("{}\n", json!({ "text": d })))
        .collect();
    let jsonl = write(tmp.path(), "docs.jsonl", &jsonl);
    let report = perplexity(&model, &jsonl, &[]);
    assert_eq!(report["n_tokens"], json!(n));
    assert_eq!(report["n_documents"], json!(docs.len()));
    assert_close(
        report["perplexity"].as_f64().unwrap(),
        want,
        1e-4,
        "perplexity",
    );
    let text = write(tmp.path(), "docs.txt", &(docs.join("\n") + "\n"));
    assert_eq!(perplexity(&model, &text, &[]), report);
}

#[test]
fn with_an_adapter_matches_peft() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let (docs, want, _) = tiny_hf_golden("adapters/llama-tied-qv.golden.safetensors");
    let (_, base, _) = tiny_hf_golden("models/llama-tied/golden.safetensors");
    assert!(
        (want - base).abs() > 1e-2 * base,
        "the adapter barely changes perplexity"
    );
    let data = write(tmp.path(), "docs.txt", &(docs.join("\n") + "\n"));
    let adapter = fixture("adapters/llama-tied-qv");
    let report = perplexity(&model, &data, &["--adapter", arg(&adapter)]);
    assert_close(
        report["perplexity"].as_f64().unwrap(),
        want,
        1e-4,
        "perplexity with the adapter",
    );
}

#[test]
fn plain_text_on_the_tiny_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write(
        tmp.path(),
        "notes.txt",
        "The cat sat on the mat.\n\nA second, longer document about dogs.\n",
    );
    let run = hone(&[
        "eval",
        "perplexity",
        "--model",
        arg(&tiny_gguf()),
        "--data",
        arg(&data),
    ]);
    let line = run.ok();
    let report = perplexity(&tiny_gguf(), &data, &[]);
    assert_eq!(report["n_documents"], 2, "the blank line is not a document");
    let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&tiny_gguf()).unwrap()).unwrap();
    let predicted: usize = [
        "The cat sat on the mat.",
        "A second, longer document about dogs.",
    ]
    .iter()
    .map(|doc| tokenizer.encode(doc, true).unwrap().len() - 1)
    .sum();
    assert_eq!(report["n_tokens"], json!(predicted));
    let expected = format!(
        "perplexity {:.4} (mean NLL {:.6} over {} predicted tokens in 2 documents)\n\
         mean_perplexity {:.4} (per-text perplexities averaged, as Hugging Face evaluate computes \
         them)\n",
        report["perplexity"].as_f64().unwrap(),
        report["mean_nll"].as_f64().unwrap(),
        report["n_tokens"],
        report["mean_perplexity"].as_f64().unwrap(),
    );
    assert_eq!(line, expected);
    assert_close(
        report["perplexity"].as_f64().unwrap(),
        report["mean_nll"].as_f64().unwrap().exp(),
        1e-12,
        "exp(mean NLL)",
    );
}

#[test]
fn malformed_data_files_are_named_with_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let good = r#"{"text": "fine"}"#;
    for (name, contents, problem) in [
        (
            "bad.jsonl",
            format!("{good}\n\n{{\"text\": \"unclosed\n"),
            ":3: not valid JSON",
        ),
        (
            "missing.jsonl",
            format!("{good}\n{{\"body\": \"x\"}}\n"),
            ":2: field `text`: missing",
        ),
        (
            "number.jsonl",
            format!("{{\"text\": 7}}\n{good}\n"),
            ":1: field `text`: expected a string, found a number",
        ),
        ("empty.jsonl", String::new(), ": no documents"),
    ] {
        let data = write(tmp.path(), name, &contents);
        let run = hone(&[
            "eval",
            "perplexity",
            "--model",
            arg(&tiny_gguf()),
            "--data",
            arg(&data),
        ]);
        let err = run.error();
        assert!(
            err.contains(&format!("{}{problem}", arg(&data))),
            "{name}: {err}"
        );
    }
}
