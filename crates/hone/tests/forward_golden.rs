//! Forward-pass parity with transformers on tiny random models of every supported architecture
//! (fixtures from scripts/golden/models.py): full logits, KV-cache logits, and greedy ids.

mod common;

use candle_core::{Device, Tensor};
use common::{fixture, load_tensors, max_abs_diff};
use hone::io::source::ModelSource;
use hone::model::{weights, Llama};

const MODELS: [&str; 7] = [
    "llama-tied",
    "llama-gqa",
    "mistral",
    "qwen2",
    "llama-sharded",
    "llama-f16",
    "llama-bf16",
];

fn load(name: &str) -> Llama {
    let dir = fixture(&format!("models/{name}"));
    let (cfg, w) = weights::load(&ModelSource::HfDir(dir), &Device::Cpu).unwrap();
    Llama::from_weights(cfg, w, &Device::Cpu).unwrap()
}

#[test]
fn logits_match_transformers() {
    for name in MODELS {
        let model = load(name);
        let golden = load_tensors(&fixture(&format!("models/{name}/golden.safetensors")));
        let ids = golden["input_ids"]
            .to_dtype(candle_core::DType::U32)
            .unwrap();
        let logits = model.forward(&ids, None).unwrap();
        let diff = max_abs_diff(&logits, &golden["logits"]);
        assert!(diff < 1e-4, "{name}: max abs logit difference {diff}");
    }
}

#[test]
fn kv_cache_steps_match_transformers() {
    for name in MODELS {
        let model = load(name);
        let golden = load_tensors(&fixture(&format!("models/{name}/golden.safetensors")));
        let ids = golden["input_ids"]
            .to_dtype(candle_core::DType::U32)
            .unwrap();
        let t = ids.dim(1).unwrap();
        let mut cache = model.new_cache();
        let mut parts = vec![model
            .forward(&ids.narrow(1, 0, 6).unwrap(), Some(&mut cache))
            .unwrap()];
        for p in 6..t {
            parts.push(
                model
                    .forward(&ids.narrow(1, p, 1).unwrap(), Some(&mut cache))
                    .unwrap(),
            );
        }
        let stepped = Tensor::cat(&parts, 1).unwrap();
        let diff = max_abs_diff(&stepped, &golden["logits_step"]);
        assert!(
            diff < 1e-4,
            "{name}: max abs difference with the cache {diff}"
        );
    }
}
