//! LoRA and DoRA adapters written by PEFT (fixtures from scripts/golden/peft_adapters.py), read by
//! Hone and merged into their base models (or applied unmerged), give the logits of PEFT's adapted
//! models.

mod common;

use candle_core::{DType, Device};
use common::{fixture, load_tensors, max_abs_diff};
use hone::adapters::{self, read_adapter, Bias};
use hone::io::source::ModelSource;
use hone::model::{weights, Llama};

fn adapted_model(adapter: &str, base: &str) -> Llama {
    let (cfg, mut w) = weights::load(
        &ModelSource::HfDir(fixture(&format!("models/{base}"))),
        &Device::Cpu,
    )
    .unwrap();
    let adapter = read_adapter(&fixture(&format!("adapters/{adapter}"))).unwrap();
    adapters::merge(&mut w, &cfg, &adapter).unwrap();
    Llama::from_weights(cfg, w, &Device::Cpu).unwrap()
}

#[test]
fn merged_adapters_give_peft_logits() {
    for (name, base) in common::PEFT_ADAPTERS {
        let golden = load_tensors(&fixture(&format!("adapters/{name}.golden.safetensors")));
        let ids = golden["input_ids"].to_dtype(DType::U32).unwrap();
        let logits = adapted_model(name, base).forward(&ids, None).unwrap();
        let diff = max_abs_diff(&logits, &golden["logits"]);
        assert!(diff < 1e-4, "{name}: max abs logit difference {diff}");
    }
}

/// On the stored-type path adapters stay unmerged (`W·x + s·B(A·x)`): the same logits.
#[test]
fn unmerged_adapters_give_peft_logits() {
    for (name, base) in common::PEFT_ADAPTERS {
        let golden = load_tensors(&fixture(&format!("adapters/{name}.golden.safetensors")));
        let ids = golden["input_ids"].to_dtype(DType::U32).unwrap();
        let source = ModelSource::HfDir(fixture(&format!("models/{base}")));
        let (cfg, w) = weights::load_stored(&source, &Device::Cpu).unwrap();
        let adapter = read_adapter(&fixture(&format!("adapters/{name}"))).unwrap();
        adapters::merge::check_fits(&cfg, &adapter, |n| w.get(n).map(|w| w.dims())).unwrap();
        let model = Llama::from_stored(cfg, w, Some(&adapter), &Device::Cpu).unwrap();
        let logits = model.forward(&ids, None).unwrap();
        let diff = max_abs_diff(&logits, &golden["logits"]);
        assert!(diff < 1e-4, "{name}: max abs logit difference {diff}");
    }
}

#[test]
fn list_targets_with_default_scaling() {
    let adapter = read_adapter(&fixture("adapters/llama-tied-qv")).unwrap();
    let modules: Vec<&str> = adapter.modules.keys().map(String::as_str).collect();
    assert_eq!(
        modules,
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.v_proj",
        ]
    );
    let q = &adapter.modules["model.layers.0.self_attn.q_proj"];
    assert_eq!((q.r, q.in_features, q.out_features), (4, 32, 32));
    assert_eq!(q.scale, 8.0 / 4.0);
    assert!(
        q.b.iter().any(|&x| x != 0.0),
        "lora_B is zero: the fixture is vacuous"
    );
    assert!(adapter.biases.is_empty());
}

#[test]
fn all_linear_rslora_with_rank_and_alpha_patterns_and_biases() {
    let adapter = read_adapter(&fixture("adapters/qwen2-all-linear")).unwrap();
    assert_eq!(adapter.modules.len(), 14, "7 linear layers x 2 blocks");
    let config = adapter.config.lora().unwrap();
    assert!(config.use_rslora);
    assert_eq!(config.bias, Bias::All);
    let down = &adapter.modules["model.layers.0.mlp.down_proj"];
    assert_eq!(down.r, 2, "rank_pattern down_proj: 2");
    assert_eq!(down.scale, 16.0 / 2f64.sqrt());
    let o1 = &adapter.modules["model.layers.1.self_attn.o_proj"];
    assert_eq!(
        o1.scale,
        4.0 / 8f64.sqrt(),
        "alpha_pattern layers.1.self_attn.o_proj: 4"
    );
    let o0 = &adapter.modules["model.layers.0.self_attn.o_proj"];
    assert_eq!(o0.scale, 16.0 / 8f64.sqrt());
    // Qwen2's q/k/v biases, trained with bias="all", saved under PEFT's base_layer names.
    let biases: Vec<&str> = adapter.biases.keys().map(String::as_str).collect();
    assert_eq!(biases.len(), 6);
    assert!(biases.contains(&"model.layers.1.self_attn.k_proj.bias"));
}

#[test]
fn regex_targets_select_one_layer() {
    let adapter = read_adapter(&fixture("adapters/llama-gqa-regex")).unwrap();
    let modules: Vec<&str> = adapter.modules.keys().map(String::as_str).collect();
    assert_eq!(
        modules,
        [
            "model.layers.1.mlp.up_proj",
            "model.layers.1.self_attn.k_proj",
            "model.layers.1.self_attn.o_proj",
        ]
    );
    // GQA: k_proj is [kv_heads * head_dim, hidden] = [32, 32]; o_proj [hidden, heads * head_dim] = [32, 64].
    let o = &adapter.modules["model.layers.1.self_attn.o_proj"];
    assert_eq!((o.in_features, o.out_features), (64, 32));
    assert_eq!(
        adapter.modules["model.layers.1.mlp.up_proj"].scale,
        2.0 / 4.0
    );
}
