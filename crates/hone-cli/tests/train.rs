//! End-to-end tests of `hone train` on a tiny complete GGUF model (fixtures/tokenizer/tiny-spm.gguf,
//! a llama with a ChatML template): overfitting lowers the loss, the adapter has PEFT's layout and
//! loads for generation, resuming is bit-identical, full and freeze runs write HF checkpoints,
//! and bad configs and data stop with a message naming the file, line and key.

mod common;

use std::path::Path;

use common::{arg, fixture, hone, losses, train_config as setup, TRAIN_ROWS};
use hone::io::gguf::GgufFile;
use hone::quant::bnb::{self, FourBit};
use serde_json::Value;

/// `hone data` shows what training will see: rows read and skipped with the reason, tokens,
/// truncation by `cutoff_len`, the labelled share, packing, and the first rows with the trained
/// tokens in brackets (stdout is not a terminal here).
#[test]
fn data_shows_what_training_will_see() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let data = dir.path().join("data.jsonl");
    let mut rows = std::fs::read_to_string(&data).unwrap();
    rows += "{\"instruction\": \"Hi\"}\n";
    std::fs::write(&data, rows).unwrap();
    let run = hone(&["data", arg(&config), "--rows", "1", "cutoff_len=12"]);
    let out = run.ok();
    let name = data.display().to_string();
    assert!(out.starts_with(&format!("{name} (dataset):\n")), "{out}");
    let skipped = format!(
        "rows          {} read, 1 row skipped: 1 missing field",
        TRAIN_ROWS.len() + 1
    );
    assert!(out.contains(&skipped), "{out}");
    assert!(
        out.contains(&format!("in {} examples: min ", TRAIN_ROWS.len())),
        "{out}"
    );
    assert!(out.contains("cutoff_len    12: "), "{out}");
    assert!(
        !out.contains("12: 0 examples cut"),
        "the short cutoff cuts rows: {out}"
    );
    assert!(
        out.contains("max 12\n"),
        "no example is longer than cutoff_len: {out}"
    );
    assert!(out.contains("note: skip_invalid_rows is false"), "{out}");
    let sample = out.split("\nrow 1 (").nth(1).expect("a sample row");
    assert!(sample.starts_with(&format!("{name}:1; trained tokens in [[ ]]):\n")));
    assert!(sample.contains("[[") && sample.contains("]]"), "{sample}");
    assert!(!out.contains("\nrow 2 ("), "--rows 1 shows one row");
}

/// LLaMA-Factory's tool-calling demo data (glaive: a `tools` column, function_call and observation
/// turns) trains through a template that renders tools: the calls are learnt as the template
/// writes them, the tool results are not. The model's own ChatML template has no tool support:
/// the run stops at the first row with tools, naming it.
#[test]
fn tool_calling_data_trains_through_a_template_with_tools() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let data = [
        "dataset=glaive_toolcall_en_demo".to_string(),
        format!("dataset_dir={}", arg(&fixture("data/llamafactory"))),
        "cutoff_len=2048".to_string(),
    ];
    let template = format!("template={}", arg(&fixture("chat/qwen2.5.jinja")));
    let mut args = vec!["data", arg(&config), "--rows", "1"];
    args.extend(data.iter().map(String::as_str));
    let refused = hone(&[&args[..], &["max_steps=1"]].concat());
    let file = fixture("data/llamafactory/glaive_toolcall_en_demo.json");
    assert!(
        refused.error().starts_with(&format!(
            "error: {}:2: tools: the chat template leaves out the function `search_recipes`",
            file.display()
        )),
        "{}",
        refused.stderr
    );
    let shown = hone(&[&args[..], &[template.as_str()]].concat());
    let out = shown.ok();
    assert!(
        out.contains(
            "\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"search_recipes\""
        ),
        "{out}"
    );
    assert!(
        out.contains("[[<tool_call>\n{\"name\": \"search_recipes\", \"arguments\": {\"ingredients\": [\"chicken\", \"bell peppers\", \"rice\"]}}\n</tool_call><|im_end|>\n]]"),
        "{out}"
    );
    assert!(
        out.contains("<|im_start|>user\n<tool_response>\n{\"recipes\""),
        "{out}"
    );
    // The tiny model's context is 64 tokens: each row keeps its last turns.
    let mut train = vec!["train", arg(&config), template.as_str(), "max_steps=2"];
    train.extend(data.iter().map(String::as_str));
    train.push("cutoff_len=64");
    hone(&train).ok();
    assert_eq!(losses(&dir.path().join("out")).len(), 2);
}

/// `report_to: tensorboard` writes an event file where transformers puts it (`output_dir/runs/
/// {time}_{host}/events.out.tfevents.…`), or in `logging_dir`; other services are noted as
/// ignored. (TensorBoard's own reader checks the contents: scripts/check/tensorboard_events.py.)
#[test]
fn tensorboard_event_files_go_where_transformers_puts_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let run = hone(&[
        "train",
        arg(&config),
        "max_steps=2",
        "report_to=tensorboard,wandb",
    ]);
    run.ok();
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("out/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let files: Vec<_> = std::fs::read_dir(&runs[0]).unwrap().collect();
    assert_eq!(files.len(), 1);
    let file = files[0].as_ref().unwrap().path();
    let name = file.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    assert!(
        run.stderr
            .contains(&format!("TensorBoard: {}", file.display())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("report_to: wandb: ignored"),
        "{}",
        run.stderr
    );
    // The version record and two steps' scalars (loss, grad_norm, learning_rate, epoch).
    let bytes = std::fs::read(&file).unwrap();
    let mut records = 0;
    let mut at = 0;
    while at < bytes.len() {
        let length = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        at += 16 + length;
        records += 1;
    }
    assert_eq!((at, records), (bytes.len(), 1 + 2 * 4));

    let elsewhere = dir.path().join("tb");
    let logging_dir = format!("logging_dir={}", arg(&elsewhere));
    let run = hone(&[
        "train",
        arg(&config),
        "max_steps=1",
        "report_to=all",
        "overwrite_output_dir=true",
        &logging_dir,
    ]);
    run.ok();
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 1);
}

/// `hone lr-find` ramps the learning rate exponentially over the config's own batches (fastai's
/// schedule: step i at start·(end/start)^(i/steps)), records raw and smoothed losses, prints the
/// suggestions and writes lr_find.json and a PNG plot; preference stages are refused.
#[test]
fn lr_find_ramps_the_rate_and_plots_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let out = dir.path().join("lr");
    let run = hone(&[
        "lr-find",
        arg(&config),
        "--steps",
        "12",
        "--start-lr",
        "1e-5",
        "--end-lr",
        "1",
        "--out",
        arg(&out),
    ]);
    let stdout = run.ok();
    assert!(
        stdout.contains("suggested learning rates: valley "),
        "{stdout}"
    );
    let found: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lr_find.json")).unwrap()).unwrap();
    let lrs: Vec<f64> = serde_json::from_value(found["lrs"].clone()).unwrap();
    assert!(!lrs.is_empty() && lrs.len() <= 12, "{lrs:?}");
    for (i, lr) in lrs.iter().enumerate() {
        let want = 1e-5 * 1e5f64.powf(i as f64 / 12.0);
        assert!(
            (lr - want).abs() <= 1e-12 * want,
            "step {i}: {lr} vs {want}"
        );
    }
    let raw: Vec<f64> = serde_json::from_value(found["raw_losses"].clone()).unwrap();
    let smoothed: Vec<f64> = serde_json::from_value(found["smoothed_losses"].clone()).unwrap();
    // The first smoothed loss is the first loss (debiased average of one value).
    assert!((smoothed[0] - raw[0]).abs() < 1e-9 * raw[0]);
    let png = std::fs::read(out.join("lr_find.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let refused = hone(&["lr-find", arg(&config), "stage=dpo", "--out", arg(&out)]);
    assert!(refused.error().contains("stage: dpo"), "{}", refused.stderr);
}

/// `template:` a LLaMA-Factory name is noted (the model's own template renders), a misspelt one
/// gets the nearest names, and a path to no file is an error rather than a name.
#[test]
fn template_names_and_paths() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let data = |template: &str| hone(&["data", arg(&config), "--rows", "0", template]);
    let known = data("template=qwen3");
    assert!(known
        .ok()
        .starts_with("note: template: qwen3: using the model's own chat template"));
    let typo = data("template=qwen33");
    let note = "note: template: qwen33 (not one of LLaMA-Factory's template names; nearest: qwen3";
    assert!(typo.ok().starts_with(note), "{}", typo.stdout);
    let missing = data("template=templates/chat.jinja");
    let err = missing.error();
    assert!(
        err.contains("template: templates/chat.jinja: no such file"),
        "{err}"
    );
}

/// The output directory records the data as the run read it when the run starts: the file's
/// SHA-256 and size, its rows, the rows `max_samples` kept, and the split they went into.
#[test]
fn the_run_records_its_dataset_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let run = hone(&[
        "train",
        arg(&config),
        "max_steps=1",
        "max_samples=5",
        "val_size=2",
    ]);
    run.ok();
    let out = dir.path().join("out");
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dataset_record.json")).unwrap())
            .unwrap();
    let data = dir.path().join("data.jsonl");
    let (sha256, bytes) = hone::data::record::sha256_file(&data).unwrap();
    let want = serde_json::json!({
        "files": [{
            "path": data.display().to_string(),
            "role": "dataset",
            "sha256": sha256,
            "bytes": bytes,
            "rows": TRAIN_ROWS.len(),
            "rows_used": 5,
        }],
        "train_rows": 3,
        "eval_rows": 2,
    });
    assert_eq!(record, want);
    assert_eq!(bytes, std::fs::metadata(&data).unwrap().len());
}

#[test]
fn lora_overfits_writes_a_peft_adapter_and_the_adapter_generates() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let run = hone(&["train", arg(&config), "max_steps=40", "learning_rate=3e-2"]);
    run.ok();
    assert!(
        run.stderr.contains("trainable params: ") && run.stderr.contains("step 40/40"),
        "{}",
        run.stderr
    );
    let out = dir.path().join("out");
    let losses = losses(&out);
    assert_eq!(losses.len(), 40);
    // The tiny model's tied head is small and frozen, so LoRA moves its loss slowly.
    assert!(
        losses[39] < losses[0] - 0.1,
        "the loss did not fall: {losses:?}"
    );
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "training_args.yaml",
        "trainer_state.json",
        "train_results.json",
    ] {
        assert!(out.join(file).is_file(), "{file} is missing");
    }
    assert_eq!(run_status(&out)["status"], "finished");
    let adapter: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(adapter["peft_type"], "LORA");
    assert_eq!(adapter["r"], 8);
    assert_eq!(adapter["lora_alpha"], 16);
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let a = st
        .tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        .unwrap();
    assert_eq!(a.shape()[0], 8);
    let b = st
        .tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight")
        .unwrap();
    assert_eq!(b.shape()[1], 8);
    assert!(b.data().iter().any(|&x| x != 0), "lora_B did not train");

    let model_path = fixture("tokenizer/tiny-spm.gguf");
    let model = arg(&model_path);
    let tuned = answer_first_row(&["--model", model, "--adapter", arg(&out)]);
    let base = answer_first_row(&["--model", model]);
    assert_ne!(tuned.ok(), base.ok(), "the adapter changed nothing");
}

/// `hone merge` of the adapter in `out` into tiny-spm, written under `dir`; the merged directory.
fn merge_into_tiny_model(out: &Path, dir: &Path) -> std::path::PathBuf {
    let model = fixture("tokenizer/tiny-spm.gguf");
    let merged = dir.join("merged");
    let args = ["merge", "--model", arg(&model), "--adapter", arg(out)];
    hone(&[&args[..], &["--out", arg(&merged)]].concat()).ok();
    merged
}

/// `hone generate` with `args`, answering the first training question (8 greedy tokens).
fn answer_first_row(args: &[&str]) -> common::Run {
    let prompt = [
        "--prompt",
        TRAIN_ROWS[0].0,
        "--chat",
        "--max-new-tokens",
        "8",
    ];
    hone(&[&["generate"][..], args, &prompt[..]].concat())
}

/// `use_dora: true`: the loss falls, the adapter carries PEFT's `lora_magnitude_vector` (moved by
/// training), and it generates unmerged and merged alike (`hone merge` rescales the rows); with
/// LoRA+ (`loraplus_lr_ratio`) too.
#[test]
fn dora_trains_and_its_adapter_generates_unmerged_and_merged_alike() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let lora_out = format!("output_dir={}", dir.path().join("lora").display());
    let lora = hone(&["train", arg(&config), "max_steps=1", &lora_out]);
    let run = hone(&[
        "train",
        arg(&config),
        "use_dora=true",
        "max_steps=30",
        "learning_rate=3e-2",
    ]);
    run.ok();
    let trainable = |stderr: &str| -> usize {
        let line = stderr
            .lines()
            .find(|l| l.contains("trainable params: "))
            .unwrap();
        let count = line.split("trainable params: ").nth(1).unwrap();
        count
            .split(' ')
            .next()
            .unwrap()
            .replace(',', "")
            .parse()
            .unwrap()
    };
    // One magnitude per output feature of the 7 linear layers of tiny-spm's one block (hidden 16,
    // 2 heads of 8 with 1 key/value head, MLP 32): q 16, k 8, v 8, o 16, gate 32, up 32, down 16.
    assert_eq!(trainable(&run.stderr), trainable(&lora.stderr) + 128);
    let out = dir.path().join("out");
    let losses = losses(&out);
    assert!(
        losses[29] < losses[0] - 0.1,
        "the loss did not fall: {losses:?}"
    );
    let adapter: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(adapter["use_dora"], true);
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let m = st
        .tensor("base_model.model.model.layers.0.mlp.gate_proj.lora_magnitude_vector")
        .unwrap();
    assert_eq!(m.shape(), [32]);

    let model_path = fixture("tokenizer/tiny-spm.gguf");
    let model = arg(&model_path);
    let generate = answer_first_row;
    let tuned = generate(&["--model", model, "--adapter", arg(&out)]);
    let exact = generate(&["--model", model, "--adapter", arg(&out), "--exact"]);
    let base = generate(&["--model", model]);
    assert_ne!(tuned.ok(), base.ok(), "the adapter changed nothing");
    let merged = merge_into_tiny_model(&out, dir.path());
    let from_merged = generate(&["--model", arg(&merged)]);
    assert_eq!(
        from_merged.ok(),
        exact.ok(),
        "merged and unmerged DoRA differ"
    );

    let loraplus_out = format!("output_dir={}", dir.path().join("loraplus").display());
    let loraplus = [
        "use_dora=true",
        "loraplus_lr_ratio=4",
        "max_steps=2",
        &loraplus_out,
    ];
    let run = hone(&[&["train", arg(&config)][..], &loraplus[..]].concat());
    run.ok();
    assert!(
        run.stderr
            .contains("LoRA+: lora_B matrices and 1-D tensors learn at 4 × learning_rate"),
        "{}",
        run.stderr
    );
}

/// `finetuning_type: ia3` with PEFT's defaults for Llama (k and v outputs, down's input): the
/// vectors train (the tiny random model's nearly uniform outputs barely move under scaling alone,
/// so the loss is not the test here; the gradient tests are), the adapter is PEFT's IA3
/// directory, and it generates unmerged and merged alike.
#[test]
fn ia3_trains_and_its_adapter_generates_unmerged_and_merged_alike() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let args = ["finetuning_type=ia3", "max_steps=30", "learning_rate=1e-1"];
    let run = hone(&[&["train", arg(&config)][..], &args[..]].concat());
    run.ok();
    // tiny-spm's one block: k and v outputs (8 each), down's input (the MLP's 32).
    assert!(
        run.stderr.contains("trainable params: 48 ||"),
        "{}",
        run.stderr
    );
    let out = dir.path().join("out");
    let adapter: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(adapter["peft_type"], "IA3");
    assert_eq!(
        adapter["feedforward_modules"],
        serde_json::json!(["down_proj"])
    );
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let shape = |m: &str| {
        let key = format!("base_model.model.model.layers.0.{m}.ia3_l");
        st.tensor(&key).unwrap().shape().to_vec()
    };
    assert_eq!(shape("self_attn.k_proj"), [8, 1]);
    assert_eq!(shape("mlp.down_proj"), [1, 32]);
    let v = st
        .tensor("base_model.model.model.layers.0.self_attn.v_proj.ia3_l")
        .unwrap();
    let moved = v.data().chunks_exact(4).any(|b| {
        let x = f32::from_le_bytes(b.try_into().unwrap());
        (x - 1.0).abs() > 0.5
    });
    assert!(moved, "the vectors did not train");

    let exact = adapter_answer(&out, "IA3");
    let merged = merge_into_tiny_model(&out, dir.path());
    assert_eq!(answer_first_row(&["--model", arg(&merged)]).ok(), exact);
}

/// The first training question answered on tiny-spm with the adapter in `out`, checked to differ
/// from the base model's answer and to equal the `--exact` path's (`what` names the case); the
/// answer.
fn adapter_answer(out: &Path, what: &str) -> String {
    let model_path = fixture("tokenizer/tiny-spm.gguf");
    let model = arg(&model_path);
    let tuned = answer_first_row(&["--model", model, "--adapter", arg(out)]);
    let exact = answer_first_row(&["--model", model, "--adapter", arg(out), "--exact"]);
    let base = answer_first_row(&["--model", model]);
    assert_ne!(tuned.ok(), base.ok(), "{what}: the adapter changed nothing");
    assert_eq!(tuned.ok(), exact.ok(), "{what}: stored and exact differ");
    exact.ok().to_string()
}

/// `finetuning_type: vera`, `loha`, `lokr` and `oft`: only the adapter's own tensors train (the
/// trainable-parameter line counts them, as PEFT), the adapter is PEFT's (VeRA's shared
/// `base_model.vera_A` / `vera_B` once and each module's `vera_lambda_d` / `vera_lambda_b`;
/// LoHa's `hada_w1_a` … `hada_w2_b`; LoKr's `lokr_w1` … `lokr_w2_b`; OFT's `oft_R.weight`), it
/// changes what the model answers, unmerged on both paths and merged alike, and a checkpoint
/// resumes.
#[test]
fn factored_adapters_train_and_generate_unmerged_and_merged_alike() {
    let rank = ["lora_rank=4", "target_modules=q_proj,v_proj"];
    let methods = [
        ("vera", "VERA", "vera_lambda", &rank[..], ("r", 4)),
        ("loha", "LOHA", "hada_w", &rank[..], ("r", 4)),
        ("lokr", "LOKR", "lokr_w", &rank[..], ("r", 4)),
        (
            "oft",
            "OFT",
            "oft_R",
            &["oft_block_size=4", "lora_target=q_proj,v_proj,down_proj"][..],
            ("oft_block_size", 4),
        ),
    ];
    for (method, peft_type, trained, keys, shape) in methods {
        factored_adapter_trains(method, peft_type, trained, keys, shape);
    }
}

fn factored_adapter_trains(
    method: &str,
    peft_type: &str,
    trained: &str,
    keys: &[&str],
    (shape_key, shape): (&str, u64),
) {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let finetuning = format!("finetuning_type={method}");
    let common = ["max_steps=12", "save_steps=6", "learning_rate=1e-1"];
    let args = [&[finetuning.as_str()][..], keys, &common[..]].concat();
    let run = hone(&[&["train", arg(&config)][..], &args[..]].concat());
    run.ok();
    let out = dir.path().join("out");
    let adapter: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(adapter["peft_type"], peft_type);
    assert_eq!(adapter[shape_key], shape);
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let count: usize = st
        .tensors()
        .iter()
        .filter(|(name, _)| name.contains(trained))
        .map(|(_, t)| t.shape().iter().product::<usize>())
        .sum();
    let line = format!("trainable params: {count} ||");
    assert!(
        run.stderr.contains(&line),
        "{method}: {line}: {}",
        run.stderr
    );

    answers_alike_merged_and_resumes(&out, dir.path(), method, &config, &args);
}

/// `finetuning_type: adalora`: the triplets train with PEFT's orthogonality penalty and the
/// allocator shrinks the ranks to `target_r` on average: the saved adapter is PEFT's (the kept rows
/// of `lora_A`, `lora_E`, `lora_B`, the config's `rank_pattern` and `total_step`), the
/// trainable-parameter line counts every triplet at `init_r` (as PEFT's), it changes what the
/// model answers, unmerged on both paths and merged alike, and a checkpoint resumes with the
/// allocator's state.
#[test]
fn adalora_trains_a_peft_adapter_whose_ranks_are_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let args = [
        "finetuning_type=adalora",
        "init_r=4",
        "target_r=2",
        "target_modules=q_proj,v_proj",
        "max_steps=12",
        "save_steps=6",
        "learning_rate=1e-1",
    ];
    let run = hone(&[&["train", arg(&config)][..], &args[..]].concat());
    run.ok();
    let out = dir.path().join("out");
    let adapter: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(adapter["peft_type"], "ADALORA");
    assert_eq!(adapter["total_step"], 12);
    let pattern = adapter["rank_pattern"].as_object().expect("a rank_pattern");
    let kept = |key: &str| -> usize {
        let rows = pattern[&format!("{key}.lora_E")].as_array().unwrap();
        assert_eq!(rows.len(), 4, "{key}: init_r entries");
        rows.iter().filter(|b| b.as_bool().unwrap()).count()
    };
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (mut total_kept, mut full) = (0, 0);
    for (name, t) in st.tensors() {
        let Some(module) = name.strip_suffix(".lora_A") else {
            continue;
        };
        let module = module.strip_prefix("base_model.model.").unwrap();
        let b = st
            .tensor(&format!("base_model.model.{module}.lora_B"))
            .unwrap();
        let (rows, inp, out) = (t.shape()[0], t.shape()[1], b.shape()[0]);
        assert_eq!(rows, kept(module), "{module}: the kept rows only");
        total_kept += rows;
        full += 4 * (inp + out + 1);
    }
    assert_eq!(
        total_kept,
        2 * pattern.len(),
        "the budget ends at target_r per layer"
    );
    let line = format!("trainable params: {full} ||");
    assert!(run.stderr.contains(&line), "{line}: {}", run.stderr);

    answers_alike_merged_and_resumes(&out, dir.path(), "adalora", &config, &args);
}

/// A trained adapter in `out` changes the answer alike unmerged on both paths and merged into the
/// tiny model, and its run (`hone train`, `config` with `args`) resumes from a checkpoint.
fn answers_alike_merged_and_resumes(
    out: &Path,
    dir: &Path,
    what: &str,
    config: &Path,
    args: &[&str],
) {
    let unmerged = adapter_answer(out, what);
    let merged = merge_into_tiny_model(out, dir);
    assert_eq!(answer_first_row(&["--model", arg(&merged)]).ok(), unmerged);

    let resumed = hone(
        &[
            &["train", arg(config)][..],
            args,
            &["resume_from_checkpoint=true", "max_steps=14"][..],
        ]
        .concat(),
    );
    resumed.ok();
    assert!(resumed.stderr.contains("resum"), "{}", resumed.stderr);
}

/// `finetuning_type: prompt_tuning`, `p_tuning`, `prefix` (with and without its projection) and
/// `adaption_prompt` (LLaMA-Adapter):
/// only the virtual tokens (and any encoder) train, the trainable-parameter line counts them as
/// PEFT does, the adapter is PEFT's (`prompt_embeddings` `[num_virtual_tokens, token_dim]`, for
/// prefix tuning `[num_virtual_tokens, num_layers · 2 · token_dim]`), it changes what the model
/// answers, unmerged on both paths alike, a checkpoint resumes, and merging it is refused.
#[test]
fn prompt_learning_trains_a_peft_adapter_that_generates_and_is_not_merged() {
    let methods = [
        ("prompt_tuning", "PROMPT_TUNING", "prefix_projection=false"),
        ("p_tuning", "P_TUNING", "prefix_projection=false"),
        ("prefix", "PREFIX_TUNING", "prefix_projection=false"),
        ("prefix", "PREFIX_TUNING", "prefix_projection=true"),
        ("adaption_prompt", "ADAPTION_PROMPT", "adapter_len=5"),
    ];
    for (method, peft_type, projection) in methods {
        let dir = tempfile::tempdir().unwrap();
        let config = setup(dir.path());
        let finetuning = format!("finetuning_type={method}");
        let args = [
            finetuning.as_str(),
            projection,
            "num_virtual_tokens=5",
            "max_steps=12",
            "save_steps=6",
            "learning_rate=1e-1",
        ];
        let run = hone(&[&["train", arg(&config)][..], &args[..]].concat());
        run.ok();
        let out = dir.path().join("out");
        let adapter: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(adapter["peft_type"], peft_type);
        if method == "adaption_prompt" {
            check_llama_adapter(&adapter, &run.stderr, &out);
        } else {
            check_virtual_tokens(&adapter, (method, projection), &run.stderr, &out);
        }

        adapter_answer(&out, method);

        let resumed = hone(
            &[
                &["train", arg(&config)][..],
                &args[..],
                &["resume_from_checkpoint=true", "max_steps=14"][..],
            ]
            .concat(),
        );
        resumed.ok();
        assert!(resumed.stderr.contains("resum"), "{}", resumed.stderr);

        let merged = dir.path().join("merged");
        let model = fixture("tokenizer/tiny-spm.gguf");
        let refused = hone(&[
            "merge",
            "--model",
            arg(&model),
            "--adapter",
            arg(&out),
            "--out",
            arg(&merged),
        ]);
        assert!(
            refused.error().contains("cannot be merged"),
            "{}",
            refused.stderr
        );
        assert!(
            !merged.exists(),
            "a refused merge left {}",
            merged.display()
        );
    }
}

/// A prompt-learning run's trainable-parameter line (5 virtual tokens) and PEFT's one tensor.
fn check_virtual_tokens(
    adapter: &Value,
    (method, projection): (&str, &str),
    log: &str,
    out: &Path,
) {
    assert_eq!(adapter["num_virtual_tokens"], 5);
    let d = adapter["token_dim"].as_u64().unwrap() as usize;
    let table = 2 * d * adapter["num_layers"].as_u64().unwrap() as usize;
    let (width, trained) = match (method, projection) {
        // Linear(d, d), Linear(d, d), Linear(d, d), each with a bias.
        ("p_tuning", _) => (d, 5 * d + 3 * (d * d + d)),
        // Linear(d, d), Tanh, Linear(d, layers · 2 · d), each with a bias.
        ("prefix", "prefix_projection=true") => (table, 5 * d + d * d + d + d * table + table),
        ("prefix", _) => (table, 5 * table),
        _ => (d, 5 * d),
    };
    let line = format!("trainable params: {trained} ||");
    assert!(log.contains(&line), "{line}: {log}");
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.names(), ["prompt_embeddings"]);
    assert_eq!(st.tensor("prompt_embeddings").unwrap().shape(), [5, width]);
}

/// A LLaMA-Adapter run (`adapter_len` 5, every layer): its trainable-parameter line and PEFT's
/// tensors, a prompt and a gate per layer.
fn check_llama_adapter(adapter: &Value, log: &str, out: &Path) {
    assert_eq!(adapter["adapter_len"], 5);
    let layers = adapter["adapter_layers"].as_u64().unwrap() as usize;
    let bytes = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let prompt = st
        .tensor("base_model.model.model.layers.0.self_attn.adaption_prompt")
        .unwrap();
    let hidden = prompt.shape()[2];
    assert_eq!(prompt.shape(), [1, 5, hidden]);
    assert_eq!(st.names().len(), 2 * layers);
    let line = format!("trainable params: {} ||", layers * (5 * hidden + 1));
    assert!(log.contains(&line), "{line}: {log}");
}

/// PiSSA (`pissa_init`, LLaMA-Factory's keys) and OLoRA (`init_lora_weights: olora`): the adapter
/// starts from the weight and is saved converted to plain LoRA on the original base (rank and
/// alpha doubled), which generates as the run's own model did: unmerged and merged alike.
#[test]
fn pissa_and_olora_runs_save_converted_adapters() {
    for start in ["pissa_init=true", "init_lora_weights=olora"] {
        let dir = tempfile::tempdir().unwrap();
        let config = setup(dir.path());
        let args = [start, "lora_rank=4", "lora_alpha=8", "max_steps=10"];
        let run = hone(&[&["train", arg(&config)][..], &args[..]].concat());
        run.ok();
        let out = dir.path().join("out");
        let adapter: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (adapter["r"].as_u64(), adapter["lora_alpha"].as_u64()),
            (Some(8), Some(16)),
            "{start}"
        );
        assert_eq!(adapter["init_lora_weights"], true, "{start}");
        let model_path = fixture("tokenizer/tiny-spm.gguf");
        let model = arg(&model_path);
        let tuned = answer_first_row(&["--model", model, "--adapter", arg(&out)]);
        let base = answer_first_row(&["--model", model]);
        assert_ne!(
            tuned.ok(),
            base.ok(),
            "{start}: the adapter changed nothing"
        );
        let merged = merge_into_tiny_model(&out, dir.path());
        assert_eq!(
            answer_first_row(&["--model", arg(&merged)]).ok(),
            tuned.ok(),
            "{start}"
        );
    }
}

/// A run resumed from a checkpoint continues with the uninterrupted run's losses, for each kind of
/// adapter (LoRA with dropout; DoRA; IA3; PiSSA, whose start is drawn again from the base).
#[test]
fn resuming_from_a_checkpoint_continues_bit_identically() {
    let methods: [&[&str]; 4] = [
        &[],
        &["use_dora=true"],
        &["finetuning_type=ia3"],
        &["pissa_init=true", "lora_rank=4"],
    ];
    for method in methods {
        resumes_bit_identically(&[&["lora_dropout=0.1"][..], method].concat());
    }
}

fn resumes_bit_identically(overrides: &[&str]) {
    let whole = tempfile::tempdir().unwrap();
    let whole_config = setup(whole.path());
    hone(&[&["train", arg(&whole_config)][..], overrides].concat()).ok();
    let expected = losses(&whole.path().join("out"));

    let split = tempfile::tempdir().unwrap();
    let config = setup(split.path());
    let with_saves = [overrides, &["save_steps=5"]].concat();
    hone(&[&["train", arg(&config)][..], &with_saves].concat()).ok();
    let out = split.path().join("out");
    let checkpoint = out.join("checkpoint-5");
    for file in [
        "trainable.safetensors",
        "optimizer.safetensors",
        "progress.json",
        "trainer_state.json",
        "adapter_model.safetensors",
    ] {
        assert!(
            checkpoint.join(file).is_file(),
            "{overrides:?}: checkpoint-5/{file} is missing"
        );
    }
    let resume = format!("resume_from_checkpoint={}", checkpoint.display());
    let run = hone(
        &[
            &["train", arg(&config)][..],
            &with_saves,
            &[resume.as_str()],
        ]
        .concat(),
    );
    assert!(
        run.ok().is_empty() && run.stderr.contains("resumed from"),
        "{overrides:?}: {}",
        run.stderr
    );
    let all = losses(&out);
    assert_eq!(all.len(), 12 + 7, "one full run plus steps 6..=12 again");
    assert_eq!(
        &all[12..],
        &expected[5..],
        "{overrides:?}: resumed losses differ from the uninterrupted run"
    );
}

#[test]
fn full_and_freeze_runs_write_hf_checkpoints_that_load() {
    let full = ["finetuning_type=full", "learning_rate=1e-2", "max_steps=30"];
    let freeze = [
        "finetuning_type=freeze",
        "freeze_trainable_layers=1",
        "freeze_trainable_modules=mlp",
        "max_steps=3",
    ];
    for (method, overrides) in [("full", &full[..]), ("freeze", &freeze[..])] {
        let dir = tempfile::tempdir().unwrap();
        let config = setup(dir.path());
        let run = hone(&[&["train", arg(&config)][..], overrides].concat());
        run.ok();
        let out = dir.path().join("out");
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "generation_config.json",
        ] {
            assert!(out.join(file).is_file(), "{method}: {file} is missing");
        }
        let info = hone(&[
            "generate",
            "--model",
            arg(&out),
            "--prompt",
            "Hi",
            "--max-new-tokens",
            "2",
        ]);
        info.ok();
    }
}

/// Every example config resolves (the keys they set, as `hone train` reads them).
#[test]
fn the_example_configs_resolve() {
    let examples = fixture("../examples/identity");
    for (file, expected) in [
        ("train_lora.yaml", "use_dora: false"),
        ("train_dora.yaml", "use_dora: true"),
        ("train_ia3.yaml", "finetuning_type: ia3"),
        ("train_prompt_tuning.yaml", "finetuning_type: prompt_tuning"),
        ("train_prefix.yaml", "finetuning_type: prefix"),
        (
            "train_llama_adapter.yaml",
            "finetuning_type: adaption_prompt",
        ),
        ("train_vera.yaml", "finetuning_type: vera"),
        ("train_loha.yaml", "finetuning_type: loha"),
        ("train_lokr.yaml", "finetuning_type: lokr"),
        ("train_oft.yaml", "finetuning_type: oft"),
        ("train_adalora.yaml", "finetuning_type: adalora"),
    ] {
        let config = examples.join(file);
        let text = hone(&["train", "--print-config", arg(&config)])
            .ok()
            .to_string();
        assert!(
            text.contains(expected),
            "{file}: {expected} missing from:\n{text}"
        );
    }
}

#[test]
fn print_config_shows_every_resolved_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let text = hone(&["train", "--print-config", arg(&config), "lora_rank=4"])
        .ok()
        .to_string();
    for key in [
        "lora_rank: 4",
        "lora_alpha: 16",
        "gradient_accumulation_steps: 2",
        "warmup_ratio:",
    ] {
        assert!(text.contains(key), "{key} missing from:\n{text}");
    }
}

#[test]
fn a_misspelled_key_names_the_nearest_valid_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("lerning_rate: 1.0e-4\n");
    std::fs::write(&config, text).unwrap();
    let err = hone(&["train", arg(&config)]).error().to_string();
    assert!(
        err.contains("lerning_rate") && err.contains("learning_rate"),
        "{err}"
    );
}

#[test]
fn a_malformed_row_stops_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let data = dir.path().join("data.jsonl");
    let mut text = std::fs::read_to_string(&data).unwrap();
    text.push_str("{\"instruction\": \"no answer\", \"input\": \"\"}\n");
    std::fs::write(&data, text).unwrap();
    let err = hone(&["train", arg(&config)]).error().to_string();
    assert!(err.contains("data.jsonl:7: output"), "{err}");
    let skipped = hone(&["train", arg(&config), "skip_invalid_rows=true"]);
    skipped.ok();
    assert!(
        skipped.stderr.contains("skipped rows"),
        "{}",
        skipped.stderr
    );
}

#[test]
fn a_non_finite_loss_stops_training_with_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let run = hone(&[
        "train",
        arg(&config),
        "learning_rate=1e30",
        "max_grad_norm=0",
    ]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let err = run.stderr.lines().last().unwrap();
    assert!(
        err.starts_with("error: step 2: the loss is NaN: training stopped"),
        "{err}"
    );
    assert!(!dir.path().join("out/adapter_model.safetensors").exists());
    let status = run_status(&dir.path().join("out"));
    assert_eq!(status["status"], "failed");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .starts_with("step 2: the loss is NaN"),
        "{status}"
    );
}

/// The run's `run_status.json`.
fn run_status(out: &Path) -> Value {
    let text = std::fs::read_to_string(out.join("run_status.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_the_run_resumes_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let child = common::hone_command(&[
        "train",
        arg(&config),
        "max_steps=100000",
        "logging_steps=1000",
        "save_steps=1000000",
    ])
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let out = dir.path().join("out");
    // Interrupt once training is under way (the log file appears at the first logging step).
    let started = std::time::Instant::now();
    while !out.join("trainer_log.jsonl").exists() {
        assert!(started.elapsed().as_secs() < 120, "training never started");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("interrupted; resume with"), "{stderr}");
    assert_eq!(run_status(&out)["status"], "interrupted");
    let checkpoints: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    let step: u64 = checkpoints[0]["checkpoint-".len()..].parse().unwrap();
    assert!(step >= 1000, "interrupted at step {step}");
    let run = hone(&[
        "train",
        arg(&config),
        &format!("max_steps={}", step + 3),
        "logging_steps=1000",
        "resume_from_checkpoint=true",
    ]);
    run.ok();
    assert!(
        run.stderr.contains(&format!("at step {step}")),
        "{}",
        run.stderr
    );
    assert!(out.join("adapter_model.safetensors").is_file());
}

/// Trains `setup`'s config for 3 steps of LoRA q,v on `model` once per `(name, override)`, each
/// into its own output directory; returns each run's log and per-step losses.
fn train_variants(
    dir: &Path,
    model: &Path,
    variants: &[(&str, &[&str])],
) -> Vec<(String, Vec<f64>)> {
    let config = setup(dir);
    let model = format!("model_name_or_path={}", model.display());
    let common = [model.as_str(), "max_steps=3", "lora_target=q_proj,v_proj"];
    let mut runs = Vec::new();
    for (name, extra) in variants {
        let out_dir = dir.join(name);
        let out = format!("output_dir={}", out_dir.display());
        let mut args = vec!["train", arg(&config), out.as_str()];
        args.extend(common);
        args.extend(extra.iter());
        let run = hone(&args);
        assert_eq!(run.code, Some(0), "{name}: {}", run.stderr);
        assert!(out_dir.join("adapter_model.safetensors").exists());
        let losses = losses(&out_dir);
        assert!(losses.len() == 3 && losses.iter().all(|l| l.is_finite()));
        runs.push((run.stderr, losses));
    }
    runs
}

/// QLoRA on the default model's Q4_1 GGUF: the base stays as stored (the run says so), and the
/// losses equal those of the same run on the base expanded to f32, up to summation order. bf16
/// mixed precision (the run says so), on the converted base or on the base as stored (whose
/// products round it to bf16 one matrix at a time), stays within bf16's rounding of them.
#[test]
fn quantization_bit_and_bf16_train_with_the_f32_runs_losses() {
    let Some(model) = common::real_model() else {
        return;
    };
    let variants: [(&str, &[&str]); 4] = [
        ("f32", &[]),
        ("qlora", &["quantization_bit=4"]),
        ("bf16", &["bf16=true"]),
        ("qlora-bf16", &["quantization_bit=4", "bf16=true"]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let runs = train_variants(dir.path(), &model, &variants);
    for ((name, _), (log, _)) in variants.iter().zip(&runs) {
        let stored_note = log.contains("trained on as stored");
        assert_eq!(stored_note, name.starts_with("qlora"), "{name}: {log}");
        let bf16_note = log.contains("precision: bf16 mixed");
        assert_eq!(bf16_note, name.ends_with("bf16"), "{name}: {log}");
    }
    let f32 = &runs[0].1;
    for ((_, run), tolerance) in runs[1..].iter().zip([1e-4, 1e-2, 1e-2]) {
        for (f, other) in f32.iter().zip(run) {
            assert!(
                (f - other).abs() <= tolerance * f.abs(),
                "{f32:?} vs {run:?}"
            );
        }
    }
}

/// QLoRA on a 16-bit base: the default model exported as BF16 is quantized at load, to NF4 with
/// double quantization (4 bits, the run says so) or Q8_0 (8 bits). The first step's loss (the
/// untrained adapter's, so the base model's own) stays near the BF16 base's: within 3% for 8
/// bits, 5% for 4 bits (measured 1.2% and 1.7% on these few rows; a wrong code or scale gives a
/// loss several times larger). Later steps drift apart at this test's high learning rate.
#[test]
fn quantization_bit_quantizes_a_16_bit_base_at_load() {
    let Some(model) = common::real_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bf16 = dir.path().join("base-bf16.gguf");
    let export = hone(&[
        "export",
        "--model",
        arg(&model),
        "--quant",
        "bf16",
        "--out",
        arg(&bf16),
    ]);
    assert_eq!(export.code, Some(0), "{}", export.stderr);
    let variants: [(&str, &[&str]); 3] = [
        ("bf16", &[]),
        ("nf4", &["quantization_bit=4"]),
        ("q8_0", &["quantization_bit=8"]),
    ];
    let runs = train_variants(dir.path(), &bf16, &variants);
    let notes = [
        "quantized to NF4 (double quantization)",
        "quantized to Q8_0",
    ];
    let base = runs[0].1[0];
    for (((log, losses), note), tolerance) in runs[1..].iter().zip(notes).zip([0.05, 0.03]) {
        assert!(log.contains(note), "{log}");
        assert!(
            (base - losses[0]).abs() <= tolerance * base,
            "{base} vs {losses:?}"
        );
    }

    // Exported with its adapter, the model has the base quantized as in training: a matrix the
    // adapter (q, v) leaves alone is bitsandbytes' NF4 round trip of the BF16 base's.
    let merged = dir.path().join("merged.gguf");
    let nf4_run = dir.path().join("nf4");
    let args = ["export", "--model", arg(&bf16), "--adapter", arg(&nf4_run)];
    let export = hone(&[&args[..], &["--out", arg(&merged), "--quant", "f32"]].concat());
    assert_eq!(export.code, Some(0), "{}", export.stderr);
    assert!(
        export.stderr.contains("quantized to NF4"),
        "{}",
        export.stderr
    );
    let name = "blk.3.attn_output.weight";
    let base = gguf_tensor_f32(&bf16, name);
    let want = bnb::quantize(&base, FourBit::Nf4, true).dequantize(FourBit::Nf4);
    let got = gguf_tensor_f32(&merged, name);
    assert!(got
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

/// A GGUF tensor's values as f32, in the file's order.
fn gguf_tensor_f32(path: &Path, name: &str) -> Vec<f32> {
    let file = GgufFile::open(path).unwrap();
    let info = file.tensors.iter().find(|t| t.name == name).unwrap();
    let bytes = std::fs::read(path).unwrap();
    let data = &bytes[info.offset as usize..][..info.n_bytes as usize];
    let n = info.dims.iter().product::<u64>() as usize;
    hone::quant::dequantize(info.ggml_type, data, n).unwrap()
}

#[test]
fn bad_quantization_settings_stop_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let cases = [
        (
            vec!["quantization_bit=3"],
            "quantization_bit: must be 4 or 8",
        ),
        (
            vec!["quantization_bit=4", "finetuning_type=full"],
            "only valid with finetuning_type: lora",
        ),
        (
            vec!["quantization_bit=4"],
            "tiny-spm.gguf: quantization_bit: 4: model.layers.0.mlp.down_proj.weight: rows of 32 \
             values are not whole NF4 blocks of 64",
        ),
        (
            vec!["quantization_bit=4", "quantization_method=gptq"],
            "quantization_method: unknown variant `gptq`, expected `bnb`",
        ),
        (
            vec!["quantization_bit=4", "quantization_type=int4"],
            "quantization_type: unknown variant `int4`",
        ),
        (
            vec![
                "gradient_checkpointing=true",
                "disable_gradient_checkpointing=true",
            ],
            "conflicts with gradient_checkpointing",
        ),
    ];
    for (overrides, want) in cases {
        let mut args = vec!["train", arg(&config)];
        args.extend(overrides.iter().copied());
        let run = hone(&args);
        assert_eq!(run.code, Some(1), "{overrides:?}: {}", run.stderr);
        let err = run.stderr.lines().last().unwrap();
        assert!(err.contains(want), "{overrides:?}: {err}");
        assert!(!dir.path().join("out/adapter_model.safetensors").exists());
    }
}

/// `hone plan` prints the parts of the peak as a table, and as JSON with the keys the issue
/// names (the parts add up to the peak); `hone train` prints the same plan before loading.
#[test]
fn plan_predicts_the_peak_as_a_table_and_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let run = hone(&["plan", arg(&config), "--json"]);
    let plan: Value = serde_json::from_str(run.ok()).unwrap();
    let parts = plan["parts"].as_object().unwrap();
    for part in [
        "weights",
        "adapters",
        "gradients",
        "optimizer",
        "activations",
        "dataset",
        "runtime",
    ] {
        assert!(parts[part].as_u64().unwrap() > 0, "{part}: {plan}");
    }
    let sum: u64 = parts.values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(plan["peak_memory_bytes"].as_u64(), Some(sum));
    assert_eq!(plan["fits"], true);
    assert!(plan["available_bytes"].as_u64().unwrap() > sum);

    let table = hone(&["plan", arg(&config), "gradient_checkpointing=true"]);
    let table = table.ok();
    assert!(
        table.contains("activations") && table.contains("one block recomputed"),
        "{table}"
    );
    let train = hone(&["train", arg(&config), "max_steps=1"]);
    assert!(
        train.stderr.contains("memory plan:\n  weights"),
        "{}",
        train.stderr
    );
}

/// A run whose plan exceeds the memory available (here an address-space limit) stops before
/// loading the model, naming the changes that would make it fit, and writes nothing.
#[test]
fn a_run_that_cannot_fit_stops_before_loading_with_what_would_fit() {
    let Some(model) = common::real_model() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let out = dir.path().join("refused");
    let command = format!(
        "ulimit -v 1500000 && exec {} train {} model_name_or_path={} output_dir={} \
         cutoff_len=1024 per_device_train_batch_size=8",
        env!("CARGO_BIN_EXE_hone"),
        config.display(),
        model.display(),
        out.display()
    );
    let run = std::process::Command::new("sh")
        .args(["-c", &command])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    let err = stderr.lines().last().unwrap();
    assert!(
        err.starts_with("error: memory plan: the run needs") && err.contains("it would"),
        "{err}"
    );
    assert!(!out.exists());
}

/// `do_predict` with `predict_with_generate` answers the held-out rows with the trained adapter
/// and writes LLaMA-Factory's `generated_predictions.jsonl` and `predict_results.json`; greedy
/// answers are those `hone eval generate --adapter` gives.
#[test]
fn do_predict_writes_llamafactorys_prediction_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let run = hone(&[
        "train",
        arg(&config),
        "max_steps=2",
        "val_size=2",
        "do_predict=true",
        "predict_with_generate=true",
        "max_new_tokens=6",
        "do_sample=false",
    ]);
    run.ok();
    assert!(
        run.stderr.contains("predicting 2 evaluation rows"),
        "{}",
        run.stderr
    );
    let out = dir.path().join("out");
    let text = std::fs::read_to_string(out.join("generated_predictions.jsonl")).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let label = row["label"].as_str().unwrap();
        assert!(TRAIN_ROWS.iter().any(|(_, a)| *a == label), "{row}");
        assert!(row["prompt"]
            .as_str()
            .unwrap()
            .contains("<|im_start|>assistant"));
        assert!(row["predict"].is_string());
    }
    let results = common::read_json(&out.join("predict_results.json"));
    for key in [
        "predict_bleu-4",
        "predict_rouge-1",
        "predict_rouge-2",
        "predict_rouge-l",
        "predict_runtime",
        "predict_samples_per_second",
        "predict_steps_per_second",
    ] {
        assert!(results[key].is_number(), "{key}: {results}");
    }

    // The same rows through `hone eval generate`, greedy, with the run's adapter.
    let held_out: String = rows
        .iter()
        .map(|r| {
            let label = r["label"].as_str().unwrap();
            let (q, a) = TRAIN_ROWS.iter().find(|(_, a)| *a == label).unwrap();
            serde_json::json!({"instruction": q, "input": "", "output": a}).to_string() + "\n"
        })
        .collect();
    let data = common::write(dir.path(), "held_out.jsonl", &held_out);
    let eval_out = dir.path().join("eval.jsonl");
    hone(&[
        "eval",
        "generate",
        "--model",
        arg(&fixture("tokenizer/tiny-spm.gguf")),
        "--adapter",
        arg(&out),
        "--data",
        arg(&data),
        "--max-new-tokens",
        "6",
        "--out",
        arg(&eval_out),
    ])
    .ok();
    let eval_text = std::fs::read_to_string(eval_out).unwrap();
    let eval_rows: Vec<Value> = eval_text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (ours, theirs) in rows.iter().zip(&eval_rows) {
        assert_eq!(ours["predict"], theirs["predict"]);
    }
}

/// Puts `files` (name in the repository, fixture) into `cache` as the Hugging Face client lays a
/// dataset repository out: `datasets--ORG--NAME/refs/main` naming a snapshot that holds them.
fn cache_dataset(cache: &Path, id: &str, files: &[(&str, &str)]) {
    let repo = cache.join(format!("datasets--{}", id.replace('/', "--")));
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    for (name, source) in files {
        let path = snapshot.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::copy(fixture(source), path).unwrap();
    }
}

#[test]
fn hub_datasets_come_from_the_cache_and_folders_give_all_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let cache = dir.path().join("hf-cache");
    cache_dataset(
        &cache,
        "org/mini",
        &[
            ("README.md", "data/parquet/alpaca.jsonl"),
            (
                "data/train-00000-of-00001.parquet",
                "data/parquet/alpaca.parquet",
            ),
            (
                "data/test-00000-of-00001.arrow",
                "data/parquet/alpaca.arrow",
            ),
        ],
    );
    let folder = dir.path().join("shards");
    std::fs::create_dir_all(&folder).unwrap();
    for name in ["a.csv", "b.csv"] {
        std::fs::copy(fixture("data/parquet/alpaca.csv"), folder.join(name)).unwrap();
    }
    let info = serde_json::json!({
        "mini": {"hf_hub_url": "org/mini"},
        "mini_test": {"hf_hub_url": "org/mini", "split": "test"},
        "absent": {"hf_hub_url": "org/absent"},
        "shards": {"file_name": "shards"},
    });
    std::fs::write(dir.path().join("dataset_info.json"), info.to_string()).unwrap();
    let dataset_dir = format!("dataset_dir={}", dir.path().display());
    let data = |dataset: &str| {
        let mut command = common::hone_command(&[
            "data",
            arg(&config),
            &format!("dataset={dataset}"),
            &dataset_dir,
            "skip_invalid_rows=true",
            "--rows",
            "0",
        ]);
        command.env("HF_HUB_CACHE", &cache);
        common::Run::from(command.output().unwrap())
    };
    // The fixture's fourth row has no output: the skip names the file it came from.
    let snapshot = cache.join("datasets--org--mini/snapshots/0123abcd/data");
    let hub = data("mini");
    let out = hub.ok();
    let train = snapshot.join("train-00000-of-00001.parquet");
    assert!(
        out.starts_with("mini (dataset):\n  rows          4 read, 1 row skipped"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}:4: output", train.display())),
        "{out}"
    );
    let test = data("mini_test");
    let arrow = snapshot.join("test-00000-of-00001.arrow");
    assert!(
        test.ok()
            .contains(&format!("{}:4: output", arrow.display())),
        "{}",
        test.stdout
    );
    let absent = data("absent");
    let err = absent.error();
    assert!(
        err.contains(
            "hf_hub_url: org/absent: org/absent: dataset not in the Hugging Face cache at"
        ) && err.contains(&cache.display().to_string()),
        "{err}"
    );
    let shards = data("shards");
    let out = shards.ok();
    assert!(
        out.starts_with("shards (dataset):\n  rows          8 read, 2 rows skipped"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{}:5: output", folder.join("a.csv").display())),
        "{out}"
    );
}
