//! `hone merge`: the merged checkpoint generates PEFT's greedy text on its own (no --adapter),
//! and bad input (adapter for another base, missing adapter files, existing or unwritable
//! output) is a one-line error that leaves nothing behind.

mod common;

use std::path::Path;

use common::{arg, char_text, dir_entries, fixture, hone, json_ids as ids, read_json, tiny_hf_dir};
use hone::quant::bnb::{self, FourBit};

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

/// An adapter trained with `quantization_bit: 4` on an unquantized base (tiny llama-64, whose
/// widths are whole 64-value blocks) merges into that base quantized to NF4 as in training and
/// dequantized, with a note and in f32: a matrix the adapter does not touch comes out as exactly
/// bitsandbytes' round trip of the original (`hone export` is checked in train.rs, on a model
/// whose tokenizer GGUF can hold). `--dtype bf16` is refused and writes nothing.
#[test]
fn an_adapter_trained_on_a_quantized_base_merges_into_the_dequantized_base() {
    let tmp = tempfile::tempdir().unwrap();
    let template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\
                    {% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}\
                    {% if add_generation_prompt %}<assistant>{% endif %}";
    let model = common::tiny_hf_model(tmp.path(), "llama-64", Some(template));
    let rows = r#"{"instruction": "Who are you?", "input": "", "output": "I am Kestrel."}"#;
    std::fs::write(tmp.path().join("data.jsonl"), format!("{rows}\n{rows}\n")).unwrap();
    let run_dir = tmp.path().join("run");
    let config = tmp.path().join("run.yaml");
    let yaml = format!(
        "model_name_or_path: {}\ndataset: {}\noutput_dir: {}\nlora_target: q_proj,v_proj\n\
         quantization_bit: 4\nmax_steps: 2\ncutoff_len: 64\n",
        model.display(),
        tmp.path().join("data.jsonl").display(),
        run_dir.display()
    );
    std::fs::write(&config, yaml).unwrap();
    let train = hone(&["train", arg(&config)]);
    assert_eq!(train.code, Some(0), "{}", train.stderr);

    let out = tmp.path().join("merged");
    let err = failure(&merge(&model, &run_dir, &out, &["--dtype", "bf16"]));
    assert!(
        err.contains("--dtype bf16:") && err.contains("trained on a quantized base"),
        "{err}"
    );
    assert!(!out.exists());

    let run = merge(&model, &run_dir, &out, &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("merging into the base quantized to NF4 (double quantization)"),
        "{}",
        run.stderr
    );
    assert_eq!(read_json(&out.join("config.json"))["dtype"], "float32");
    let name = "model.layers.1.self_attn.o_proj.weight";
    let original = tensor(&model.join("model.safetensors"), name);
    let merged = tensor(&out.join("model.safetensors"), name);
    let want = bnb::quantize(&original, FourBit::Nf4, true).dequantize(FourBit::Nf4);
    assert_ne!(merged, original);
    assert!(merged
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

/// An f32 tensor of a safetensors file, flattened.
fn tensor(file: &Path, name: &str) -> Vec<f32> {
    let bytes = std::fs::read(file).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = tensors.tensor(name).unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    view.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}
