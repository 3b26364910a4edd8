//! `hone generate`: greedy text equal to transformers', token and stop-string limits, seeded
//! sampling, chat templates and flag errors.

mod common;

use std::path::Path;

use common::{
    arg, char_text, fixture, hone, json_ids as ids, read_json, real_model, tiny_gguf, tiny_hf_dir,
    write, CHATML,
};

/// `hone generate --model MODEL ARGS...`, asserting success; its stdout.
fn generate(model: &Path, args: &[&str]) -> String {
    let mut all = vec!["generate", "--model", arg(model)];
    all.extend_from_slice(args);
    hone(&all).ok().to_string()
}

#[test]
fn default_model_greedy_chat_matches_transformers() {
    let Some(model) = real_model() else { return };
    let golden = read_json(&fixture("smollm2/greedy.json"));
    let max = golden["max_new_tokens"].to_string();
    for case in golden["prompts"].as_array().unwrap() {
        let question = case["question"].as_str().unwrap();
        let out = generate(
            &model,
            &[
                "--exact",
                "--chat",
                "--prompt",
                question,
                "--max-new-tokens",
                &max,
            ],
        );
        assert_eq!(
            out,
            format!("{}\n", case["text"].as_str().unwrap()),
            "prompt {question:?}"
        );
    }
}

#[test]
fn default_model_token_limit_and_stop_string() {
    let Some(model) = real_model() else { return };
    let golden = read_json(&fixture("smollm2/greedy.json"));
    let haiku = &golden["prompts"][1];
    let (question, text) = (
        haiku["question"].as_str().unwrap(),
        haiku["text"].as_str().unwrap(),
    );
    // The first five new tokens are "The", " waves", " of", " the", " sea".
    let out = generate(
        &model,
        &["--chat", "--prompt", question, "--max-new-tokens", "5"],
    );
    assert_eq!(out, "The waves of the sea\n");
    assert!(text.starts_with(out.trim_end()));
    let out = generate(
        &model,
        &["--chat", "--prompt", question, "--stop", " silent"],
    );
    assert_eq!(out, format!("{}\n", &text[..text.find(" silent").unwrap()]));
}

/// The tiny HF model's greedy fixture: a 5-token prompt and 8 new tokens from transformers, all of
/// them single characters under the test tokenizer.
fn tiny_hf_greedy() -> (String, String) {
    let golden = read_json(&fixture("models/llama-tied/greedy.json"));
    assert_eq!(golden["max_new_tokens"], 8);
    (
        char_text(&ids(&golden["prompt_ids"])),
        char_text(&ids(&golden["new_ids"])),
    )
}

#[test]
fn hf_dir_greedy_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let (prompt, text) = tiny_hf_greedy();
    assert_eq!(
        generate(&model, &["--prompt", &prompt, "--max-new-tokens", "8"]),
        format!("{text}\n")
    );
    assert_eq!(
        generate(&model, &["--prompt", &prompt, "--max-new-tokens", "3"]),
        format!("{}\n", &text[..3])
    );
}

#[test]
fn stop_string_cuts_the_text_before_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let (prompt, text) = tiny_hf_greedy();
    // Two characters, so two tokens: the stop string ends in the middle of the completion.
    let stop = &text[5..7];
    let out = generate(
        &model,
        &["--prompt", &prompt, "--max-new-tokens", "8", "--stop", stop],
    );
    assert_eq!(out, format!("{}\n", &text[..text.find(stop).unwrap()]));
}

#[test]
fn sampling_is_reproducible_for_a_seed() {
    let model = tiny_gguf();
    let sample = |seed: &str| {
        let prompt = ["--prompt", "Once upon a time", "--max-new-tokens", "16"];
        let sampling = ["--temperature", "0.8", "--top-p", "0.9", "--seed", seed];
        generate(&model, &[&prompt[..], &sampling[..]].concat())
    };
    let first = sample("1");
    assert_eq!(first, sample("1"));
    assert_ne!(first, sample("2"));
}

#[test]
fn chat_template_file_renders_the_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let template = write(tmp.path(), "chatml.jinja", CHATML);
    let chat = generate(
        &model,
        &[
            "--chat",
            "--chat-template",
            arg(&template),
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "8",
        ],
    );
    let rendered = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(
        chat,
        generate(&model, &["--prompt", rendered, "--max-new-tokens", "8"])
    );
}

/// `--chat-template-kwargs` sets template variables (Qwen3's `enable_thinking`); a value that is
/// not a JSON object is a one-line error.
#[test]
fn chat_template_kwargs_are_template_variables() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let source = "{{ messages[0].content }}\
                  {% if enable_thinking is defined and enable_thinking is false %} NOTHINK{% endif %}";
    let template = write(tmp.path(), "thinking.jinja", source);
    let with = |kwargs: &str| {
        let mut args = vec![
            "--chat",
            "--chat-template",
            arg(&template),
            "--prompt",
            "Hi",
        ];
        args.extend(["--max-new-tokens", "8", "--chat-template-kwargs", kwargs]);
        hone(&[&["generate", "--model", arg(&model)][..], &args[..]].concat())
    };
    let plain = |prompt: &str| generate(&model, &["--prompt", prompt, "--max-new-tokens", "8"]);
    assert_eq!(
        with(r#"{"enable_thinking": false}"#).ok(),
        plain("Hi NOTHINK")
    );
    assert_eq!(with(r#"{"enable_thinking": true}"#).ok(), plain("Hi"));
    let refused = with("[false]");
    let err = refused.error();
    assert!(
        err.contains("--chat-template-kwargs: not a JSON object") && !err.trim().contains('\n'),
        "{err}"
    );
}

#[test]
fn chat_without_a_template_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(tmp.path());
    let run = hone(&[
        "generate",
        "--model",
        arg(&model),
        "--chat",
        "--prompt",
        "Hi",
    ]);
    let err = run.error();
    assert!(
        err.contains("no chat template") && err.contains("--chat-template FILE"),
        "{err}"
    );
}

#[test]
fn bad_template_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let broken = write(tmp.path(), "broken.jinja", "{% for message in %}");
    let missing = tmp.path().join("missing.jinja");
    for (file, problem) in [(&broken, "does not parse"), (&missing, "cannot read")] {
        let run = hone(&[
            "generate",
            "--model",
            arg(&tiny_gguf()),
            "--chat",
            "--chat-template",
            arg(file),
            "--prompt",
            "Hi",
        ]);
        let err = run.error();
        assert!(err.contains(arg(file)) && err.contains(problem), "{err}");
    }
}

#[test]
fn a_system_message_implies_chat() {
    let model = tiny_gguf();
    let common = [
        "--prompt",
        "Hi",
        "--system",
        "Be brief.",
        "--max-new-tokens",
        "6",
    ];
    let alone = generate(&model, &common);
    let mut with_chat = common.to_vec();
    with_chat.push("--chat");
    assert_eq!(alone, generate(&model, &with_chat));
    let plain = generate(&model, &["--prompt", "Hi", "--max-new-tokens", "6"]);
    assert_ne!(alone, plain, "the system message must change the prompt");
}

#[test]
fn flag_errors() {
    let model = tiny_gguf();
    let run = hone(&[
        "generate",
        "--model",
        arg(&model),
        "--prompt",
        "Hi",
        "--top-p",
        "0",
    ]);
    assert_eq!(run.error(), "error: --top-p must be in (0, 1]");
}

/// The numbers `generate -v` reports on stderr: prompt tokens, new tokens, and the finish reason.
fn verbose_report(stderr: &str) -> (usize, usize, &str) {
    let words: Vec<&str> = stderr.lines().next().unwrap().split_whitespace().collect();
    assert_eq!((words[1], words[4]), ("prompt", "new"), "{stderr}");
    (
        words[0].parse().unwrap(),
        words[3].parse().unwrap(),
        words[words.len() - 1],
    )
}

#[test]
fn generation_ends_when_the_context_is_full() {
    // tiny-spm.gguf has a context of 64 tokens, fewer than the 256 new tokens asked for by default.
    // Sampling from the random model also produces runs of byte tokens whose decoded text changes
    // after it was streamed (a byte that is valid alone, then invalid with the next one).
    let model = tiny_gguf();
    let args = [
        "generate",
        "--model",
        arg(&model),
        "--prompt",
        "Once upon a time",
        "-v",
    ];
    let run = hone(&[&args[..], &["--temperature", "1", "--seed", "1"]].concat());
    run.ok();
    let (prompt, new, finish) = verbose_report(&run.stderr);
    assert_eq!((prompt + new, finish), (64, "Length"), "{}", run.stderr);
}

#[test]
fn prompts_that_cannot_be_continued() {
    let tmp = tempfile::tempdir().unwrap();
    // The tiny HF tokenizer adds no BOS token, so an empty prompt has no tokens at all.
    let run = hone(&[
        "generate",
        "--model",
        arg(&tiny_hf_dir(tmp.path())),
        "--prompt",
        "",
    ]);
    assert!(
        run.error().contains("the prompt is empty"),
        "{}",
        run.stderr
    );
    let long = "word ".repeat(100);
    let run = hone(&["generate", "--model", arg(&tiny_gguf()), "--prompt", &long]);
    assert!(
        run.error().contains("more than the model's context of 64"),
        "{}",
        run.stderr
    );
}
