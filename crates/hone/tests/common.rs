//! Helpers shared by the fixture-driven integration tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

/// The tiny random model of each family and its switches (fixtures/models/, from
/// scripts/golden/models.py), f32 and in one file.
pub const FAMILY_MODELS: [&str; 15] = [
    "llama-tied",
    "llama-gqa",
    "mistral",
    "qwen2",
    "qwen3",
    "smollm3",
    "granite",
    "olmo2",
    "gemma2",
    "gemma3",
    "phi3",
    "phi3-long",
    "glm",
    "glm4",
    "starcoder2",
];

/// The tiny random models of the remote-code families (fixtures/models/, from
/// scripts/golden/remote_models.py, run by each family's published modeling file): ChatGLM3,
/// Baichuan 2 7B (rotary) and 13B (ALiBi), Qwen v1.
pub const REMOTE_MODELS: [&str; 4] = ["chatglm3", "baichuan2", "baichuan2-alibi", "qwen"];

/// The adapters PEFT wrote (fixtures/adapters/, from scripts/golden/peft_adapters.py and, for
/// VeRA, LoHa and LoKr, factored.py; for OFT, oft.py; for AdaLoRA, adalora.py) and their base models under
/// fixtures/models.
pub const PEFT_ADAPTERS: [(&str, &str); 13] = [
    ("llama-tied-qv", "llama-tied"),
    ("qwen2-all-linear", "qwen2"),
    ("llama-gqa-regex", "llama-gqa"),
    ("qwen3-all-linear", "qwen3"),
    ("qwen2-dora", "qwen2"),
    ("qwen2-ia3", "qwen2"),
    ("llama-gqa-olora", "llama-gqa"),
    ("llama-gqa-vera", "llama-gqa"),
    ("llama-gqa-loha", "llama-gqa"),
    ("llama-gqa-lokr", "llama-gqa"),
    ("llama-gqa-oft", "llama-gqa"),
    ("llama-gqa-oft-coft", "llama-gqa"),
    ("llama-gqa-adalora", "llama-gqa"),
];

/// `<repo>/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

/// `<repo>/models/<name>` when present. Absent: None with a notice, or a failure under CI, where
/// `.ci/run` fetches the default model first.
pub fn real_model(name: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name);
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} is missing under CI",
        p.display()
    );
    eprintln!(
        "skipping: {} is absent (run scripts/fetch-model.sh)",
        p.display()
    );
    None
}

/// The names in a directory, sorted.
pub fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub fn load_tensors(path: &std::path::Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

/// Largest |a - b| over two tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}
