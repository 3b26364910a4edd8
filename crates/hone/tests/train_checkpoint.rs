//! Checkpoint directories: saves are all-or-nothing, rotation keeps the newest (and the best),
//! resuming finds the newest complete checkpoint, `output_dir` is never silently mixed or
//! wrongly wiped, and trainer_state.json / trainer_log.jsonl match transformers / LLaMA-Factory.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::fixture;
use hone::train::checkpoint::{
    append_trainer_log, find_checkpoint, hms, list_checkpoints, prepare_output_dir,
    save_checkpoint, Retention, TrainerLogRecord, TrainerState, TRAINER_LOG_NAME,
};
use hone::train::config::{ResumeFrom, SftConfig};

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A checkpoint writer that writes a weights file and the trainer state of `step`.
fn writer(step: u64) -> impl FnOnce(&Path) -> anyhow::Result<()> {
    move |dir: &Path| {
        fs::write(dir.join("adapter_model.safetensors"), b"weights")?;
        TrainerState {
            global_step: step,
            ..Default::default()
        }
        .save(dir)
    }
}

fn save(dir: &Path, step: u64, retention: Retention) -> PathBuf {
    save_checkpoint(dir, step, retention, writer(step)).unwrap()
}

#[test]
fn a_save_is_renamed_into_place_complete() {
    let out = tempfile::tempdir().unwrap();
    let path = save(out.path(), 7, Retention::default());
    assert_eq!(path, out.path().join("checkpoint-7"));
    assert_eq!(names(out.path()), ["checkpoint-7"]);
    assert_eq!(
        names(&path),
        ["adapter_model.safetensors", "trainer_state.json"]
    );
    assert_eq!(TrainerState::load(&path).unwrap().global_step, 7);
}

#[test]
fn a_failed_save_leaves_no_checkpoint_and_no_temporary() {
    let out = tempfile::tempdir().unwrap();
    let err = save_checkpoint(out.path(), 3, Retention::default(), |dir| {
        fs::write(dir.join("adapter_model.safetensors"), b"half")?;
        anyhow::bail!("killed mid-write")
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("killed mid-write"), "{err:#}");
    assert!(names(out.path()).is_empty(), "{:?}", names(out.path()));

    let err = save_checkpoint(out.path(), 3, Retention::default(), |dir| {
        Ok(fs::write(
            dir.join("adapter_model.safetensors"),
            b"weights",
        )?)
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("trainer_state.json"), "{err:#}");
    assert!(names(out.path()).is_empty(), "{:?}", names(out.path()));
}

#[test]
fn saving_a_step_again_replaces_its_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    save(out.path(), 4, Retention::default());
    save_checkpoint(out.path(), 4, Retention::default(), |dir| {
        fs::write(dir.join("adapter_model.safetensors"), b"newer")?;
        TrainerState::default().save(dir)
    })
    .unwrap();
    assert_eq!(names(out.path()), ["checkpoint-4"]);
    let weights = fs::read(out.path().join("checkpoint-4/adapter_model.safetensors")).unwrap();
    assert_eq!(weights, b"newer");
}

#[test]
fn rotation_keeps_the_newest_and_the_best() {
    let out = tempfile::tempdir().unwrap();
    let keep_two = Retention {
        save_total_limit: Some(2),
        best_checkpoint: None,
    };
    for step in [5, 10, 15, 20] {
        save(out.path(), step, keep_two);
    }
    assert_eq!(names(out.path()), ["checkpoint-15", "checkpoint-20"]);

    let out = tempfile::tempdir().unwrap();
    let best = out.path().join("checkpoint-10");
    for step in [5, 10, 15, 20] {
        let retention = Retention {
            save_total_limit: Some(1),
            best_checkpoint: (step >= 10).then_some(best.as_path()),
        };
        save(out.path(), step, retention);
    }
    assert_eq!(names(out.path()), ["checkpoint-10", "checkpoint-20"]);

    let out = tempfile::tempdir().unwrap();
    for step in 1..=4 {
        save(out.path(), step, Retention::default());
    }
    assert_eq!(names(out.path()).len(), 4, "no limit keeps all");
}

#[test]
fn resume_finds_the_newest_complete_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    for step in [2, 9, 10] {
        save(out.path(), step, Retention::default());
    }
    // An interrupted save and an incomplete directory are not checkpoints.
    fs::create_dir(out.path().join(".checkpoint-11.123.0.tmp")).unwrap();
    fs::create_dir(out.path().join("checkpoint-12")).unwrap();
    fs::create_dir(out.path().join("checkpoint-x")).unwrap();
    let steps: Vec<u64> = list_checkpoints(out.path())
        .unwrap()
        .iter()
        .map(|c| c.step)
        .collect();
    assert_eq!(steps, [2, 9, 10], "numeric order, complete ones only");

    let latest = find_checkpoint(out.path(), &ResumeFrom::Latest).unwrap();
    assert_eq!(latest, Some(out.path().join("checkpoint-10")));
    assert_eq!(find_checkpoint(out.path(), &ResumeFrom::No).unwrap(), None);
    let named = out.path().join("checkpoint-9");
    assert_eq!(
        find_checkpoint(out.path(), &ResumeFrom::Path(named.clone())).unwrap(),
        Some(named)
    );

    let incomplete = out.path().join("checkpoint-12");
    let err = find_checkpoint(out.path(), &ResumeFrom::Path(incomplete)).unwrap_err();
    assert!(err.to_string().contains("incomplete checkpoint"), "{err}");
    let missing = out.path().join("checkpoint-99");
    let err = find_checkpoint(out.path(), &ResumeFrom::Path(missing)).unwrap_err();
    assert!(err.to_string().contains("checkpoint-99"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err = find_checkpoint(empty.path(), &ResumeFrom::Latest).unwrap_err();
    assert!(
        err.to_string().contains("resume_from_checkpoint: true"),
        "{err}"
    );
}

fn config_for(output_dir: &Path, over: &[&str]) -> SftConfig {
    let path = output_dir.with_extension("yaml");
    fs::write(
        &path,
        format!(
            "model_name_or_path: models/tiny\ndataset: alpaca\noutput_dir: {}\n",
            output_dir.display()
        ),
    )
    .unwrap();
    let over: Vec<String> = over.iter().map(|s| s.to_string()).collect();
    SftConfig::load(&path, &over).unwrap()
}

#[test]
fn a_non_empty_output_dir_is_refused_unless_overwriting_or_resuming() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("run");
    assert_eq!(prepare_output_dir(&config_for(&out, &[])).unwrap().dir, out);
    assert!(out.is_dir(), "a missing output_dir is created");

    save(&out, 1, Retention::default());
    let err = prepare_output_dir(&config_for(&out, &[]))
        .unwrap_err()
        .to_string();
    for part in [
        out.to_str().unwrap(),
        "overwrite_output_dir",
        "resume_from_checkpoint",
    ] {
        assert!(err.contains(part), "{err:?} lacks {part:?}");
    }

    prepare_output_dir(&config_for(&out, &["resume_from_checkpoint=true"])).unwrap();
    assert_eq!(names(&out), ["checkpoint-1"], "resuming keeps the run");

    fs::create_dir(out.join(".checkpoint-2.77.0.tmp")).unwrap();
    prepare_output_dir(&config_for(&out, &["overwrite_output_dir=true"])).unwrap();
    assert!(
        names(&out).is_empty(),
        "overwriting clears: {:?}",
        names(&out)
    );
}

#[test]
fn overwrite_never_clears_a_directory_holding_the_inputs() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("project");
    let data = out.join("data");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("dataset_info.json"), b"{}").unwrap();
    let config = config_for(
        &out,
        &[
            "overwrite_output_dir=true",
            &format!("dataset_dir={}", data.display()),
        ],
    );
    let err = prepare_output_dir(&config).unwrap_err().to_string();
    assert!(err.contains("refusing to clear"), "{err}");
    assert!(
        data.join("dataset_info.json").is_file(),
        "the dataset survived"
    );
}

#[test]
fn trainer_state_reads_and_writes_transformers_files() {
    let hf_text = fs::read_to_string(fixture("config/trainer_state.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("trainer_state.json"), &hf_text).unwrap();
    let state = TrainerState::load(dir.path()).unwrap();
    assert_eq!((state.global_step, state.max_steps), (6, 8));
    assert_eq!(
        state.best_model_checkpoint.as_deref(),
        Some("out/checkpoint-4")
    );
    assert_eq!(state.log_history.len(), 3);
    assert_eq!(state.log_history[0].loss, Some(2.5));
    assert_eq!(state.log_history[1].eval_loss, Some(1.75));
    assert_eq!(state.log_history[2].train_loss, Some(2.125));

    state.save(dir.path()).unwrap();
    let hone_text = fs::read_to_string(dir.path().join("trainer_state.json")).unwrap();
    let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
    assert_eq!(
        parse(&hone_text),
        parse(&hf_text),
        "same content as transformers wrote"
    );
    assert_eq!(
        key_lines(&hone_text),
        key_lines(&hf_text),
        "same key order and nesting"
    );
    assert!(hone_text.ends_with("}\n"));
}

/// Each line's indentation and key, the layout that `sort_keys=True, indent=2` gives.
fn key_lines(json: &str) -> Vec<String> {
    json.lines()
        .filter_map(|l| l.split_once("\":").map(|(k, _)| k.to_string()))
        .collect()
}

#[test]
fn trainer_log_records_follow_llama_factory() {
    let pairs: Vec<(f64, String)> =
        serde_json::from_str(&fs::read_to_string(fixture("config/timedelta.json")).unwrap())
            .unwrap();
    for (seconds, python) in pairs {
        assert_eq!(
            hms(seconds),
            python,
            "str(timedelta(seconds=int({seconds})))"
        );
    }

    let out = tempfile::tempdir().unwrap();
    let mut first = TrainerLogRecord::progress(10, 375, 20.0, 4000);
    first.loss = Some(1.5);
    first.grad_norm = Some(0.75);
    first.lr = Some(1e-4);
    first.epoch = Some(0.08);
    append_trainer_log(out.path(), &first).unwrap();
    let second = TrainerLogRecord::progress(375, 375, 7300.0, 0);
    append_trainer_log(out.path(), &second).unwrap();

    let text = fs::read_to_string(out.path().join(TRAINER_LOG_NAME)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        lines[0],
        r#"{"current_steps":10,"total_steps":375,"loss":1.5,"grad_norm":0.75,"lr":0.0001,"epoch":0.08,"percentage":2.67,"elapsed_time":"0:00:20","remaining_time":"0:12:10","throughput":200.0,"total_tokens":4000}"#
    );
    assert_eq!(
        lines[1],
        r#"{"current_steps":375,"total_steps":375,"percentage":100.0,"elapsed_time":"2:01:40","remaining_time":"0:00:00"}"#
    );
}
