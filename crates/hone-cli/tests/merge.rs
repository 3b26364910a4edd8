//! `hone merge`: the merged checkpoint generates PEFT's greedy text on its own (no --adapter),
//! and bad input (adapter for another base, missing adapter files, existing or unwritable
//! output) is a one-line error that leaves nothing behind.

mod common;

use std::path::Path;

use common::{arg, char_text, dir_entries, fixture, hone, json_ids as ids, read_json, tiny_hf_dir};

fn merge(model: &Path, adapter: &Path, out: &Path, extra: &[&str]) -> common::Run {
    let mut args = vec!["merge", "--model", arg(model), "--adapter", arg(adapter)];
    args.extend_from_slice(&["--out", arg(out)]);
    args.extend_from_slice(extra);
    hone(&args)
}

/// The error line of a failed run: exit status 1, nothing on stdout, progress lines then one
/// `error: ...` line on stderr.
fn failure(run: &common::Run) -> String {
    assert_eq!(
        run.code,
        Some(1),
        "expected a failure; stderr:\n{}",
        run.stderr
    );
    assert_eq!(run.stdout, "");
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{}", run.stderr);
    last.to_string()
}

#[test]
fn the_merged_checkpoint_generates_the_adapted_text() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let out = tmp.path().join("merged");
    let run = merge(&model, &fixture("adapters/llama-tied-qv"), &out, &[]);
    assert_eq!(run.ok(), "", "progress goes to stderr");
    assert!(run.stderr.contains("writing"), "{}", run.stderr);
    assert!(out.join("model.safetensors").exists());
    let config = read_json(&out.join("config.json"));
    assert_eq!(config["dtype"], "float32", "the base model's dtype");

    let golden = read_json(&fixture("adapters/llama-tied-qv.greedy.json"));
    let prompt = char_text(&ids(&golden["prompt_ids"]));
    let args = ["generate", "--model", arg(&out), "--prompt", &prompt];
    let text = hone(&[&args[..], &["--max-new-tokens", "8"]].concat())
        .ok()
        .to_string();
    assert_eq!(text, format!("{}\n", char_text(&ids(&golden["new_ids"]))));
}

#[test]
fn an_existing_output_needs_force() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let adapter = fixture("adapters/llama-tied-qv");
    let out = tmp.path().join("merged");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "").unwrap();
    let err = failure(&merge(&model, &adapter, &out, &[]));
    assert!(
        err.contains("already exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(dir_entries(&out), ["keep.txt"]);

    merge(&model, &adapter, &out, &["--force", "--dtype", "bf16"]).ok();
    assert!(!out.join("keep.txt").exists());
    assert_eq!(read_json(&out.join("config.json"))["dtype"], "bfloat16");
}

#[test]
fn bad_adapters_and_outputs_are_one_line_errors_leaving_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let empty = tmp.path().join("empty-adapter");
    std::fs::create_dir(&empty).unwrap();
    let blocker = tmp.path().join("blocker");
    std::fs::write(&blocker, "").unwrap();
    let out = tmp.path().join("merged");
    let cases = [
        // Made for Qwen2 (vocabulary 160, biases): shapes differ from the tiny Llama's.
        (
            fixture("adapters/qwen2-all-linear"),
            out.clone(),
            "model.layers.0.",
        ),
        (empty.clone(), out.clone(), "adapter_config.json"),
        (
            fixture("adapters/llama-tied-qv"),
            blocker.join("out"),
            "cannot create directory",
        ),
        (
            fixture("adapters/llama-tied-qv"),
            model.clone(),
            "already exists",
        ),
    ];
    let before = dir_entries(tmp.path());
    for (adapter, out, expected) in cases {
        let err = failure(&merge(&model, &adapter, &out, &[]));
        assert!(err.contains(expected), "{err}");
        assert_eq!(dir_entries(tmp.path()), before, "{err}");
    }
    let run = merge(
        &model,
        &fixture("adapters/llama-tied-qv"),
        &out,
        &["--dtype", "q4_0"],
    );
    assert_eq!(run.code, Some(2), "a usage error");
    assert!(
        run.stderr
            .contains("dtype \"q4_0\" is not one of f32, bf16, f16"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_write_failing_midway_leaves_no_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let out = tmp.path().join("merged");
    let before = dir_entries(tmp.path());
    let adapter = fixture("adapters/llama-tied-qv");
    let args = ["merge", "--model", arg(&model), "--adapter", arg(&adapter)];
    // The merged model.safetensors is ~113 KiB: the write fails partway through it.
    let run = common::hone_with_file_size_limit(64, &[&args[..], &["--out", arg(&out)]].concat());
    let err = failure(&run);
    assert!(err.contains("File too large"), "{err}");
    assert_eq!(dir_entries(tmp.path()), before, "{err}");
}
