//! `--adapter DIR`: `hone generate` and `hone chat` with a PEFT LoRA adapter merged into the tiny
//! HF model give PEFT's greedy text, and an adapter that does not fit gives a one-line error.

mod common;

use std::path::Path;

use common::{
    arg, char_text, fixture, hone, hone_in, json_ids as ids, read_json, tiny_hf_dir, write, Run,
    CHATML,
};

/// `hone generate` of the greedy fixture's prompt, with `extra` arguments; its stdout.
fn generate(model: &Path, prompt: &str, extra: &[&str]) -> String {
    let mut args = vec!["generate", "--model", arg(model), "--prompt", prompt];
    args.extend_from_slice(&["--max-new-tokens", "8"]);
    args.extend_from_slice(extra);
    hone(&args).ok().to_string()
}

#[test]
fn generate_with_an_adapter_gives_peft_greedy_text() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let golden = read_json(&fixture("adapters/llama-tied-qv.greedy.json"));
    assert_eq!(golden["max_new_tokens"], 8);
    let prompt = char_text(&ids(&golden["prompt_ids"]));
    let (with, without) = (
        char_text(&ids(&golden["new_ids"])),
        char_text(&ids(&golden["base_new_ids"])),
    );
    assert_ne!(with, without, "the fixture must tell the adapter apart");
    let adapter = fixture("adapters/llama-tied-qv");
    assert_eq!(
        generate(&model, &prompt, &["--adapter", arg(&adapter)]),
        format!("{with}\n")
    );
    assert_eq!(generate(&model, &prompt, &[]), format!("{without}\n"));
}

#[test]
fn chat_merges_the_adapter_too() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let template = write(tmp.path(), "chatml.jinja", CHATML);
    let adapter = fixture("adapters/llama-tied-qv");
    let common = ["--chat-template", arg(&template), "--max-new-tokens", "6"];
    let chat = |extra: &[&str]| {
        let mut args = vec!["chat", "--model", arg(&model)];
        args.extend_from_slice(&common);
        args.extend_from_slice(extra);
        hone_in(None, &args, "hi\n").ok().to_string()
    };
    // One chat turn is `generate --chat` with the same template: same text, adapter included.
    let generate_chat = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            arg(&model),
            "--chat",
            "--prompt",
            "hi",
        ];
        args.extend_from_slice(&common);
        args.extend_from_slice(extra);
        hone(&args).ok().trim().to_string()
    };
    let with = chat(&["--adapter", arg(&adapter)]);
    assert_eq!(with.trim(), generate_chat(&["--adapter", arg(&adapter)]));
    assert_ne!(with, chat(&[]));
}

#[test]
fn an_adapter_for_another_model_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    // Made for qwen2, whose MLP is 64 wide; llama-tied's is 88.
    let adapter = fixture("adapters/qwen2-all-linear");
    // Applied beside the stored weights by default, merged into f32 ones with --exact.
    for (exact, verb) in [(false, "cannot apply to"), (true, "cannot merge into")] {
        let run = generate_with_adapter(&model, &adapter, exact);
        let err = run.error();
        for part in [
            arg(&adapter),
            verb,
            "model.layers.0.mlp.down_proj",
            "[32, 64]",
            "[32, 88]",
            "different base model (fixtures/models/qwen2)",
        ] {
            assert!(err.contains(part), "{err:?} does not mention {part:?}");
        }
    }
    let missing = tmp.path().join("no-adapter");
    let run = generate_with_adapter(&model, &missing, false);
    assert!(run.error().contains("no such adapter directory"));
}

fn generate_with_adapter(model: &Path, adapter: &Path, exact: bool) -> Run {
    let args = [
        "generate",
        "--model",
        arg(model),
        "--prompt",
        "a",
        "--adapter",
        arg(adapter),
    ];
    hone(&[&args[..], if exact { &["--exact"] } else { &[] }].concat())
}
