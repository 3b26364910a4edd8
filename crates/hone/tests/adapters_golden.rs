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

/// Prompt tuning, P-tuning, prefix tuning and LLaMA-Adapter adapters written by PEFT
/// (scripts/golden/prompt_learning.py): their virtual tokens before the golden ids (or
/// LLaMA-Adapter's gated prompts in the top layers) give PEFT's logits at the real tokens, on the
/// stored and the exact path, over whole sequences and over a KV cache (the cache starts with the
/// virtual tokens — for prefix tuning, their keys and values — then the prompt, then one token at
/// a time). Written back by Hone, the directory holds PEFT's config and tensors; merging one is
/// refused.
#[test]
fn prompt_learning_adapters_give_peft_logits() {
    let cases = [
        ("llama-tied-prompt", "llama-tied"),
        ("llama-tied-p-tuning", "llama-tied"),
        ("llama-gqa-prefix", "llama-gqa"),
        ("llama-tied-adaption", "llama-tied"),
    ];
    for (name, base) in cases {
        let dir = fixture(&format!("adapters/{name}"));
        let golden = load_tensors(&fixture(&format!("adapters/{name}.golden.safetensors")));
        let ids = golden["input_ids"].to_dtype(DType::U32).unwrap();
        let adapter = read_adapter(&dir).unwrap();
        let prefix = adapter.prompt_method() == Some(adapters::PromptMethod::PrefixTuning);
        // LLaMA-Adapter puts nothing before the sequence.
        let virtual_tokens = if adapter.prompt.is_some() { 4 } else { 0 };
        let base = ModelSource::HfDir(fixture(&format!("models/{base}")));
        let (cfg, w) = weights::load_stored(&base, &Device::Cpu).unwrap();
        let stored = Llama::from_stored(cfg, w, Some(&adapter), &Device::Cpu).unwrap();
        let (cfg, w) = weights::load(&base, &Device::Cpu).unwrap();
        let exact = Llama::from_weights(cfg, w, &Device::Cpu).unwrap();
        let exact = exact.with_prompt(&adapter).unwrap();
        for (precision, model) in [("stored", stored), ("exact", exact)] {
            assert_eq!(model.virtual_tokens(), virtual_tokens, "{name}");
            // The last virtual token predicts each row's first token, as PEFT's loss counts it —
            // but a prefix, which holds only keys and values.
            let (_, predicted) = model.next_token_nll(&ids).unwrap();
            let rows = ids.dim(0).unwrap();
            let predicts_first = virtual_tokens > 0 && !prefix;
            let want = ids.elem_count() - if predicts_first { 0 } else { rows };
            assert_eq!(predicted, want, "{name}");
            let logits = model.forward(&ids, None).unwrap();
            let diff = max_abs_diff(&logits, &golden["logits"]);
            assert!(
                diff < 1e-4,
                "{name} {precision}: max abs logit difference {diff}"
            );

            let mut cache = model.new_cache();
            let prefill = model.forward(&ids.narrow(1, 0, 6).unwrap(), Some(&mut cache));
            let mut stepped = vec![prefill.unwrap()];
            for i in 6..ids.dim(1).unwrap() {
                let token = ids.narrow(1, i, 1).unwrap();
                stepped.push(model.forward(&token, Some(&mut cache)).unwrap());
            }
            assert_eq!(
                cache.len(),
                virtual_tokens + ids.dim(1).unwrap(),
                "the cache holds the virtual tokens"
            );
            let stepped = candle_core::Tensor::cat(&stepped, 1).unwrap();
            let diff = max_abs_diff(&stepped, &golden["logits"]);
            assert!(diff < 1e-4, "{name} {precision}: KV steps differ by {diff}");
        }

        // As a server holds it: one of several adapters over the plain base, per request.
        let (cfg, w) = weights::load_stored(&base, &Device::Cpu).unwrap();
        let plain = Llama::from_stored(cfg, w, None, &Device::Cpu).unwrap();
        let set = plain.lora_set(&adapter).unwrap();
        let (rows, seq) = ids.dims2().unwrap();
        for row in 0..rows {
            let row_ids: Vec<u32> = ids.get(row).unwrap().to_vec1().unwrap();
            let mut cache = plain.new_cache();
            let last = plain.prefill(&row_ids, &mut cache, Some(&set)).unwrap();
            let want: Vec<f32> = golden["logits"]
                .get(row)
                .unwrap()
                .get(seq - 1)
                .unwrap()
                .to_vec1()
                .unwrap();
            let diff = last
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "{name}: served prefill differs by {diff}");
        }

        let out = tempfile::tempdir().unwrap();
        adapters::write_adapter(out.path(), &adapter, None).unwrap();
        let keys = |dir: &std::path::Path| -> Vec<String> {
            let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            json.as_object().unwrap().keys().cloned().collect()
        };
        assert_eq!(
            keys(out.path()),
            keys(&dir),
            "{name}: adapter_config.json keys"
        );
        assert_eq!(
            read_adapter(out.path()).unwrap(),
            adapter,
            "{name}: round trip"
        );

        let (cfg, mut w) = weights::load(&base, &Device::Cpu).unwrap();
        let refused = adapters::merge(&mut w, &cfg, &adapter).unwrap_err();
        assert!(
            format!("{refused:#}").contains("cannot be merged"),
            "{refused:#}"
        );
    }
}

/// VeRA, LoHa, LoKr, OFT and AdaLoRA adapters PEFT wrote: Hone writes them back with PEFT's
/// config keys and tensor names (VeRA's shared projections once and each module's two vectors;
/// LoHa's four factors; LoKr's whole or product factors as PEFT laid them out; OFT's triangles,
/// per block or shared; AdaLoRA's kept rows with their rank_pattern) and reads the same adapters
/// again.
#[test]
fn factored_adapters_round_trip() {
    let cases = [
        ("llama-gqa-vera", "VeRA"),
        ("llama-gqa-loha", "LoHa"),
        ("llama-gqa-lokr", "LoKr"),
        ("llama-gqa-oft", "OFT"),
        ("llama-gqa-oft-coft", "OFT"),
        ("llama-gqa-adalora", "AdaLoRA"),
    ];
    for (name, method) in cases {
        factored_adapter_round_trips(name, method);
    }
}

fn factored_adapter_round_trips(name: &str, method: &str) {
    let dir = fixture(&format!("adapters/{name}"));
    let adapter = read_adapter(&dir).unwrap();
    assert_eq!(adapter.config.method(), method);
    let out = tempfile::tempdir().unwrap();
    adapters::write_adapter(out.path(), &adapter, None).unwrap();
    let keys = |dir: &std::path::Path| -> Vec<String> {
        let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json.as_object().unwrap().keys().cloned().collect()
    };
    assert_eq!(keys(out.path()), keys(&dir));
    let names = |dir: &std::path::Path| -> Vec<String> {
        let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
        names.sort();
        names
    };
    assert_eq!(names(out.path()), names(&dir));
    assert_eq!(read_adapter(out.path()).unwrap(), adapter);
}
