//! Crash consistency: `hone train` killed with SIGKILL at moments spread over a whole run (its
//! checkpoint writes and final output included), then resumed, ends with the uninterrupted run's
//! adapter byte for byte and its last loss; `hone merge` and `hone export` killed midway leave
//! either nothing or the complete output, and their next run no temporaries; a checkpoint past
//! the file-size limit is an error that keeps the previous checkpoint.
//!
//! The kill moments are fractions of a reference run's measured length, so every phase is hit
//! whatever the machine's speed; nothing here asserts a duration.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    arg, fixture, hone, hone_command, hone_with_file_size_limit, tiny_hf_dir, train_config,
};

/// Kills per command: 40, or `HONE_CRASH_TRIALS` for a longer search
/// (`HONE_CRASH_TRIALS=1000 cargo test -p hone-cli --test crash`).
fn trials() -> u32 {
    std::env::var("HONE_CRASH_TRIALS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40)
}

/// Starts `hone args` and SIGKILLs it after `delay`; true when it was still running then.
fn kill_after(args: &[&str], delay: Duration) -> bool {
    let mut child = hone_command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start hone");
    std::thread::sleep(delay);
    let running = child.try_wait().unwrap().is_none();
    // Child::kill sends SIGKILL on Unix.
    let _ = child.kill();
    child.wait().unwrap();
    running
}

/// The moment of trial `i`: spread over 1.3× the reference run's `length`, with a deterministic
/// jitter so that trials do not fall on the same phase twice.
fn moment(i: u32, length: Duration) -> Duration {
    let jitter = (i.wrapping_mul(2_654_435_761) >> 16) % 1000;
    length.mul_f64(1.3 * (i as f64 + jitter as f64 / 1000.0) / trials() as f64)
}

/// Runs `args` to the end, returning how long it took.
fn timed(args: &[&str]) -> Duration {
    let start = Instant::now();
    hone(args).ok();
    start.elapsed()
}

/// Hidden entries of `dir`: what a save in progress or a killed one leaves.
fn temporaries(dir: &Path) -> Vec<String> {
    common::dir_entries(dir)
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect()
}

fn last_loss(out: &Path) -> f64 {
    let log = std::fs::read_to_string(out.join("trainer_log.jsonl")).unwrap();
    log.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64())
        .unwrap()
}

#[test]
fn training_killed_at_any_moment_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let config = train_config(dir.path());
    // A checkpoint every step, so that many kills land in the middle of one.
    let reference = dir.path().join("reference");
    let length = timed(&[
        "train",
        arg(&config),
        "save_steps=1",
        &format!("output_dir={}", reference.display()),
    ]);
    let adapter = std::fs::read(reference.join("adapter_model.safetensors")).unwrap();
    let out = dir.path().join("out");
    let run_args = ["train", arg(&config), "save_steps=1"];
    let (mut fresh, mut resumed, mut finished) = (0, 0, 0);
    for i in 0..trials() {
        let _ = std::fs::remove_dir_all(&out);
        if !kill_after(&run_args, moment(i, length)) {
            finished += 1;
        }
        for (name, checkpoint) in checkpoints(&out) {
            assert!(
                checkpoint.join("trainer_state.json").is_file(),
                "trial {i}: {name} looks complete but has no trainer_state.json"
            );
        }
        let resume = hone(&[&run_args[..], &["resume_from_checkpoint=true"]].concat());
        if resume.code == Some(0) {
            resumed += 1;
        } else {
            // Killed before its first checkpoint: resuming refuses, and a fresh run is the way.
            let error = resume.stderr.lines().last().unwrap_or_default();
            assert!(
                resume.code == Some(1) && error.contains("holds no complete checkpoint"),
                "trial {i}: {}",
                resume.stderr
            );
            fresh += 1;
            hone(&[&run_args[..], &["overwrite_output_dir=true"]].concat()).ok();
        }
        let got = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
        assert!(
            got == adapter,
            "trial {i}: the adapter differs from the uninterrupted run's"
        );
        assert_eq!(last_loss(&out), last_loss(&reference), "trial {i}");
        assert_eq!(temporaries(&out), Vec::<String>::new(), "trial {i}");
    }
    let kills = trials();
    eprintln!("{kills} kills: {fresh} before any checkpoint, {resumed} resumed, {finished} ended");
    assert!(resumed > 0, "no kill landed after a checkpoint");
}

fn checkpoints(out: &Path) -> Vec<(String, std::path::PathBuf)> {
    if !out.is_dir() {
        return Vec::new();
    }
    common::dir_entries(out)
        .into_iter()
        .filter(|n| n.starts_with("checkpoint-"))
        .map(|n| (n.clone(), out.join(n)))
        .collect()
}

/// `hone merge` or `hone export` (`args` without `--out`) killed at moments over its length,
/// into an `out` that is sometimes absent and sometimes holds a previous complete result.
fn killed_writes_leave_nothing_half_done(
    args: &[&str],
    name: &str,
    same: impl Fn(&Path, &Path) -> bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join(format!("reference-{name}"));
    fn with_out<'a>(args: &[&'a str], out: &'a Path) -> Vec<&'a str> {
        [args, &["--out", arg(out), "--force"]].concat()
    }
    let length = timed(&with_out(args, &reference));
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let out = work.join(name);
    for i in 0..trials() {
        if i % 2 == 0 {
            let _ = std::fs::remove_dir_all(&out);
            let _ = std::fs::remove_file(&out);
        }
        kill_after(&with_out(args, &out), moment(i, length));
        assert!(
            !out.exists() || same(&out, &reference),
            "trial {i}: {} is there but not the complete output",
            out.display()
        );
    }
    hone(&with_out(args, &out)).ok();
    assert!(same(&out, &reference));
    assert_eq!(temporaries(&work), Vec::<String>::new());
}

/// Two files, or two directories of files, with the same bytes.
fn same_bytes(a: &Path, b: &Path) -> bool {
    if a.is_file() {
        return std::fs::read(a).unwrap() == std::fs::read(b).unwrap();
    }
    let names = common::dir_entries(a);
    names == common::dir_entries(b) && names.iter().all(|n| same_bytes(&a.join(n), &b.join(n)))
}

#[test]
fn merge_and_export_killed_midway_leave_nothing_half_done() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_hf_dir(dir.path());
    let adapter = fixture("adapters/llama-tied-qv");
    let (model, adapter) = (arg(&model), arg(&adapter));
    let merge = ["merge", "--model", model, "--adapter", adapter];
    killed_writes_leave_nothing_half_done(&merge, "merged", same_bytes);
    let gguf = common::tiny_gguf();
    let export = ["export", "--model", arg(&gguf)];
    killed_writes_leave_nothing_half_done(&export, "model.gguf", same_bytes);
}

#[test]
fn a_checkpoint_past_the_file_size_limit_is_an_error_and_the_previous_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let config = train_config(dir.path());
    let config = arg(&config);
    let out = dir.path().join("out");
    hone(&["train", config, "max_steps=5", "save_steps=5"]).ok();
    let before = std::fs::read(out.join("checkpoint-5/optimizer.safetensors")).unwrap();
    // The optimizer state (~19 KiB) no longer fits when checkpoint-10 is saved.
    let resume = [
        "train",
        config,
        "save_steps=5",
        "resume_from_checkpoint=true",
    ];
    let run = hone_with_file_size_limit(15, &resume);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let error = run.stderr.lines().last().unwrap();
    assert!(
        error.starts_with("error: ")
            && error.contains("checkpoint-10: cannot save checkpoint")
            && error.contains("File too large"),
        "{error}"
    );
    assert!(!out.join("checkpoint-10").exists());
    assert_eq!(temporaries(&out), Vec::<String>::new());
    let after = std::fs::read(out.join("checkpoint-5/optimizer.safetensors")).unwrap();
    assert!(before == after, "checkpoint-5 changed");
    // Room again: the run resumes from checkpoint-5 and finishes.
    let run = hone(&resume);
    run.ok();
    assert!(run.stderr.contains("at step 5"), "{}", run.stderr);
    assert!(out.join("checkpoint-10/trainer_state.json").is_file());
    assert!(out.join("train_results.json").is_file());
}
