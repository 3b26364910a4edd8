//! Bad adapters give one-line errors naming the file (or module) and the problem, never a panic:
//! missing files, pickles, configs Hone cannot honour, tensors it does not know, and adapters made
//! for another base model.

mod common;

use std::path::{Path, PathBuf};

use candle_core::Device;
use common::fixture;
use hone::adapters::{merge, read_adapter, write_adapter};
use hone::io::source::ModelSource;
use hone::model::weights;

/// A copy of a fixture adapter in a fresh temp dir, to be damaged by the test.
fn scratch_copy(tmp: &Path, name: &str) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture(&format!("adapters/{name}"));
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir
}

fn read_error(dir: &Path) -> String {
    let err = format!("{:#}", read_adapter(dir).unwrap_err());
    assert!(!err.contains('\n'), "error is not one line: {err}");
    err
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error {err:?} does not mention {p:?}");
    }
}

/// The error of merging `adapter_dir` into the fixture model `base`.
fn merge_error(adapter_dir: &Path, base: &str) -> String {
    let source = ModelSource::HfDir(fixture(&format!("models/{base}")));
    let (cfg, mut w) = weights::load(&source, &Device::Cpu).unwrap();
    let adapter = read_adapter(adapter_dir).unwrap();
    format!("{:#}", merge(&mut w, &cfg, &adapter).unwrap_err())
}

#[test]
fn missing_directory_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let err = read_error(&tmp.path().join("nope"));
    assert_mentions(&err, &["nope", "no such adapter directory"]);

    let dir = scratch_copy(tmp.path(), "llama-tied-qv");
    std::fs::remove_file(dir.join("adapter_config.json")).unwrap();
    assert_mentions(
        &read_error(&dir),
        &[dir.to_str().unwrap(), "no adapter_config.json"],
    );

    let dir = scratch_copy(tmp.path(), "llama-gqa-regex");
    std::fs::remove_file(dir.join("adapter_model.safetensors")).unwrap();
    assert_mentions(
        &read_error(&dir),
        &[dir.to_str().unwrap(), "no adapter_model.safetensors"],
    );
}

#[test]
fn pickled_weights_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scratch_copy(tmp.path(), "llama-tied-qv");
    std::fs::remove_file(dir.join("adapter_model.safetensors")).unwrap();
    std::fs::write(dir.join("adapter_model.bin"), b"\x80\x02}q\x00.").unwrap();
    assert_mentions(
        &read_error(&dir),
        &["adapter_model.bin", "refused", "safe_serialization=True"],
    );
}

/// Rewrite one field of the copy's adapter_config.json.
fn set_config_field(dir: &Path, field: &str, value: serde_json::Value) {
    let path = dir.join("adapter_config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json[field] = value;
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
}

#[test]
fn unsupported_configs_name_file_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scratch_copy(tmp.path(), "llama-tied-qv");
    set_config_field(&dir, "lora_bias", serde_json::json!(true));
    let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.contains("\"lora_bias\""))
        .unwrap();
    let expected = format!("adapter_config.json:{line}: lora_bias: true is not supported");
    assert_mentions(&read_error(&dir), &[&expected, "lora_B"]);

    set_config_field(&dir, "lora_bias", serde_json::json!(false));
    set_config_field(&dir, "use_dora", serde_json::json!(true));
    assert_mentions(
        &read_error(&dir),
        &[
            "adapter_model.safetensors:",
            "use_dora is set but the module has no lora_magnitude_vector",
        ],
    );

    set_config_field(&dir, "use_dora", serde_json::json!(false));
    set_config_field(&dir, "peft_type", serde_json::json!("BOFT"));
    assert_mentions(
        &read_error(&dir),
        &[
            "adapter_config.json:",
            "peft_type: \"BOFT\" is not supported",
        ],
    );
    // An IA3 config (PEFT always writes its module lists) over LoRA tensors.
    set_config_field(&dir, "peft_type", serde_json::json!("IA3"));
    set_config_field(&dir, "feedforward_modules", serde_json::json!([]));
    assert_mentions(
        &read_error(&dir),
        &[
            "adapter_model.safetensors:",
            "LoRA weights but the config's peft_type is \"IA3\"",
        ],
    );
    set_config_field(&dir, "feedforward_modules", serde_json::Value::Null);

    set_config_field(&dir, "peft_type", serde_json::json!("LORA"));
    set_config_field(&dir, "r", serde_json::json!("four"));
    assert_mentions(
        &read_error(&dir),
        &["adapter_config.json:", ": r: invalid type"],
    );
}

#[test]
fn unknown_tensors_and_unpaired_matrices() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = scratch_copy(tmp.path(), "llama-tied-qv");
    let path = dir.join("adapter_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let magnitude = [0u8; 32 * 4];
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector";
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![32], &magnitude);
    views.push((key.to_string(), view.unwrap()));
    let dora = tmp.path().join("dora");
    std::fs::create_dir(&dora).unwrap();
    std::fs::copy(
        dir.join("adapter_config.json"),
        dora.join("adapter_config.json"),
    )
    .unwrap();
    let write = |views: &[(String, safetensors::tensor::TensorView)], to: &Path| {
        let owned: Vec<_> = views.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        safetensors::serialize_to_file(owned, None, &to.join("adapter_model.safetensors")).unwrap();
    };
    write(&views, &dora);
    assert_mentions(
        &read_error(&dora),
        &[
            "adapter_model.safetensors",
            "model.layers.0.self_attn.q_proj: has a lora_magnitude_vector (DoRA) but use_dora is not set",
        ],
    );
    let loha = "base_model.model.model.layers.0.self_attn.q_proj.boft_R";
    views.push((loha.to_string(), views.last().unwrap().1.clone()));
    views.retain(|(k, _)| k != key);
    write(&views, &dora);
    assert_mentions(
        &read_error(&dora),
        &["adapter_model.safetensors", loha, "not supported"],
    );

    views.retain(|(k, _)| !k.ends_with("layers.1.self_attn.v_proj.lora_A.weight") && k != loha);
    write(&views, &dir);
    assert_mentions(
        &read_error(&dir),
        &[
            "adapter_model.safetensors",
            "model.layers.1.self_attn.v_proj: lora_B without lora_A",
        ],
    );
}

#[test]
fn an_adapter_for_another_base_model_does_not_merge() {
    // qwen2 has 2 key/value heads of 8: its v_proj is [16, 32], llama-tied's [32, 32].
    let err = merge_error(&fixture("adapters/llama-tied-qv"), "qwen2");
    assert_mentions(
        &err,
        &[
            "model.layers.0.self_attn.v_proj",
            "[32, 32]",
            "[16, 32]",
            "different base model (fixtures/models/llama-tied)",
        ],
    );

    let tmp = tempfile::tempdir().unwrap();
    let mut adapter = read_adapter(&fixture("adapters/llama-tied-qv")).unwrap();
    let w = adapter.modules.pop_last().unwrap().1;
    adapter
        .modules
        .insert("model.layers.7.self_attn.v_proj".into(), w);
    let dir = tmp.path().join("deeper");
    write_adapter(&dir, &adapter, None).unwrap();
    assert_mentions(
        &merge_error(&dir, "llama-tied"),
        &[
            "model.layers.7.self_attn.v_proj",
            "no such module",
            "different base model",
        ],
    );
}

#[test]
fn a_non_finite_merge_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut adapter = read_adapter(&fixture("adapters/llama-tied-qv")).unwrap();
    adapter.modules.values_mut().next().unwrap().b[0] = f32::INFINITY;
    let dir = tmp.path().join("inf");
    write_adapter(&dir, &adapter, None).unwrap();
    assert_mentions(
        &merge_error(&dir, "llama-tied"),
        &["model.layers.0.self_attn.q_proj", "non-finite"],
    );
}
