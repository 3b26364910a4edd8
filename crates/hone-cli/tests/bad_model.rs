//! Bad model input through the CLI: every subcommand fails with one `error: ...` line naming the path.

mod common;

use std::path::{Path, PathBuf};

use common::{arg, hone, hone_in, tiny_gguf, tiny_hf_dir, write};

/// Runs `info`, `generate` and `eval perplexity` on `model` (as typed, from `cwd`); each must fail
/// with one line that contains every one of `parts`.
fn assert_refused(cwd: &Path, model: &str, parts: &[&str]) {
    let data = write(cwd, "data.txt", "some text to score\n");
    for args in [
        vec!["info", model],
        vec!["generate", "--model", model, "--prompt", "Hi"],
        vec!["eval", "perplexity", "--model", model, "--data", arg(&data)],
    ] {
        let run = hone_in(Some(cwd), &args, "");
        let err = run.error();
        for part in parts {
            assert!(
                err.contains(part),
                "`hone {}`: {err:?} does not mention {part:?}",
                args[0]
            );
        }
    }
}

/// `dir/pytorch_model.bin` holding a tiny pickle (protocol 2, an empty dict): never to be unpickled.
fn pickle(dir: &Path) -> PathBuf {
    let path = dir.join("pytorch_model.bin");
    std::fs::write(&path, b"\x80\x02}q\x00.").unwrap();
    path
}

#[test]
fn missing_path() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("absent.gguf");
    assert_refused(
        tmp.path(),
        arg(&missing),
        &[arg(&missing), "no such file or directory"],
    );
    // Two components look like a Hub id `org/name`, but a model file name is a path.
    assert_refused(
        tmp.path(),
        "models/absent.gguf",
        &["models/absent.gguf", "no such file or directory"],
    );
}

#[test]
fn pickled_weights_file() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = pickle(tmp.path());
    assert_refused(
        tmp.path(),
        arg(&bin),
        &[arg(&bin), "pickled PyTorch weights are refused"],
    );
}

#[test]
fn hf_dir_with_only_pickled_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_hf_dir(tmp.path());
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let bin = pickle(&dir);
    let data = write(tmp.path(), "data.txt", "abc\n");
    for args in [
        vec!["generate", "--model", arg(&dir), "--prompt", "Hi"],
        vec![
            "eval",
            "perplexity",
            "--model",
            arg(&dir),
            "--data",
            arg(&data),
        ],
    ] {
        let run = hone(&args);
        let err = run.error();
        assert!(
            err.contains(arg(&bin)) && err.contains("pickled PyTorch weights are refused"),
            "{err}"
        );
    }
}

#[test]
fn truncated_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(tiny_gguf()).unwrap();
    // Cut inside the tensor data, and inside the metadata.
    for (name, len) in [
        ("data-cut.gguf", bytes.len() / 2),
        ("header-cut.gguf", 2000),
    ] {
        let path = tmp.path().join(name);
        std::fs::write(&path, &bytes[..len]).unwrap();
        assert_refused(
            tmp.path(),
            arg(&path),
            &[arg(&path), "not a valid GGUF file", "truncated"],
        );
    }
}

#[test]
fn directory_without_a_model() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("empty");
    std::fs::create_dir(&dir).unwrap();
    assert_refused(
        tmp.path(),
        arg(&dir),
        &[arg(&dir), "no config.json (HF model) and no .gguf file"],
    );
}

/// A config.json value of the wrong type or out of range (here a negative rotary base, which
/// loaded and generated nonsense before) stops every command with the file and the field.
#[test]
fn config_value_out_of_range() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_hf_dir(tmp.path());
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["rope_theta"] = serde_json::json!(-1);
    std::fs::write(&path, config.to_string()).unwrap();
    assert_refused(
        tmp.path(),
        arg(&dir),
        &[
            arg(&path),
            "field `rope_theta`: -1 is not a usable rotary base",
        ],
    );
}
