//! `hone chat` driven through stdin: answers on stdout, history kept across turns and cleared by
//! /reset, and a clean exit on /exit or end of input.

mod common;

use std::path::Path;

use common::{arg, fixture, hone, hone_in, read_json, real_model, tiny_gguf, write, CHATML};

/// `hone chat --model MODEL` with `input` on stdin, greedy, at most `max` new tokens per answer;
/// asserts success and returns stdout.
fn chat(model: &Path, max: &str, input: &str) -> String {
    chat_with(model, max, input, &[])
}

/// [`chat`] with extra arguments.
fn chat_with(model: &Path, max: &str, input: &str, extra: &[&str]) -> String {
    let args = ["chat", "--model", arg(model), "--max-new-tokens", max];
    let run = hone_in(None, &[&args[..], extra].concat(), input);
    run.ok().to_string()
}

/// The answer `hone generate --chat` gives to `prompt`, without the final newline.
fn answer(model: &Path, max: &str, prompt: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "generate",
        "--model",
        arg(model),
        "--chat",
        "--prompt",
        prompt,
        "--max-new-tokens",
        max,
    ];
    args.extend_from_slice(extra);
    let run = hone(&args);
    run.ok()
        .strip_suffix('\n')
        .expect("generate ends its output with a newline")
        .to_string()
}

#[test]
fn turns_history_reset_and_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_gguf();
    let first = answer(&model, "8", "hi", &[]);
    // The second turn sees the first one: the same prompt `generate` gets from a template with
    // that exchange (as the ChatML tiny-spm.gguf carries renders it) written in front.
    let history = format!(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n{}<|im_end|>\n",
        first.trim()
    );
    let template = write(
        tmp.path(),
        "with-history.jinja",
        &format!("{{% raw %}}{history}{{% endraw %}}{CHATML}"),
    );
    let second = answer(&model, "8", "there", &["--chat-template", arg(&template)]);
    let out = chat(&model, "8", "hi\nthere\n/reset\nhi\n/exit\nnever read\n");
    // After /reset the conversation starts afresh, so "hi" gets the first answer again.
    assert_eq!(out, format!("{first}\n{second}\n{first}\n"));
}

#[test]
fn end_of_input_ends_the_chat() {
    let model = tiny_gguf();
    let first = answer(&model, "8", "hi", &[]);
    assert_eq!(chat(&model, "8", "hi\n"), format!("{first}\n"));
    assert_eq!(chat(&model, "8", "hi"), format!("{first}\n"));
    assert_eq!(chat(&model, "8", ""), "");
}

#[test]
fn default_model_answers_and_forgets_on_reset() {
    let Some(model) = real_model() else { return };
    let golden = read_json(&fixture("smollm2/greedy.json"));
    let case = |i: usize| {
        let p = &golden["prompts"][i];
        (
            p["question"].as_str().unwrap().to_string(),
            p["text"].as_str().unwrap().to_string(),
        )
    };
    let ((france, paris), (haiku, poem)) = (case(0), case(1));
    let input = format!("{france}\nAnd of Germany?\n/reset\n{haiku}\n/exit\n");
    let out = chat_with(&model, "32", &input, &["--exact"]);
    // Greedy answers to a fresh conversation are transformers' greedy fixture texts (f32 path).
    let second = out
        .strip_prefix(&format!("{paris}\n"))
        .and_then(|rest| rest.strip_suffix(&format!("\n{poem}\n")))
        .unwrap_or_else(|| panic!("unexpected chat output:\n{out}"));
    assert!(second.contains("Berlin"), "second answer: {second:?}");
}
