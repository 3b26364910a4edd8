//! A hand-made [`Comparison`] for the renderers' tests: markup in every kind of text (labels,
//! paths, prompts, answers, configs), Chinese text, a row without a reference, a multi-turn prompt
//! and an empty answer.

use std::path::PathBuf;

use super::*;
use crate::eval::metrics::Lang;

/// A row's scores; only BLEU and ROUGE-L are shown per row.
pub fn scores(bleu: f64, rouge_l: f64) -> Scores {
    Scores {
        bleu,
        rouge1: rouge_l,
        rouge2: rouge_l / 2.0,
        rouge_l,
        bleu4_sentence_avg: bleu,
        exact_match: 0.0,
        f1: rouge_l,
        n: 1,
    }
}

fn answer(text: &str, scored: Option<(f64, f64)>) -> Answer {
    Answer {
        text: text.to_owned(),
        scores: scored.map(|(bleu, rouge_l)| scores(bleu, rouge_l)),
    }
}

fn perplexity(value: f64) -> PerplexityReport {
    PerplexityReport {
        perplexity: value,
        mean_nll: value.ln(),
        n_tokens: 12,
        n_documents: 2,
        n_documents_too_short: 0,
    }
}

fn origin(line: usize) -> RowOrigin {
    RowOrigin {
        file: PathBuf::from("data/prompts.jsonl"),
        line,
    }
}

pub const SCRIPT: &str = "<script>alert(\"x\")</script>";

pub fn comparison() -> Comparison {
    let settings = CompareSettings {
        base_model: "models/a&b.gguf".to_owned(),
        adapters: vec![PathBuf::from("runs/<lora>")],
        prompts_file: PathBuf::from("data/prompts \"q\".jsonl"),
        max_new_tokens: 64,
        batch_size: 8,
        chat_template: None,
        score_options: ScoreOptions {
            lang: Lang::En,
            stemmer: false,
        },
        perplexity_data: Some(PathBuf::from("heldout.txt")),
        max_length: 1024,
        precision: Precision::Stored,
    };
    let adapter = AdapterSettings {
        dir: PathBuf::from("runs/<lora>"),
        config: vec![
            ("peft_type".to_owned(), "LORA".to_owned()),
            ("r".to_owned(), "8".to_owned()),
            ("target_modules".to_owned(), "q_proj, v_proj".to_owned()),
        ],
        training_args: Some((
            PathBuf::from("runs/training_args.yaml"),
            "lora_rank: 8\ntemplate: <b>bold</b>\n".to_owned(),
        )),
    };
    let models = vec![
        ModelRun {
            label: "base".to_owned(),
            adapter: None,
            scores: Some(scores(10.0, 20.0)),
            diversity: Diversity {
                distinct_1: 50.0,
                distinct_2: 75.0,
                repetition_4: 0.0,
            },
            seconds: 4.0,
            rows_per_second: 0.75,
            answer_perplexity: Some(perplexity(30.5)),
            data_perplexity: Some(perplexity(20.25)),
        },
        ModelRun {
            label: "<lora>".to_owned(),
            adapter: Some(adapter),
            scores: Some(scores(40.0, 60.0)),
            diversity: Diversity {
                distinct_1: 60.0,
                distinct_2: 80.5,
                repetition_4: 12.5,
            },
            seconds: 5.0,
            rows_per_second: 0.6,
            answer_perplexity: Some(perplexity(3.5)),
            data_perplexity: Some(perplexity(21.0)),
        },
    ];
    let rows = vec![
        RowReport {
            origin: origin(1),
            prompt: vec![Message::new("user", format!("Say {SCRIPT} & 'quote'"))],
            reference: Some("I'm \"Kestrel\" & <b>friends</b>".to_owned()),
            answers: vec![
                answer("Hello ```fenced``` there", Some((1.5, 2.25))),
                answer("I'm Kestrel.\n\nSecond line", Some((55.5, 66.75))),
            ],
        },
        RowReport {
            origin: origin(2),
            prompt: vec![Message::new("user", "你好，你是谁？")],
            reference: None,
            answers: vec![answer("我是一个助手。", None), answer("", None)],
        },
        RowReport {
            origin: origin(3),
            prompt: vec![
                Message::new("system", "Be brief."),
                Message::new("user", "Hi"),
                Message::new("assistant", "Hello!"),
                Message::new("user", "Who made you?"),
            ],
            reference: Some("The Hone project.".to_owned()),
            answers: vec![
                answer("Nobody.", Some((0.0, 0.0))),
                answer("The Hone project.", Some((100.0, 100.0))),
            ],
        },
    ];
    Comparison {
        settings,
        models,
        rows,
    }
}
