//! `hone info`: the text and JSON descriptions of a GGUF file, an HF directory, the default model
//! and adapter directories.

mod common;

use candle_core::Device;
use common::{arg, fixture, hone, read_json, real_model, tiny_gguf, tiny_hf_dir};
use hone::io::gguf::GgufFile;
use serde_json::{json, Value};

/// Total number of weights in the GGUF file's tensors, counted from the file, not from the config.
fn gguf_weight_count(path: &std::path::Path) -> u64 {
    let gguf = GgufFile::open(path).unwrap();
    gguf.tensors.iter().map(|t| t.n_elements()).sum()
}

/// Asserts the JSON fields named in `expected` have those values.
fn assert_fields(info: &Value, expected: Value) {
    for (key, want) in expected.as_object().unwrap() {
        assert_eq!(&info[key], want, "field {key} in {info:#}");
    }
}

#[test]
fn tiny_gguf_json() {
    let path = tiny_gguf();
    let info = hone(&["info", arg(&path), "--json"]).json();
    // The values gguf-py reads from the file's llama.* and tokenizer.* metadata.
    assert_fields(
        &info,
        json!({
            "format": "gguf", "architecture": "LlamaForCausalLM", "num_hidden_layers": 1,
            "hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2,
            "num_key_value_heads": 1, "head_dim": 8, "vocab_size": 600,
            "max_position_embeddings": 64, "tie_word_embeddings": false, "dtype": "F32",
            "tokenizer": "llama-spm", "bos_token": "<s>", "eos_token": "</s>", "chat_template": true,
        }),
    );
    assert_eq!(info["parameters"], json!(gguf_weight_count(&path)));
    assert_eq!(info["path"], json!(arg(&path)));
}

#[test]
fn tiny_gguf_text() {
    let path = tiny_gguf();
    let run = hone(&["info", arg(&path)]);
    let text = run.ok();
    for line in [
        "architecture   LlamaForCausalLM (gguf)",
        "layers         1",
        "heads          2 query, 1 key/value, head dim 8",
        "vocabulary     600",
        &format!("parameters     {} (0.0M)", gguf_weight_count(&path)),
        "tokenizer      llama-spm",
        "bos / eos      <s> / </s>",
        "special tokens <unk>=0 <s>=1 </s>=2",
        "chat template  yes",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
}

#[test]
fn hf_dir_json_and_text() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_hf_dir(tmp.path());
    let config = read_json(&fixture("models/llama-tied/config.json"));
    let info = hone(&["info", arg(&dir), "--json"]).json();
    for key in [
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "max_position_embeddings",
        "tie_word_embeddings",
    ] {
        assert_eq!(info[key], config[key], "field {key}");
    }
    assert_eq!(info["architecture"], config["architectures"][0]);
    let weights =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let count: usize = weights.values().map(|t| t.elem_count()).sum();
    assert_fields(
        &info,
        json!({"format": "hf", "parameters": count, "tokenizer": "BPE", "bos_token": "<s>",
               "eos_token": "</s>", "chat_template": false}),
    );
    let run = hone(&["info", arg(&dir)]);
    let text = run.ok();
    assert!(
        text.contains("architecture   LlamaForCausalLM (hf)\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("parameters     {count} (0.0M)\n")),
        "{text}"
    );
    assert!(text.ends_with("chat template  no\n"), "{text}");
}

#[test]
fn default_model_matches_the_config_transformers_reads() {
    let Some(path) = real_model() else { return };
    let info = hone(&["info", arg(&path), "--json"]).json();
    let summary = &read_json(&fixture("smollm2/config_from_gguf.json"))["summary"];
    for key in [
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "rope_theta",
        "tie_word_embeddings",
    ] {
        assert_eq!(info[key], summary[key], "field {key}");
    }
    assert_fields(
        &info,
        json!({"format": "gguf", "architecture": "LlamaForCausalLM", "dtype": "Q4_1",
               "parameters": gguf_weight_count(&path), "tokenizer": "gpt2-bpe",
               "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": true}),
    );
}

/// An adapter directory is described as an adapter: its method, modules and parameters (PEFT's
/// `print_trainable_parameters` counts 224 for this IA3 adapter and 4,608 for this DoRA one).
#[test]
fn adapter_directories_are_described_as_adapters() {
    let ia3 = fixture("adapters/qwen2-ia3");
    let text = hone(&["info", arg(&ia3)]).ok().to_string();
    for line in [
        "method         IA3",
        "modules        6 (mlp.down_proj, self_attn.q_proj, self_attn.v_proj)",
        "input scaled   down_proj",
        "parameters     224",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    let dora = fixture("adapters/qwen2-dora");
    let info = hone(&["info", arg(&dora), "--json"]).json();
    assert_fields(
        &info,
        json!({"method": "DoRA", "modules": 14, "parameters": 4608, "base_model_name_or_path": "fixtures/models/qwen2"}),
    );
    assert_eq!(info["settings"]["r"], 4);
}
