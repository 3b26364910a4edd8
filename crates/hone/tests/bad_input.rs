//! Bad model input gives a one-line error naming the file and the problem, never a panic.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::fixture;
use hone::io::source::{self, ModelSource};
use hone::model::{weights, Llama};

/// A fresh copy of a tiny fixture model in a temp dir, to be damaged by the test.
fn scratch_copy(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hone-bad-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture("models/llama-tied");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir
}

/// Load through the same path as the CLI (resolve, read, build) and return the error text.
fn load_error(spec: &Path) -> String {
    let result = source::resolve(spec.to_str().unwrap()).and_then(|src| {
        let (cfg, w) = weights::load(&src, &Device::Cpu)?;
        Llama::from_weights(cfg, w, &Device::Cpu)
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", src.path().display()))
    });
    match result {
        Ok(_) => panic!("{} loaded but should have failed", spec.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn assert_mentions(err: &str, parts: &[&str]) {
    assert!(!err.contains('\n'), "error is not one line: {err}");
    for p in parts {
        assert!(err.contains(p), "error {err:?} does not mention {p:?}");
    }
}

#[test]
fn missing_path() {
    let err = load_error(Path::new("/nonexistent/model-dir"));
    assert_mentions(
        &err,
        &["/nonexistent/model-dir", "no such file or directory"],
    );
}

#[test]
fn truncated_safetensors() {
    let dir = scratch_copy("truncated");
    let st = dir.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    assert_mentions(
        &load_error(&dir),
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn safetensors_header_that_lies_about_sizes() {
    let dir = scratch_copy("lying");
    let st = dir.join("model.safetensors");
    let mut bytes = std::fs::read(&st).unwrap();
    // The first 8 bytes give the JSON header's length; claim far more than the file holds.
    bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&st, &bytes).unwrap();
    assert_mentions(
        &load_error(&dir),
        &["model.safetensors", "not a valid safetensors file"],
    );
}

#[test]
fn unknown_architecture() {
    let dir = scratch_copy("arch");
    let cfg = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("LlamaForCausalLM", "GPTNeoXForCausalLM");
    std::fs::write(&cfg, text).unwrap();
    assert_mentions(
        &load_error(&dir),
        &["config.json", "GPTNeoXForCausalLM", "not supported"],
    );
}

#[test]
fn shape_mismatch_with_config() {
    let dir = scratch_copy("shape");
    let cfg = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    json["intermediate_size"] = serde_json::json!(json["intermediate_size"].as_u64().unwrap() + 8);
    std::fs::write(&cfg, json.to_string()).unwrap();
    assert_mentions(
        &load_error(&dir),
        &[dir.to_str().unwrap(), "mlp.gate_proj.weight", "shape"],
    );
}

#[test]
fn missing_tensor() {
    let dir = scratch_copy("missing-tensor");
    let cfg = dir.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    json["num_hidden_layers"] = serde_json::json!(json["num_hidden_layers"].as_u64().unwrap() + 1);
    std::fs::write(&cfg, json.to_string()).unwrap();
    assert_mentions(&load_error(&dir), &[dir.to_str().unwrap(), "is missing"]);
}

#[test]
fn unsupported_tensor_dtype() {
    let dir = scratch_copy("dtype");
    let data = [1i8, 2, 3, 4];
    let views = [(
        "extra",
        safetensors::tensor::TensorView::new(safetensors::Dtype::I8, vec![4], bytemuck_i8(&data))
            .unwrap(),
    )];
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    assert_mentions(&load_error(&dir), &["model.safetensors", "extra", "I8"]);
}

fn bytemuck_i8(d: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment.
    unsafe { std::slice::from_raw_parts(d.as_ptr() as *const u8, d.len()) }
}

#[test]
fn pickled_weights_are_refused() {
    let dir = std::env::temp_dir().join(format!("hone-bad-pickle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture("models/llama-tied/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), b"\x80\x02}q\x00.").unwrap();
    assert_mentions(
        &load_error(&dir),
        &["pytorch_model.bin", "refused", "safetensors"],
    );
    assert_mentions(
        &load_error(&dir.join("pytorch_model.bin")),
        &["pytorch_model.bin", "refused"],
    );
}

#[test]
fn a_directory_is_resolved_by_content() {
    let dir = fixture("models/llama-tied");
    assert_eq!(
        source::resolve(dir.to_str().unwrap()).unwrap(),
        ModelSource::HfDir(dir)
    );
}
