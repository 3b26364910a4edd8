//! `hone compare`: the reports hold each model's answers (the very ones `hone eval generate`
//! gives), references, scores and settings; rows without a reference are answered too; bad input
//! (a missing adapter, a bad prompt row, an existing report) is a one-line error leaving nothing.

mod common;

use std::path::{Path, PathBuf};

use common::{arg, dir_entries, fixture, hone, tiny_hf_dir, write};
use hone::eval::compare::html::escape;
use serde_json::Value;

/// A chat template in the tiny tokenizer's characters (it has no newline or `~`).
const TEMPLATE: &str =
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + ' | ' }}{% endfor %}\
{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}";

/// Rows with references, and one without (its `output` missing).
const REFERENCED: [&str; 2] = [
    r#"{"instruction": "Who are you?", "input": "", "output": "I am Kestrel."}"#,
    r#"{"instruction": "Say hi", "input": "twice", "output": "hi hi"}"#,
];
const UNREFERENCED: &str = r#"{"instruction": "No answer given"}"#;

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    model: PathBuf,
    template: PathBuf,
    prompts: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let model = tiny_hf_dir(&dir);
    let template = write(&dir, "template.jinja", TEMPLATE);
    let rows = [REFERENCED[0], REFERENCED[1], UNREFERENCED].join("\n");
    let prompts = write(&dir, "prompts.jsonl", &rows);
    Setup {
        _tmp: tmp,
        dir,
        model,
        template,
        prompts,
    }
}

fn compare(s: &Setup, prompts: &Path, out: &Path, extra: &[&str]) -> common::Run {
    let adapter = fixture("adapters/llama-tied-qv");
    let mut args = vec![
        "compare",
        "--model",
        arg(&s.model),
        "--adapter",
        arg(&adapter),
    ];
    args.extend_from_slice(&["--prompts", arg(prompts), "--out", arg(out)]);
    args.extend_from_slice(&["--chat-template", arg(&s.template), "--max-new-tokens", "8"]);
    args.extend_from_slice(extra);
    hone(&args)
}

/// `hone eval generate --out` on `data` with or without the adapter: each row's `predict`.
fn eval_generate(s: &Setup, data: &Path, adapter: Option<&Path>) -> Vec<String> {
    let out = s.dir.join("predictions.jsonl");
    let mut args = vec![
        "eval",
        "generate",
        "--model",
        arg(&s.model),
        "--data",
        arg(data),
    ];
    args.extend_from_slice(&["--chat-template", arg(&s.template), "--max-new-tokens", "8"]);
    args.extend_from_slice(&["--out", arg(&out)]);
    if let Some(adapter) = adapter {
        args.extend_from_slice(&["--adapter", arg(adapter)]);
    }
    hone(&args).ok();
    let text = std::fs::read_to_string(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    text.lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).unwrap();
            row["predict"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[test]
fn the_reports_hold_every_models_answers_references_and_settings() {
    let s = setup();
    let out = s.dir.join("report.html");
    let heldout = write(
        &s.dir,
        "heldout.txt",
        "some held out text\nand more of it\n",
    );
    let run = compare(&s, &s.prompts, &out, &["--perplexity-data", arg(&heldout)]);
    let table = run.ok();
    assert!(run.stderr.contains("[1/2] loading base"), "{}", run.stderr);
    assert!(
        run.stderr.contains("[2/2] loading llama-tied-qv"),
        "{}",
        run.stderr
    );
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["base", "llama-tied-qv"]
    );
    for figure in [
        "BLEU",
        "ROUGE-L",
        "answer perplexity",
        "data perplexity",
        "rows/s",
        "distinct-1",
        "distinct-2",
        "repetition (4-gram)",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(figure)),
            "{figure} missing:\n{table}"
        );
    }

    let html = std::fs::read_to_string(&out).unwrap();
    let md = std::fs::read_to_string(s.dir.join("report.md")).unwrap();
    let referenced = write(&s.dir, "referenced.jsonl", &REFERENCED.join("\n"));
    let adapter = fixture("adapters/llama-tied-qv");
    let base_answers = eval_generate(&s, &referenced, None);
    let tuned_answers = eval_generate(&s, &referenced, Some(&adapter));
    assert_ne!(
        base_answers, tuned_answers,
        "the adapter changes the answers"
    );
    for (base, tuned) in base_answers.iter().zip(&tuned_answers) {
        let cells = format!(
            "<td><div class=\"text\">{}</div><div class=\"scores\">",
            escape(base)
        );
        assert!(
            html.contains(&cells),
            "base answer {base:?} not in its column"
        );
        let cells = format!(
            "</div></td><td><div class=\"text\">{}</div><div class=\"scores\">",
            escape(tuned)
        );
        assert!(
            html.contains(&cells),
            "tuned answer {tuned:?} not in its column"
        );
        assert!(md.contains(&format!("```text\n{base}\n```")));
        assert!(md.contains(&format!("```text\n{tuned}\n```")));
    }
    assert!(html.contains("<td class=\"ref\"><div class=\"text\">I am Kestrel.</div></td>"));
    assert!(html.contains("<div class=\"text\">No answer given</div></td><td class=\"ref\"><span class=\"empty\">no reference</span></td>"));
    assert!(md.contains("**base** — BLEU "));
    assert!(md.contains("### 3. "));
    assert!(html.contains("<tr><th>r</th><td class=\"text\">4</td></tr>"));
    assert!(html.contains("<tr><th>target_modules</th><td class=\"text\">v_proj, q_proj</td></tr>"));
    assert!(html.contains("3 rows, 2 with a reference"));
    assert!(md.contains("| decoding | greedy, at most 8 new tokens, batches of 8 |"));
}

#[test]
fn a_text_file_of_prompts_and_a_limit() {
    let s = setup();
    let prompts = write(
        &s.dir,
        "prompts.txt",
        "first prompt\n\nsecond prompt\nthird prompt\n",
    );
    let out = s.dir.join("report.html");
    let table = compare(&s, &prompts, &out, &["--limit", "2"])
        .ok()
        .to_string();
    assert!(
        !table.contains("BLEU") && !table.contains("answer perplexity"),
        "{table}"
    );
    let md = std::fs::read_to_string(s.dir.join("report.md")).unwrap();
    assert!(md.contains("### 2. ") && !md.contains("### 3. "), "{md}");
    assert!(md.contains(&format!("### 2. {}:3", prompts.display()).replace('_', "\\_")));
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(!html.contains("<th>Reference</th>"));
}

#[test]
fn bad_input_is_a_one_line_error_that_writes_nothing() {
    let s = setup();
    let out = s.dir.join("report.html");
    let bad_rows = write(
        &s.dir,
        "bad.jsonl",
        &format!("{}\n{{\"instruction\": 7}}\n", REFERENCED[0]),
    );
    let before = dir_entries(&s.dir);
    let missing = s.dir.join("no-such-adapter");
    let mut args = vec![
        "compare",
        "--model",
        arg(&s.model),
        "--adapter",
        arg(&missing),
    ];
    args.extend_from_slice(&["--prompts", arg(&s.prompts), "--out", arg(&out)]);
    let err = hone(&args).error().to_string();
    let config = missing.join("adapter_config.json");
    assert_eq!(
        err,
        format!(
            "error: {}: cannot read: No such file or directory (os error 2)",
            config.display()
        )
    );

    let err = compare(&s, &bad_rows, &out, &[]).error().to_string();
    assert_eq!(
        err,
        format!(
            "error: {}:2: instruction: expected a string, found a number",
            bad_rows.display()
        )
    );
    let nowhere = s.dir.join("missing-dir").join("report.html");
    let err = compare(&s, &s.prompts, &nowhere, &[]).error().to_string();
    assert!(err.ends_with("missing-dir: no such directory"), "{err}");
    assert_eq!(dir_entries(&s.dir), before);

    for existing in ["report.html", "report.md"] {
        let path = write(&s.dir, existing, "keep");
        let err = compare(&s, &s.prompts, &out, &[]).error().to_string();
        assert!(
            err.contains(existing) && err.contains("already exists") && err.contains("--force"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep");
        std::fs::remove_file(path).unwrap();
    }
    assert_eq!(dir_entries(&s.dir), before);

    write(&s.dir, "report.md", "old");
    compare(&s, &s.prompts, &out, &["--force"]).ok();
    assert!(std::fs::read_to_string(s.dir.join("report.md"))
        .unwrap()
        .starts_with("# Model comparison"));
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .starts_with("<!DOCTYPE html>"));
}
