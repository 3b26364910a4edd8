//! `hone export`: a GGUF that generates what its source generates, the Modelfile beside it, and
//! bad input (unknown quant type, adapter for another base, missing adapter files, a DoRA adapter
//! alone, existing output, a write that fails midway) as a one-line error that leaves nothing behind.

mod common;

use std::path::Path;

use common::{
    arg, dir_entries, fixture, greedy, hone, hone_with_file_size_limit, tiny_gguf, tiny_hf_dir,
};

fn export(model: &Path, out: &Path, extra: &[&str]) -> common::Run {
    let mut args = vec!["export", "--model", arg(model), "--out", arg(out)];
    args.extend_from_slice(extra);
    hone(&args)
}

#[test]
fn an_f32_export_generates_the_source_text_and_writes_a_modelfile() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tiny_gguf();
    let out = tmp.path().join("tiny-f32.gguf");
    let run = export(&source, &out, &["--quant", "f32", "--modelfile"]);
    assert!(run.ok().contains("tiny-f32.gguf"), "{}", run.stdout);
    assert_eq!(greedy(&out), greedy(&source));
    let modelfile = std::fs::read_to_string(tmp.path().join("Modelfile")).unwrap();
    assert!(
        modelfile.starts_with("FROM ./tiny-f32.gguf\n"),
        "{modelfile}"
    );
    assert!(modelfile.contains("PARAMETER stop"), "{modelfile}");
}

#[test]
fn bad_input_is_a_one_line_error_leaving_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let empty = tmp.path().join("empty-adapter");
    std::fs::create_dir(&empty).unwrap();
    let existing = tmp.path().join("existing.gguf");
    std::fs::write(&existing, "keep me").unwrap();
    let out = tmp.path().join("out.gguf");
    let qwen_adapter = fixture("adapters/qwen2-all-linear");
    let dora_adapter = fixture("adapters/qwen2-dora");
    let ia3_adapter = fixture("adapters/qwen2-ia3");
    let cases: [(&[&str], &Path, &str); 7] = [
        (&["--quant", "q3_k"], &out, "q3_k"),
        // Made for Qwen2 (vocabulary 160, biases): shapes differ from the tiny Llama's.
        (&["--adapter", arg(&qwen_adapter)], &out, "model.layers.0."),
        (&["--adapter", arg(&empty)], &out, "adapter_config.json"),
        (
            &["--adapter", arg(&empty), "--adapter-only"],
            &out,
            "adapter_config.json",
        ),
        (&["--quant", "q8_0"], &existing, "already exists"),
        // llama.cpp's LoRA adapters have no DoRA magnitudes.
        (
            &["--adapter", arg(&dora_adapter), "--adapter-only"],
            &out,
            "DoRA adapter (use_dora)",
        ),
        (
            &["--adapter", arg(&ia3_adapter), "--adapter-only"],
            &out,
            "it is an IA3 adapter",
        ),
    ];
    let before = dir_entries(tmp.path());
    for (extra, out, expected) in cases {
        let run = export(&model, out, extra);
        let err = run.error();
        assert!(err.contains(expected), "{extra:?}: {err}");
        assert_eq!(dir_entries(tmp.path()), before, "{err}");
    }
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me");
}

#[test]
fn a_write_failing_midway_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_gguf();
    let out = tmp.path().join("tiny.gguf");
    // The f32 export is ~98 KiB: the write fails partway through the tensor data.
    let args = ["export", "--model", arg(&model), "--out", arg(&out)];
    let run = hone_with_file_size_limit(64, &[&args[..], &["--quant", "f32"]].concat());
    let err = run.error();
    assert!(err.contains("File too large"), "{err}");
    assert!(err.contains("tiny.gguf"), "names the file: {err}");
    assert_eq!(dir_entries(tmp.path()), Vec::<String>::new());
}
