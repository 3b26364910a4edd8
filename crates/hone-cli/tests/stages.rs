//! End-to-end tests of the training stages beyond SFT on the tiny GGUF model, driven by
//! LLaMA-Factory's own example configs (fixtures/config/qwen3_lora_*.yaml) with only the paths
//! changed, over slices of its demo datasets (fixtures/data/llamafactory).

mod common;

use std::path::{Path, PathBuf};

use common::{arg, fixture, hone, log_lines, losses, read_json, tiny_gguf};

/// `hone train EXAMPLE` with the model, data and output paths changed, plus `overrides`.
fn run_example(example: &str, out: &Path, overrides: &[&str]) -> common::Run {
    let config = fixture(&format!("config/{example}"));
    let paths = [
        format!("model_name_or_path={}", arg(&tiny_gguf())),
        format!("dataset_dir={}", arg(&fixture("data/llamafactory"))),
        format!("output_dir={}", arg(out)),
    ];
    let mut args = vec!["train", arg(&config)];
    args.extend(paths.iter().map(String::as_str));
    args.extend(overrides);
    hone(&args)
}

fn out_dir(dir: &Path) -> PathBuf {
    dir.join("out")
}

/// LLaMA-Factory's pre-training example (c4_demo) runs: the documents become `cutoff_len` blocks
/// learnt on every token, and a PEFT adapter is saved.
#[test]
fn the_pretraining_example_trains_on_blocks_of_raw_text() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_dir(dir.path());
    let run = run_example(
        "qwen3_lora_pretrain.yaml",
        &out,
        &["cutoff_len=64", "max_steps=3", "logging_steps=1"],
    );
    run.ok();
    let stderr = &run.stderr;
    let note = stderr
        .lines()
        .find(|l| l.starts_with("continued pre-training: 6 documents, "))
        .unwrap_or_else(|| panic!("no pre-training note in:\n{stderr}"));
    // "…, T tokens in B blocks of 64 tokens; …": every token in a block, the last one shorter.
    let words: Vec<&str> = note.split(' ').collect();
    let tokens: usize = words[4].parse().unwrap();
    let blocks: usize = words[7].parse().unwrap();
    assert_eq!(blocks, tokens.div_ceil(64), "{note}");
    assert_eq!(losses(&out).len(), 3);
    assert!(out.join("adapter_model.safetensors").is_file());
    let record = read_json(&out.join("dataset_record.json"));
    assert_eq!(record["files"][0]["rows_used"], 6);
    assert_eq!(record["train_rows"], blocks);
}

/// A `.txt` corpus is a document a line; without packing each document is a row of its own.
#[test]
fn a_text_corpus_trains_a_document_a_row_without_packing() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_dir(dir.path());
    let run = run_example(
        "qwen3_lora_pretrain.yaml",
        &out,
        &[
            "dataset=wiki_demo",
            "packing=false",
            "cutoff_len=32",
            "max_steps=1",
        ],
    );
    run.ok();
    let stderr = &run.stderr;
    assert!(
        stderr.contains("continued pre-training: 2 documents, 64 tokens in 2 rows (a document each, cut to 32 tokens)"),
        "{stderr}"
    );
    assert_eq!(log_lines(&out).last().unwrap()["current_steps"], 1);
}

/// Preference data cannot feed supervised or pre-training stages: one line naming the file.
#[test]
fn preference_data_is_refused_outside_preference_stages() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_dir(dir.path());
    let run = run_example(
        "qwen3_lora_pretrain.yaml",
        &out,
        &["dataset=dpo_en_demo", "max_steps=1"],
    );
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    // The example's ignored keys are noted first; the error is the last line.
    let error = run.stderr.lines().last().unwrap();
    assert!(
        error.starts_with("error: ")
            && error.contains("dpo_en_demo.json: ranking: a preference dataset"),
        "{error}"
    );
}

const DPO_RUN: &[&str] = &[
    "cutoff_len=64",
    "max_steps=6",
    "logging_steps=1",
    "learning_rate=1e-2",
    "per_device_train_batch_size=2",
    "gradient_accumulation_steps=1",
    "save_steps=3",
    "val_size=2",
    "eval_strategy=steps",
    "eval_steps=3",
];

/// LLaMA-Factory's DPO example runs with only its paths changed: the first step's loss is ln 2
/// (the policy starts as the reference), TRL's metrics are logged (LLaMA-Factory's `accuracy` in
/// trainer_log.jsonl), evaluation reports the pairs' loss and metrics, and a run resumed from a
/// checkpoint continues exactly (its reference comes from the checkpoint).
#[test]
fn the_dpo_example_starts_at_ln_2_logs_trl_metrics_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_dir(dir.path());
    let run = run_example("qwen3_lora_dpo.yaml", &out, DPO_RUN);
    run.ok();
    assert!(
        run.stderr
            .contains("reference: the starting model's log-probabilities of 16 responses"),
        "{}",
        run.stderr
    );
    let expected = losses(&out);
    assert_eq!(expected.len(), 6);
    assert!(
        (expected[0] - std::f64::consts::LN_2).abs() < 1e-12,
        "step 1: {}",
        expected[0]
    );
    let state = read_json(&out.join("trainer_state.json"));
    let history = state["log_history"].as_array().unwrap();
    let first = &history[0];
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
    ] {
        assert_eq!(first[key], 0.0, "{key} at step 1: {first}");
    }
    assert!(first["logps/chosen"].as_f64().unwrap() < 0.0, "{first}");
    let evaluation = history
        .iter()
        .find(|e| e.get("eval_loss").is_some())
        .expect("an evaluation");
    assert!(
        evaluation["eval_rewards/accuracies"].is_number(),
        "{evaluation}"
    );
    assert!(log_lines(&out).iter().any(|l| l["accuracy"].is_number()));
    assert!(out.join("checkpoint-3/reference_logps.json").is_file());
    assert!(out.join("adapter_model.safetensors").is_file());

    let checkpoint = format!("resume_from_checkpoint={}", arg(&out.join("checkpoint-3")));
    let resumed = run_example(
        "qwen3_lora_dpo.yaml",
        &out,
        &[DPO_RUN, &[checkpoint.as_str()]].concat(),
    );
    resumed.ok();
    let all = losses(&out);
    assert_eq!(&all[6..], &expected[3..], "resumed losses differ");
}

/// Every `pref_loss` trains: the reference-free ones (orpo, simpo) compute no reference.
#[test]
fn every_preference_loss_trains() {
    for loss in ["sigmoid", "hinge", "ipo", "orpo", "simpo"] {
        let dir = tempfile::tempdir().unwrap();
        let out = out_dir(dir.path());
        let pref_loss = format!("pref_loss={loss}");
        let run = run_example(
            "qwen3_lora_dpo.yaml",
            &out,
            &[
                "cutoff_len=64",
                "max_steps=2",
                "logging_steps=1",
                &pref_loss,
            ],
        );
        run.ok();
        assert_eq!(
            run.stderr.contains("reference: the starting model"),
            ["sigmoid", "hinge", "ipo"].contains(&loss),
            "{loss}: {}",
            run.stderr
        );
        let losses = losses(&out);
        assert!(losses.iter().all(|l| l.is_finite()), "{loss}: {losses:?}");
    }
}

/// Several datasets are mixed as `datasets.interleave_datasets` mixes them, `max_samples` cuts
/// each dataset, and the run says what each gave.
#[test]
fn datasets_mix_and_the_run_says_what_each_gave() {
    for (overrides, note) in [
        (
            &["mix_strategy=interleave_under"][..],
            "datasets mixed (interleave_under): 4 rows taken (c4_demo 2 of 6, wiki_demo 2 of 2)",
        ),
        (
            &["max_samples=1"][..],
            "datasets mixed (concat): 2 rows taken (c4_demo 1 of 6, wiki_demo 1 of 2)",
        ),
        (
            &["mix_strategy=interleave_over", "interleave_probs=0.5,0.5"][..],
            "datasets mixed (interleave_over): ",
        ),
        // eval_dataset is mixed and cut by max_samples too, as LLaMA-Factory does.
        (
            &[
                "mix_strategy=interleave_under",
                "eval_dataset=wiki_demo,c4_demo",
                "max_samples=3",
            ][..],
            "eval_dataset: datasets mixed (interleave_under): 4 rows taken (wiki_demo 2 of 2, c4_demo 2 of 6)",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = out_dir(dir.path());
        let args = [
            &["dataset=c4_demo,wiki_demo", "cutoff_len=64", "max_steps=1"][..],
            overrides,
        ]
        .concat();
        let run = run_example("qwen3_lora_pretrain.yaml", &out, &args);
        run.ok();
        assert!(run.stderr.contains(note), "{overrides:?}: {}", run.stderr);
    }
    let dir = tempfile::tempdir().unwrap();
    let run = run_example(
        "qwen3_lora_pretrain.yaml",
        &out_dir(dir.path()),
        &["dataset=c4_demo,wiki_demo", "interleave_probs=0.5,0.5"],
    );
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("interleave_probs: only valid with mix_strategy"),
        "{}",
        run.stderr
    );
}

/// `hone data` previews every stage: preference pairs as their chosen and rejected examples, the
/// response alone trained after the shared prompt; raw text as blocks, every token trained; KTO
/// rows as their tagged responses and KL examples.
#[test]
fn data_previews_pairs_and_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_dir(dir.path());
    let preview = |example: &str| {
        let config = fixture(&format!("config/{example}"));
        let model = format!("model_name_or_path={}", arg(&tiny_gguf()));
        let data = format!("dataset_dir={}", arg(&fixture("data/llamafactory")));
        let output = format!("output_dir={}", arg(&out));
        let args = [
            "data",
            arg(&config),
            &model,
            &data,
            &output,
            "cutoff_len=64",
            "--rows",
            "2",
        ];
        hone(&args).ok().to_string()
    };
    let pairs = preview("qwen3_lora_dpo.yaml");
    assert!(
        pairs.contains("rows          8 read, no rows skipped"),
        "{pairs}"
    );
    assert!(pairs.contains("in 16 examples"), "{pairs}");
    assert!(pairs.contains("dpo_en_demo.json:2, chosen;"), "{pairs}");
    assert!(pairs.contains("dpo_en_demo.json:2, rejected;"), "{pairs}");
    // Both rows end with the trained response after the same untrained prompt.
    let rows: Vec<&str> = pairs.split("\nrow ").skip(1).collect();
    let prompt = |row: &str| {
        row.split_once('\n')
            .unwrap()
            .1
            .split("[[")
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(prompt(rows[0]), prompt(rows[1]));
    assert!(rows.iter().all(|r| r.trim_end().ends_with("]]")), "{pairs}");
    assert!(!pairs.contains("packing"), "{pairs}");

    let blocks = preview("qwen3_lora_pretrain.yaml");
    assert!(blocks.contains("100.0%) carry the loss"), "{blocks}");
    assert!(blocks.contains("row 1 (block 1;"), "{blocks}");
}

/// A checkpoint of a reference-free run (ORPO) cannot resume a run that needs a reference: one
/// line naming the checkpoint, no panic.
#[test]
fn resuming_a_reference_free_checkpoint_with_a_reference_loss_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_dir(dir.path());
    let run = ["cutoff_len=64", "max_steps=2", "save_steps=1"];
    run_example(
        "qwen3_lora_dpo.yaml",
        &out,
        &[&run[..], &["pref_loss=orpo"]].concat(),
    )
    .ok();
    let resume = format!("resume_from_checkpoint={}", arg(&out.join("checkpoint-1")));
    let again = run_example(
        "qwen3_lora_dpo.yaml",
        &out,
        &[&run[..], &[resume.as_str()]].concat(),
    );
    assert_eq!(again.code, Some(1), "{}", again.stderr);
    let error = again.stderr.lines().last().unwrap();
    assert!(
        error.starts_with("error: ")
            && error.contains("checkpoint-1: the checkpoint keeps no reference"),
        "{error}"
    );
}

/// LLaMA-Factory's KTO example runs with only its paths changed: the first loss is 1 − σ(0) = 0.5
/// exactly (the policy starts as the reference, z0 = 0), TRL's KTO metrics are logged (`kl`,
/// rewards of desirable and undesirable responses), the reference is kept in checkpoints and a
/// resumed run continues exactly.
#[test]
fn the_kto_example_starts_at_one_half_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_dir(dir.path());
    let settings = [
        "cutoff_len=64",
        "max_steps=4",
        "logging_steps=1",
        "learning_rate=1e-2",
        "per_device_train_batch_size=2",
        "gradient_accumulation_steps=2",
        "save_steps=2",
    ];
    let run = run_example("qwen3_lora_kto.yaml", &out, &settings);
    run.ok();
    let expected = losses(&out);
    assert_eq!(expected[0], 0.5, "step 1");
    assert!(expected[3] < 0.5, "the loss did not fall: {expected:?}");
    let state = read_json(&out.join("trainer_state.json"));
    let first = &state["log_history"][0];
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "kl",
    ] {
        assert_eq!(first[key], 0.0, "{key} at step 1: {first}");
    }
    assert!(first.get("rewards/accuracies").is_none(), "{first}");
    assert!(out.join("checkpoint-2/reference_logps.json").is_file());

    let checkpoint = format!("resume_from_checkpoint={}", arg(&out.join("checkpoint-2")));
    let resumed = run_example(
        "qwen3_lora_kto.yaml",
        &out,
        &[&settings[..], &[checkpoint.as_str()]].concat(),
    );
    resumed.ok();
    assert_eq!(&losses(&out)[4..], &expected[2..], "resumed losses differ");
}

const RM_RUN: &[&str] = &[
    "cutoff_len=64",
    "max_steps=4",
    "logging_steps=1",
    "learning_rate=1e-3",
    "per_device_train_batch_size=2",
    "gradient_accumulation_steps=1",
    "save_steps=2",
    "val_size=2",
    "eval_strategy=steps",
    "eval_steps=2",
    "do_predict=true",
];

/// LLaMA-Factory's reward-model example runs with only its paths changed: a new value head
/// trains with the adapter and is saved beside it (and in each checkpoint) as LLaMA-Factory's
/// `value_head.safetensors`; evaluation reports `eval_accuracy`; `do_predict` writes the
/// validation pairs' scores; a resumed run continues exactly, and a run continuing the adapter
/// reads its value head back.
#[test]
fn the_reward_example_trains_a_value_head_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_dir(dir.path());
    let run = run_example("qwen3_lora_reward.yaml", &out, RM_RUN);
    run.ok();
    assert!(
        run.stderr.contains("value head: new, Linear(16, 1)"),
        "{}",
        run.stderr
    );
    let expected = losses(&out);
    assert_eq!(expected.len(), 4);
    assert!(expected.iter().all(|l| l.is_finite() && *l > 0.0));
    let state = read_json(&out.join("trainer_state.json"));
    let evaluation = state["log_history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e.get("eval_loss").is_some())
        .expect("an evaluation");
    let accuracy = evaluation["eval_accuracy"].as_f64().unwrap();
    assert!([0.0, 0.5, 1.0].contains(&accuracy), "{evaluation}");
    for file in [
        "value_head.safetensors",
        "checkpoint-2/value_head.safetensors",
    ] {
        let tensors = common::safetensors_shapes(&out.join(file));
        assert_eq!(
            tensors,
            [
                ("v_head.summary.bias".to_string(), vec![1]),
                ("v_head.summary.weight".to_string(), vec![1, 16]),
            ],
            "{file}"
        );
    }
    assert!(out.join("adapter_model.safetensors").is_file());
    let predictions = std::fs::read_to_string(out.join("generated_predictions.jsonl")).unwrap();
    let scores: Vec<serde_json::Value> = predictions
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(scores.len(), 2, "{predictions}");
    assert!(scores
        .iter()
        .all(|s| s["chosen"].is_number() && s["rejected"].is_number()));
    let results = read_json(&out.join("predict_results.json"));
    assert!(results["predict_accuracy"].is_number(), "{results}");

    let checkpoint = format!("resume_from_checkpoint={}", arg(&out.join("checkpoint-2")));
    let resumed = run_example(
        "qwen3_lora_reward.yaml",
        &out,
        &[RM_RUN, &[checkpoint.as_str()]].concat(),
    );
    resumed.ok();
    assert_eq!(&losses(&out)[4..], &expected[2..], "resumed losses differ");

    let more = dir.path().join("more");
    let adapter = format!("adapter_name_or_path={}", arg(&out));
    let continued = run_example(
        "qwen3_lora_reward.yaml",
        &more,
        &["cutoff_len=64", "max_steps=1", adapter.as_str()],
    );
    continued.ok();
    assert!(
        continued
            .stderr
            .contains(&format!("value head: loaded from {}", out.display())),
        "{}",
        continued.stderr
    );
}
