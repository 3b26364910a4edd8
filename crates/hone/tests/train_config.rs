//! `hone train` configs: LLaMA-Factory's example runs unchanged, mistakes are reported with the
//! file, line (or override), key and what is allowed, the printed config loads back to the same
//! config, and the derived step counts follow transformers' Trainer (golden fixture).

mod common;

use std::path::{Path, PathBuf};

use common::fixture;
use hone::model::ModelConfig;
use hone::train::config::{CommaList, FinetuningType, ResumeFrom, SftConfig, StepCount};
use hone::train::schedule::ScheduleKind;

fn example() -> PathBuf {
    fixture("config/llama3_lora_sft.yaml")
}

/// The config of the tiny fixture model `name`.
fn model_config(name: &str) -> ModelConfig {
    ModelConfig::from_hf_file(&fixture(&format!("models/{name}/config.json"))).unwrap()
}

fn overrides(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A config file with `body` in a fresh temp dir (kept alive by the returned guard).
fn config_file(body: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.yaml");
    std::fs::write(&path, body).unwrap();
    (dir, path)
}

const MINIMAL: &str = "model_name_or_path: models/tiny\ndataset: alpaca\n";

fn load_error(path: &Path, over: &[&str]) -> String {
    match SftConfig::load(path, &overrides(over)) {
        Ok(c) => panic!("loaded but should have failed: {c:?}"),
        Err(e) => {
            let text = format!("{e:#}");
            assert!(!text.contains('\n'), "error is not one line: {text}");
            text
        }
    }
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error {err:?} does not mention {p:?}");
    }
}

#[test]
fn llama_factory_example_loads_unchanged() {
    let c = SftConfig::load(&example(), &[]).unwrap();
    assert_eq!(
        c.model.model_name_or_path,
        "meta-llama/Meta-Llama-3-8B-Instruct"
    );
    assert_eq!(c.method.finetuning_type, FinetuningType::Lora);
    assert_eq!(c.method.lora_rank, 8);
    assert_eq!(
        c.lora_alpha(),
        16,
        "unset alpha is 2 * rank, as LLaMA-Factory"
    );
    assert_eq!(
        c.method.lora_alpha,
        Some(16),
        "filled in so --print-config shows it"
    );
    assert_eq!(
        c.lora_target_modules(&model_config("llama-gqa")),
        [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj"
        ]
    );
    assert_eq!(
        c.lora_target_modules(&model_config("phi3")),
        ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
        "`all` is the model's own linear layers, fused ones included"
    );
    assert_eq!(
        c.data.dataset,
        Some(CommaList::from("identity,alpaca_en_demo"))
    );
    assert_eq!(c.data.template.as_deref(), Some("llama3"));
    assert_eq!((c.data.cutoff_len, c.data.max_samples), (2048, Some(1000)));
    assert_eq!(c.output.output_dir, "saves/llama3-8b/lora/sft");
    assert_eq!(c.output.logging_steps, StepCount::Steps(10));
    assert_eq!(c.output.save_steps, StepCount::Steps(500));
    assert!(c.output.plot_loss && c.output.overwrite_output_dir);
    assert_eq!(c.output.resume_from_checkpoint, ResumeFrom::No);
    assert_eq!(c.train.per_device_train_batch_size, 1);
    assert_eq!(c.train.gradient_accumulation_steps, 8);
    assert_eq!(c.train.learning_rate, 1e-4);
    assert_eq!(c.train.num_train_epochs, 3.0);
    assert_eq!(c.train.lr_scheduler_type, ScheduleKind::Cosine);
    assert_eq!(c.train.warmup_ratio, 0.1);
    // Defaults of the keys the example leaves out: LLaMA-Factory's and transformers'.
    assert_eq!(c.method.lora_dropout, 0.0);
    assert_eq!(c.data.dataset_dir, "data");
    assert_eq!(c.train.seed, 42);
    assert_eq!(c.train.max_grad_norm, 1.0);
    assert_eq!((c.train.adam_beta1, c.train.adam_beta2), (0.9, 0.999));
    assert_eq!(c.eval.per_device_eval_batch_size, 8);

    let ignored = c.ignored_settings().join("\n");
    for key in [
        "trust_remote_code",
        "overwrite_cache",
        "preprocessing_num_workers",
        "dataloader_num_workers",
        "ddp_timeout",
        "plot_loss",
    ] {
        assert!(
            ignored.contains(key),
            "{key} not reported as ignored:\n{ignored}"
        );
    }
    assert!(
        !ignored.contains("report_to"),
        "report_to: none is Hone's behaviour"
    );
}

#[test]
fn example_eval_section_applies_as_overrides() {
    let c = SftConfig::load(
        &example(),
        &overrides(&[
            "val_size=0.1",
            "per_device_eval_batch_size=1",
            "eval_strategy=steps",
            "eval_steps=500",
        ]),
    )
    .unwrap();
    assert_eq!(c.data.val_size, 0.1);
    assert_eq!(c.val_rows(1000).unwrap(), 100);
    assert_eq!(c.eval_interval(375), Some(500));
}

#[test]
fn misspelled_key_names_the_file_line_and_nearest_key() {
    let (_dir, path) = config_file(&format!("{MINIMAL}lora_rnak: 16\n"));
    let err = load_error(&path, &[]);
    assert_mentions(
        &err,
        &[
            &format!("{}:3: lora_rnak", path.display()),
            "unknown key",
            "`lora_rank`",
        ],
    );

    let (_dir, path) = config_file(&format!("learnig_rate: 1.0e-4\n{MINIMAL}"));
    let err = load_error(&path, &[]);
    assert_mentions(&err, &[":1: learnig_rate", "`learning_rate`"]);

    // LLaMA-Factory keys Hone does not have are unknown too, with the closest Hone key.
    let (_dir, path) = config_file(&format!("{MINIMAL}deepspeed: ds_z3_config.json\n"));
    assert_mentions(
        &load_error(&path, &[]),
        &[":3: deepspeed: unknown key", "`seed`"],
    );
}

#[test]
fn wrong_types_and_values_name_the_key_and_what_is_allowed() {
    let cases = [
        (
            "lora_rank: eight",
            ":3: lora_rank",
            "expected a whole number",
        ),
        (
            "learning_rate: fast",
            ":3: learning_rate",
            "expected a number",
        ),
        (
            "lr_scheduler_type: cosine_with_restarts",
            ":3: lr_scheduler_type",
            "constant_with_warmup",
        ),
        ("finetuning_type: qlora", ":3: finetuning_type", "`freeze`"),
        ("stage: ppo", ":3: stage", "`dpo`"),
        ("logging_steps: 1.5", ":3: logging_steps", "ratio in (0, 1)"),
        (
            "resume_from_checkpoint: 3",
            ":3: resume_from_checkpoint",
            "checkpoint directory",
        ),
        ("lora_dropout: 1.5", ":3: lora_dropout", "[0, 1)"),
        ("lora_target: q_proj,v_prj", ":3: lora_target", "`v_proj`"),
        (
            "freeze_trainable_layers: 0",
            ":3: freeze_trainable_layers",
            "first N",
        ),
        ("do_train: false", ":3: do_train", "always trains"),
        (
            "save_only_model: true",
            ":3: save_only_model",
            "optimizer state",
        ),
        ("val_size: 1.5", ":3: val_size", "whole number"),
        ("loraplus_lr_ratio: 0", ":3: loraplus_lr_ratio", "positive"),
    ];
    for (line, at, allowed) in cases {
        let (_dir, path) = config_file(&format!("{MINIMAL}{line}\n"));
        let err = load_error(&path, &[]);
        assert_mentions(&err, &[&path.display().to_string(), at, allowed]);
    }
}

#[test]
fn rules_between_keys_blame_the_key_where_it_was_set() {
    let (_dir, path) = config_file(&format!("{MINIMAL}eval_dataset: held_out\nval_size: 0.1\n"));
    assert_mentions(&load_error(&path, &[]), &[":4: val_size", "eval_dataset"]);

    let (_dir, path) = config_file(MINIMAL);
    assert_mentions(
        &load_error(&path, &["eval_strategy=steps"]),
        &["override `eval_strategy=steps`: eval_strategy", "val_size"],
    );
    assert_mentions(
        &load_error(&path, &["do_predict=true", "val_size=0.1"]),
        &["do_predict", "predict_with_generate: true"],
    );
    assert_mentions(
        &load_error(
            &path,
            &[
                "dataset=a,b",
                "eval_dataset=c",
                "mix_strategy=interleave_under",
                "interleave_probs=0.5,0.5",
            ],
        ),
        &[
            "interleave_probs",
            "eval_dataset has 1 datasets and dataset 2",
        ],
    );
    assert_mentions(
        &load_error(
            &path,
            &[
                "stage=rm",
                "do_predict=true",
                "predict_with_generate=true",
                "val_size=0.1",
            ],
        ),
        &["predict_with_generate", "scores, not text"],
    );
    assert_mentions(
        &load_error(&path, &["stage=dpo", "packing=true"]),
        &["override `packing=true`: packing", "they are not packed"],
    );
    assert_mentions(
        &load_error(&path, &["dpo_label_smoothing=0.1", "pref_loss=ipo"]),
        &["dpo_label_smoothing", "pref_loss: sigmoid"],
    );
    assert_mentions(
        &load_error(&path, &["interleave_probs=0.5,0.5"]),
        &["interleave_probs", "mix_strategy"],
    );
    assert_mentions(
        &load_error(&path, &["finetuning_type=full", "use_rslora=true"]),
        &["override `use_rslora=true`: use_rslora", "lora"],
    );
    assert_mentions(
        &load_error(&path, &["target_modules=k_proj"]),
        &[
            "override `target_modules=k_proj`: target_modules",
            "finetuning_type: ia3",
        ],
    );
    assert_mentions(
        &load_error(
            &path,
            &[
                "finetuning_type=ia3",
                "target_modules=k_proj",
                "feedforward_modules=down_proj",
            ],
        ),
        &["feedforward_modules", "subset of target_modules"],
    );
    let starts: [(&[&str], &str, &str); 4] = [
        (
            &["init_lora_weights=loftq"],
            "init_lora_weights",
            "olora, pissa or pissa_niter_N",
        ),
        (
            &["pissa_init=true", "init_lora_weights=olora"],
            "init_lora_weights",
            "keep one",
        ),
        (&["pissa_init=true", "use_dora=true"], "pissa_init", "DoRA"),
        (&["pissa_iter=-2"], "pissa_iter", "-1 (exact)"),
    ];
    for (keys, key, problem) in starts {
        assert_mentions(&load_error(&path, keys), &[key, problem]);
    }
    for key in ["use_dora=true", "loraplus_lr_ratio=16"] {
        let name = key.split('=').next().unwrap();
        assert_mentions(
            &load_error(&path, &["finetuning_type=full", key]),
            &[
                &format!("override `{key}`: {name}"),
                "finetuning_type: lora",
            ],
        );
    }
    assert_mentions(
        &load_error(&path, &["bf16=true", "fp16=true"]),
        &["fp16", "cannot both"],
    );

    let (_dir, path) = config_file("dataset: alpaca\n");
    let err = load_error(&path, &[]);
    assert_mentions(
        &err,
        &[&format!("{}: model_name_or_path: required", path.display())],
    );
}

#[test]
fn overrides_are_yaml_scalars_checked_like_file_keys() {
    let (_dir, path) = config_file(MINIMAL);
    let c = SftConfig::load(
        &path,
        &overrides(&[
            "learning_rate=2e-4",
            "lora_rank=16",
            "lora_target=q_proj, v_proj",
            "resume_from_checkpoint=true",
            "max_samples=",
            "num_train_epochs=1",
            "warmup_steps=0.25",
        ]),
    )
    .unwrap();
    assert_eq!(c.train.learning_rate, 2e-4);
    assert_eq!(
        c.lora_alpha(),
        32,
        "the default alpha follows the overridden rank"
    );
    assert_eq!(
        c.lora_target_modules(&model_config("llama-gqa")),
        ["q_proj", "v_proj"]
    );
    assert_eq!(c.output.resume_from_checkpoint, ResumeFrom::Latest);
    assert_eq!(c.data.max_samples, None);
    assert_eq!(c.train.num_train_epochs, 1.0);
    assert_eq!(c.train.warmup_steps, StepCount::Ratio(0.25));

    assert_mentions(
        &load_error(&path, &["lora_rank=abc"]),
        &["override `lora_rank=abc`: lora_rank", "whole number"],
    );
    assert_mentions(
        &load_error(&path, &["lora_rnak=4"]),
        &[
            "override `lora_rnak=4`: lora_rnak: unknown key",
            "`lora_rank`",
        ],
    );
    assert_mentions(
        &load_error(&path, &["lora_rank"]),
        &["override `lora_rank`", "key=value"],
    );
}

#[test]
fn printed_config_loads_back_to_the_same_config() {
    let (_dir, minimal) = config_file(MINIMAL);
    let runs = [
        (example(), overrides(&[])),
        (
            example(),
            overrides(&[
                "val_size=0.1",
                "eval_strategy=steps",
                "early_stopping_steps=3",
            ]),
        ),
        (
            minimal,
            overrides(&[
                "finetuning_type=freeze",
                "freeze_trainable_layers=-3",
                "freeze_trainable_modules=mlp,self_attn",
                "freeze_extra_modules=embed_tokens",
                "logging_steps=0.05",
                "resume_from_checkpoint=out/checkpoint-40",
                "neftune_noise_alpha=5",
                "eval_dataset=[held_out, more]",
                "eval_strategy=epoch",
                "learning_rate=3e-5",
                "adam_epsilon=1e-6",
            ]),
        ),
    ];
    for (path, over) in runs {
        let config = SftConfig::load(&path, &over).unwrap();
        let printed = config.to_yaml();
        let (_dir, reprinted) = config_file(&printed);
        let again = SftConfig::load(&reprinted, &[]).unwrap();
        assert_eq!(again, config, "printed config:\n{printed}");
        assert_eq!(again.to_yaml(), printed);
    }
}

#[test]
fn step_plans_and_warmup_match_transformers() {
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture("config/hf_step_plans.json")).unwrap(),
    )
    .unwrap();
    let (_dir, path) = config_file(MINIMAL);
    for case in cases {
        let over = [
            "per_device_train_batch_size",
            "gradient_accumulation_steps",
            "num_train_epochs",
            "max_steps",
            "warmup_steps",
        ]
        .map(|k| format!("{k}={}", case[k]));
        let c = SftConfig::load(&path, &over).unwrap();
        let plan = c
            .step_plan(case["rows"].as_u64().unwrap() as usize)
            .unwrap();
        let got = [
            plan.batches_per_epoch,
            plan.steps_per_epoch,
            plan.epochs,
            plan.total_steps,
            c.warmup_steps(plan.total_steps),
        ];
        let want = [
            "batches_per_epoch",
            "steps_per_epoch",
            "epochs",
            "total_steps",
            "warmup",
        ]
        .map(|k| case[k].as_u64().unwrap());
        assert_eq!(got, want, "case {case}");
    }
}

#[test]
fn warmup_ratio_applies_when_warmup_steps_is_unset() {
    let c = SftConfig::load(&example(), &[]).unwrap();
    let plan = c.step_plan(1000).unwrap();
    assert_eq!(plan.total_steps, 375);
    assert_eq!(c.warmup_steps(plan.total_steps), 38, "ceil(0.1 * 375)");
    let s = c.schedule(plan.total_steps);
    assert_eq!(
        (s.kind, s.warmup_steps, s.training_steps),
        (ScheduleKind::Cosine, 38, 375)
    );
    let c = SftConfig::load(&example(), &overrides(&["warmup_steps=5"])).unwrap();
    assert_eq!(
        c.warmup_steps(375),
        5,
        "warmup_steps wins over warmup_ratio"
    );
}

#[test]
fn lora_scaling_follows_peft() {
    let (_dir, path) = config_file(MINIMAL);
    let plain = SftConfig::load(&path, &overrides(&["lora_rank=16", "lora_alpha=8"])).unwrap();
    assert_eq!(plain.lora_scaling(), 0.5);
    let rs = SftConfig::load(&path, &overrides(&["lora_rank=16", "use_rslora=true"])).unwrap();
    assert_eq!(rs.lora_scaling(), 32.0 / 4.0);
}

#[test]
fn validation_split_rounds_up_and_keeps_training_rows() {
    let (_dir, path) = config_file(MINIMAL);
    let ratio = SftConfig::load(&path, &overrides(&["val_size=0.15"])).unwrap();
    assert_eq!(
        ratio.val_rows(10).unwrap(),
        2,
        "ceil(0.15 * 10), as datasets"
    );
    let count = SftConfig::load(&path, &overrides(&["val_size=4"])).unwrap();
    assert_eq!(count.val_rows(10).unwrap(), 4);
    let err = count.val_rows(4).unwrap_err().to_string();
    assert_mentions(&err, &["val_size", "none to train on"]);
    assert_eq!(
        SftConfig::load(&path, &[]).unwrap().val_rows(10).unwrap(),
        0
    );
}
