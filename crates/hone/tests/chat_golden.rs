//! Chat templates against transformers' `apply_chat_template(..., tokenize=False)`, from fixtures
//! written by scripts/golden/tokenizer_chat.py.

use std::path::{Path, PathBuf};

use hone::chat::{token_text, ChatTemplate, Message, TemplateException};
use hone::io::gguf::GgufFile;
use hone::tokenizer::Tokenizer;
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn load(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join("chat").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn renders_match_transformers() {
    let names = [
        "smollm2.json",
        "llama3.json",
        "qwen2.5.json",
        "qwen3.json",
        "gemma2.json",
        "mistral.json",
        "llama2.json",
    ];
    let mut exceptions = 0;
    for name in names {
        let fixture = load(name);
        // bos/eos as the tokenizer_config.json gave them: strings or AddedToken objects.
        let bos = token_text(&fixture["bos_token"]);
        let eos = token_text(&fixture["eos_token"]);
        let template = ChatTemplate::new(fixture["source"].as_str().unwrap(), bos, eos).unwrap();
        for case in fixture["cases"].as_array().unwrap() {
            let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let generation = case["add_generation_prompt"].as_bool().unwrap();
            let label = format!("{name} {} (generation prompt {generation})", case["name"]);
            // A conversation with tool calls is rendered with its tools, as transformers' `tools=`.
            let mut vars = serde_json::Map::new();
            if let Some(tools) = case.get("tools") {
                vars.insert("tools".into(), tools.clone());
            }
            let rendered = template.render_with(&messages, generation, &vars);
            match (case["output"].as_str(), case["error"].as_str()) {
                (Some(expected), None) => assert_eq!(rendered.unwrap(), expected, "{label}"),
                (None, Some(message)) => {
                    let err = rendered.expect_err(&label);
                    let raised = err
                        .downcast_ref::<TemplateException>()
                        .unwrap_or_else(|| panic!("{label}: {err}"));
                    assert_eq!(raised.0, message, "{label}");
                    exceptions += 1;
                }
                _ => panic!("{label}: fixture case has neither output nor error"),
            }
        }
    }
    // Mistral, Llama-2 and Gemma reject two user turns in a row; Mistral and Gemma a system turn.
    assert!(exceptions >= 8, "only {exceptions} raise_exception cases");
}

#[test]
fn tokenizer_template_renders_like_smollm2_fixture() {
    let path = fixtures().join("tokenizer/smollm2-tokenizer.gguf");
    let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let template = ChatTemplate::for_tokenizer(&tokenizer).unwrap();
    let fixture = load("smollm2.json");
    let case = &fixture["cases"][0];
    let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
    let rendered = template
        .render(&messages, case["add_generation_prompt"].as_bool().unwrap())
        .unwrap();
    assert_eq!(rendered, case["output"].as_str().unwrap());
}

#[test]
fn missing_template_says_how_to_pass_one() {
    let dir = std::env::temp_dir().join(format!("hone-no-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = fixtures().join("tokenizer/tiny-spm.gguf");
    let with_template = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    with_template
        .inner()
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
    let bare = Tokenizer::from_hf_dir(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let err = ChatTemplate::for_tokenizer(&bare)
        .err()
        .expect("no template")
        .to_string();
    assert!(
        err.contains("no chat template") && err.contains("--chat-template"),
        "{err}"
    );
}
