//! Encoding: masks against fixtures/data/masking.json (written by scripts/golden/data_masking.py
//! with transformers and `tokenizers`), truncation, train_on_prompt and template checks.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::*;
use crate::data::RowOrigin;
use crate::io::gguf::GgufFile;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

fn tokenizer(rel: &str) -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::open(&fixtures().join(rel)).unwrap()).unwrap()
}

fn conversation(messages: Vec<Message>) -> Conversation {
    Conversation {
        messages,
        tools: Vec::new(),
        origin: RowOrigin {
            file: PathBuf::from("rows.jsonl"),
            line: 3,
        },
    }
}

fn m(role: &str, content: &str) -> Message {
    Message::new(role, content)
}

const WIDE: EncodeOptions = EncodeOptions {
    cutoff_len: 4096,
    train_on_prompt: false,
};

#[test]
fn masks_match_the_reference() {
    let text = std::fs::read_to_string(fixtures().join("data/masking.json")).unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    for (pair, spec) in fixture["pairs"].as_object().unwrap() {
        let tok = tokenizer(spec["tokenizer"].as_str().unwrap());
        let template = match spec["template"].as_str() {
            None => ChatTemplate::for_tokenizer(&tok).unwrap(),
            Some(name) => {
                let chat = std::fs::read_to_string(fixtures().join(format!("chat/{name}.json")));
                let chat: Value = serde_json::from_str(&chat.unwrap()).unwrap();
                let source = chat["source"].as_str().unwrap();
                ChatTemplate::new(source, tok.bos_token(), tok.eos_token()).unwrap()
            }
        };
        for case in spec["cases"].as_array().unwrap() {
            let label = format!("{pair} {}", case["name"]);
            let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
            let conversation = Conversation {
                tools: serde_json::from_value(case["tools"].clone()).unwrap_or_default(),
                ..conversation(messages)
            };
            let vars = conversation.template_vars();
            let rendered = template
                .render_with(&conversation.messages, false, &vars)
                .unwrap();
            assert_eq!(rendered, case["text"].as_str().unwrap(), "{label}");
            let example = encode(&tok, &template, &conversation, &WIDE).unwrap();
            let ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
            let labels: Vec<i64> = serde_json::from_value(case["labels"].clone()).unwrap();
            assert_eq!(example.input_ids, ids, "{label}");
            assert_eq!(example.labels, labels, "{label}");
            checked += 1;
        }
    }
    assert_eq!(checked, 21);
}

/// The SmolLM2 tokenizer with its ChatML template (a default system turn when none is given).
fn smollm2() -> (Tokenizer, ChatTemplate) {
    let tok = tokenizer("tokenizer/smollm2-tokenizer.gguf");
    let template = ChatTemplate::for_tokenizer(&tok).unwrap();
    (tok, template)
}

fn decode_labelled(tok: &Tokenizer, example: &Example) -> String {
    let ids: Vec<u32> = example
        .labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    tok.decode(&ids, false).unwrap()
}

#[test]
fn labels_cover_each_response_and_its_end_of_turn() {
    let (tok, template) = smollm2();
    let conv = conversation(vec![
        m("user", "Who are you?"),
        m("assistant", "Kestrel."),
        m("user", "Who made you?"),
        m("assistant", "The Hone project."),
    ]);
    let example = encode(&tok, &template, &conv, &WIDE).unwrap();
    assert_eq!(
        decode_labelled(&tok, &example),
        "Kestrel.<|im_end|>\nThe Hone project.<|im_end|>\n"
    );
    let all = EncodeOptions {
        train_on_prompt: true,
        ..WIDE
    };
    let everything = encode(&tok, &template, &conv, &all).unwrap();
    assert_eq!(everything.input_ids, example.input_ids);
    let ids_as_labels: Vec<i64> = example.input_ids.iter().map(|&i| i64::from(i)).collect();
    assert_eq!(everything.labels, ids_as_labels);
}

#[test]
fn truncation_keeps_the_last_response_and_drops_earlier_turns_first() {
    let (tok, template) = smollm2();
    let long = "word ".repeat(200);
    let conv = conversation(vec![
        m("system", "Be brief."),
        m("user", &long),
        m("assistant", &long),
        m("user", "Who made you?"),
        m("assistant", "The Hone project."),
    ]);
    let full = encode(&tok, &template, &conv, &WIDE).unwrap();
    let opts = EncodeOptions {
        cutoff_len: 40,
        train_on_prompt: false,
    };
    let cut = encode(&tok, &template, &conv, &opts).unwrap();
    assert_eq!(cut.input_ids.len(), 40);
    // Whole last turn (prompt and response), then the rest from the end of the earlier turn.
    let last_turn = "<|im_start|>user\nWho made you?<|im_end|>\n<|im_start|>assistant\nThe Hone project.<|im_end|>\n";
    let text = tok.decode(&cut.input_ids, false).unwrap();
    assert!(text.ends_with(last_turn), "{text}");
    assert!(decode_labelled(&tok, &cut).ends_with("The Hone project.<|im_end|>\n"));
    // Kept tokens are, in order, a subsequence of the full encoding.
    let mut rest = full.input_ids.iter();
    assert!(cut.input_ids.iter().all(|id| rest.any(|x| x == id)));
}

#[test]
fn truncation_never_cuts_the_whole_response() {
    let (tok, template) = smollm2();
    let conv = conversation(vec![
        m("user", &"question ".repeat(300)),
        m("assistant", "Yes."),
    ]);
    for cutoff_len in [2, 3, 8, 64] {
        let opts = EncodeOptions {
            cutoff_len,
            train_on_prompt: false,
        };
        let example = encode(&tok, &template, &conv, &opts).unwrap();
        assert_eq!(example.input_ids.len(), cutoff_len);
        let labelled = decode_labelled(&tok, &example);
        assert!(!labelled.is_empty() && "Yes.<|im_end|>\n".starts_with(&labelled));
        // The prompt keeps its end: the assistant header stays next to the response.
        assert_ne!(
            example.labels[0], example.input_ids[0] as i64,
            "{cutoff_len}"
        );
        if cutoff_len == 64 {
            assert!(tok
                .decode(&example.input_ids, false)
                .unwrap()
                .ends_with("question <|im_end|>\n<|im_start|>assistant\nYes.<|im_end|>\n"));
        }
    }
    let too_short = EncodeOptions {
        cutoff_len: 1,
        train_on_prompt: false,
    };
    let err = encode(&tok, &template, &conv, &too_short).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cutoff_len is 1; it must be at least 2 (a prompt token and a response token)"
    );
}

#[test]
fn infer_seqlen_shares_the_budget() {
    // LLaMA-Factory's three cases: short response kept, short prompt kept, proportional share.
    assert_eq!(infer_seqlen(100, 10, 50), (40, 10));
    assert_eq!(infer_seqlen(10, 100, 50), (10, 40));
    assert_eq!(infer_seqlen(300, 100, 40), (30, 10));
    assert_eq!(infer_seqlen(3, 4, 50), (3, 4));
    // A response keeps a token where the proportional share rounds to none.
    assert_eq!(infer_seqlen(1000, 2, 4), (3, 1));
    assert_eq!(infer_seqlen(5, 5, 1), (0, 1));
    assert_eq!(infer_seqlen(5, 0, 3), (3, 0));
}

#[test]
fn kept_ranges_prefer_later_turns_and_keep_bos() {
    let turns = vec![
        Turn {
            source: 0..10,
            target: 10..20,
        },
        Turn {
            source: 20..25,
            target: 25..30,
        },
    ];
    assert_eq!(
        kept_ranges(&turns, 100, false),
        vec![0..10, 10..20, 20..25, 25..30]
    );
    // 12 tokens: the last turn whole (10), then 2 of the first turn (1 prompt end, 1 response start).
    assert_eq!(
        kept_ranges(&turns, 12, false),
        vec![9..10, 10..11, 20..25, 25..30]
    );
    // One token left after the last turn is not enough for an earlier turn.
    assert_eq!(kept_ranges(&turns, 11, false), vec![20..25, 25..30]);
    // A leading BOS stays, and the first turn's prompt is counted without it.
    assert_eq!(
        kept_ranges(&turns, 13, true),
        vec![0..1, 9..10, 10..11, 20..25, 25..30]
    );
    assert_eq!(kept_ranges(&turns, 2, true), vec![0..1, 25..26]);
}

/// The SmolLM2 tokenizer (ChatML's special tokens) with Qwen3's chat template.
fn qwen3() -> (Tokenizer, ChatTemplate) {
    let tok = tokenizer("tokenizer/smollm2-tokenizer.gguf");
    let chat = std::fs::read_to_string(fixtures().join("chat/qwen3.json")).unwrap();
    let chat: Value = serde_json::from_str(&chat).unwrap();
    let source = chat["source"].as_str().unwrap();
    let template = ChatTemplate::new(source, tok.bos_token(), tok.eos_token()).unwrap();
    (tok, template)
}

/// Qwen3's template drops an answered turn's reasoning once a later user turn follows: the labels
/// cover each turn as the whole conversation renders it.
#[test]
fn qwen3_labels_cover_each_turn_as_the_whole_conversation_renders_it() {
    let (tok, template) = qwen3();
    let conv = conversation(vec![
        m("user", "What is 3*4?"),
        m("assistant", "<think>\nThree fours.\n</think>\n\n12"),
        m("user", "And 5*6?"),
        m("assistant", "<think>\nFive sixes.\n</think>\n\n30"),
    ]);
    let example = encode(&tok, &template, &conv, &WIDE).unwrap();
    assert_eq!(
        decode_labelled(&tok, &example),
        "12<|im_end|>\n<think>\nFive sixes.\n</think>\n\n30<|im_end|>\n"
    );
}

/// `enable_thinking: false` (LLaMA-Factory's key, a template variable): Qwen3's generation prompt
/// then ends with an empty `<think></think>`, which is prompt, not label.
#[test]
fn qwen3_without_thinking_labels_the_answer_alone() {
    let (tok, template) = qwen3();
    let conv = conversation(vec![m("user", "What is 3*4?"), m("assistant", "12")]);
    let thinking = encode(&tok, &template, &conv, &WIDE).unwrap();
    assert_eq!(
        decode_labelled(&tok, &thinking),
        "<think>\n\n</think>\n\n12<|im_end|>\n"
    );
    let template = template.with_kwarg("enable_thinking", false);
    let plain = encode(&tok, &template, &conv, &WIDE).unwrap();
    assert_eq!(plain.input_ids, thinking.input_ids, "the same text");
    assert_eq!(decode_labelled(&tok, &plain), "12<|im_end|>\n");
}

#[test]
fn prefix_inconsistent_templates_are_refused() {
    let tok = tokenizer("tokenizer/smollm2-tokenizer.gguf");
    // Marks the last message, so earlier renders are not prefixes of later ones.
    let source =
        "{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m.content }}\n{% endfor %}";
    let template = ChatTemplate::new(source, None, None).unwrap();
    let conv = conversation(vec![m("user", "Hi"), m("assistant", "Hello")]);
    let err = encode(&tok, &template, &conv, &WIDE).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "rows.jsonl:3: the chat template is not prefix-consistent: rendering messages 1-1 with the \
         generation prompt, then 1-2 and then all 2 do not extend one another, so the assistant's \
         tokens cannot be located (templates that rewrite earlier turns cannot be trained on)"
    );
    let chatml = ChatTemplate::for_tokenizer(&tok).unwrap();
    let no_answer = conversation(vec![m("user", "Hi")]);
    let err = encode(&tok, &chatml, &no_answer, &WIDE).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "rows.jsonl:3: the conversation has no assistant message to learn from"
    );
}

#[test]
fn the_identity_example_encodes_whole_within_256_tokens() {
    let (tok, template) = smollm2();
    let dir = fixtures().join("../examples/identity");
    let loaded = crate::data::load_dataset("identity,identity_multiturn", &dir, false).unwrap();
    let opts = EncodeOptions {
        cutoff_len: 256,
        train_on_prompt: false,
    };
    for conv in &loaded.conversations {
        let example = encode(&tok, &template, conv, &opts).unwrap();
        let untruncated = encode(&tok, &template, conv, &WIDE).unwrap();
        assert_eq!(example, untruncated, "{}", conv.origin);
        let last = &conv.messages.last().unwrap().content;
        assert!(
            decode_labelled(&tok, &example).ends_with(&format!("{last}<|im_end|>\n")),
            "{}",
            conv.origin
        );
    }
}

#[test]
fn a_template_that_drops_tools_is_refused() {
    let (tok, template) = smollm2();
    let call =
        serde_json::json!({"type": "function", "function": {"name": "lookup", "arguments": {}}});
    let conv = conversation(vec![
        m("user", "Find it."),
        Message::tool_calls(vec![call]),
        m("tool", "found"),
        m("assistant", "Here."),
    ]);
    let err = format!("{:#}", encode(&tok, &template, &conv, &WIDE).unwrap_err());
    assert!(
        err.starts_with("rows.jsonl:3: tools: the chat template leaves out the function `lookup`"),
        "{err}"
    );
}

/// The remote-code families' chat formats (their tokenizers' templates, `tokenizer/templates/`)
/// label each answer with what closes it (EOS; Qwen's `<|im_end|>`) and nothing of the questions.
#[test]
fn remote_code_family_templates_label_the_answers() {
    for (dir, template_name) in [
        ("tokenizer/chatglm3-spm", "chatglm3"),
        ("tokenizer/baichuan2-spm", "baichuan2"),
        ("tokenizer/qwen-tiktoken", "qwen"),
    ] {
        let tok = Tokenizer::from_hf_dir(&fixtures().join(dir)).unwrap();
        let template = ChatTemplate::for_tokenizer(&tok).unwrap();
        let conv = conversation(vec![
            Message::new("user", "Hi there"),
            Message::new("assistant", "Hello friend"),
            Message::new("user", "And 2 more?"),
            Message::new("assistant", "Sure thing"),
        ]);
        let example = encode(&tok, &template, &conv, &WIDE).unwrap();
        let labelled: Vec<u32> = example
            .labels
            .iter()
            .filter(|&&l| l != IGNORE_INDEX)
            .map(|&l| l as u32)
            .collect();
        let text = tok.decode(&labelled, false).unwrap();
        assert!(text.contains("Hello friend"), "{dir}: {text:?}");
        assert!(
            !text.contains("Hi there") && !text.contains("2 more"),
            "{dir}: {text:?}"
        );
        // Qwen's ChatML closes every answer with `<|im_end|>\n`; the others with EOS.
        let closer = match template_name {
            "qwen" => "<|im_end|>\n".to_string(),
            _ => tok.eos_token().unwrap().to_string(),
        };
        assert!(
            text.ends_with(&format!("Sure thing{closer}")),
            "{dir}: {text:?}"
        );
        assert!(
            text.contains(&format!("Hello friend{closer}")),
            "{dir}: {text:?}"
        );
    }
}
