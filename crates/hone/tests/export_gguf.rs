//! `hone export` as GGUF on tiny models: metadata keys and values, tensor names, shapes and types,
//! logits of the export read back by Hone's loader, tokenizer metadata that rebuilds the same
//! tokenizer, the Ollama Modelfile, the LoRA adapter GGUF layout, and refusals.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::{dir_entries, fixture, max_abs_diff, FAMILY_MODELS};
use hone::export::gguf::{
    export_loaded, export_lora_adapter, export_model, ollama_modelfile, write_modelfile, GgufQuant,
};
use hone::io::gguf::{GgufFile, GgufValue};
use hone::model::weights::unpermute_rows;
use hone::model::{load, load_weights, load_with_adapter, Llama, Precision};
use hone::quant::GgmlType;
use hone::tokenizer::Tokenizer;
use serde_json::json;
use tempfile::TempDir;

const PROMPT: [u32; 8] = [1, 5, 17, 42, 9, 77, 3, 60];

fn logits(model: &Llama) -> Tensor {
    let ids = Tensor::new(&PROMPT[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    model.forward(&ids, None).unwrap().squeeze(0).unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    max_abs_diff(t, &t.zeros_like().unwrap())
}

fn string(f: &GgufFile, key: &str) -> String {
    f.get(key)
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{key}"))
        .to_string()
}

fn uint(f: &GgufFile, key: &str) -> u64 {
    f.get(key)
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("{key}"))
}

/// A byte-level BPE tokenizer with `n_vocab` ids, ChatML specials and a ChatML template.
fn write_byte_level_tokenizer(dir: &Path, n_vocab: usize) {
    let specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"];
    let mut vocab = serde_json::Map::new();
    for (i, t) in specials.iter().enumerate() {
        vocab.insert(t.to_string(), json!(i));
    }
    let letters: Vec<String> = "abcdefghijklmnopqrstuvwxyzĠĊ"
        .chars()
        .map(String::from)
        .collect();
    let merged = ["ab", "Ġa", "Ġab"];
    for t in letters.iter().map(String::as_str).chain(merged) {
        let id = vocab.len();
        if id < n_vocab {
            vocab.insert(t.to_string(), json!(id));
        }
    }
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": [["a", "b"], ["Ġ", "a"], ["Ġa", "b"]]}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    let config = json!({
        "bos_token": "<s>", "eos_token": "<|im_end|>", "unk_token": "<unk>",
        "chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
}

/// A copy of the tiny HF model `name` with a tokenizer, which export needs.
fn tiny_hf_model(tmp: &Path, name: &str) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(fixture(&format!("models/{name}/{f}")), dir.join(f)).unwrap();
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    write_byte_level_tokenizer(&dir, cfg["vocab_size"].as_u64().unwrap() as usize);
    dir
}

/// A 2-layer model with 256-wide rows (so k-quants apply) and tiny-spm's SentencePiece tokenizer.
fn k_quantable_model(tmp: &Path) -> PathBuf {
    let dir = tmp.join("k-quantable");
    let tokenizer =
        Tokenizer::from_gguf(&GgufFile::open(&fixture("tokenizer/tiny-spm.gguf")).unwrap())
            .unwrap();
    tokenizer.save_hf(&dir).unwrap();
    let (h, i, v, layers, heads, kv, hd) = (256, 512, 600, 2, 4, 2, 64);
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
        "intermediate_size": i, "vocab_size": v, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": hd,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128,
        "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut seed = 7u32;
    let mut random = |shape: &[usize], scale: f32| -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed as f32 / u32::MAX as f32 * 2.0 - 1.0) * scale
            })
            .collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    };
    let mut w: HashMap<String, Tensor> = HashMap::new();
    w.insert("model.embed_tokens.weight".into(), random(&[v, h], 1.0));
    w.insert("lm_head.weight".into(), random(&[v, h], 0.1));
    w.insert(
        "model.norm.weight".into(),
        random(&[h], 0.1).affine(1.0, 1.0).unwrap(),
    );
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", [heads * hd, h]),
            ("self_attn.k_proj", [kv * hd, h]),
            ("self_attn.v_proj", [kv * hd, h]),
            ("self_attn.o_proj", [h, heads * hd]),
            ("mlp.gate_proj", [i, h]),
            ("mlp.up_proj", [i, h]),
            ("mlp.down_proj", [h, i]),
        ] {
            let scale = 1.0 / (shape[1] as f32).sqrt();
            w.insert(format!("{p}.{name}.weight"), random(&shape, scale));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            w.insert(
                format!("{p}.{norm}.weight"),
                random(&[h], 0.1).affine(1.0, 1.0).unwrap(),
            );
        }
    }
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    dir
}

#[test]
fn gguf_source_round_trips_exactly_in_f32_with_its_metadata() {
    let tmp = TempDir::new().unwrap();
    let src = fixture("tokenizer/tiny-spm.gguf");
    let out = tmp.path().join("tiny.gguf");
    let report = export_model(src.to_str().unwrap(), None, &out, GgufQuant::F32, false).unwrap();
    assert_eq!(report.bytes, std::fs::metadata(&out).unwrap().len());

    let (a, b) = (GgufFile::open(&src).unwrap(), GgufFile::open(&out).unwrap());
    assert_eq!(string(&b, "general.architecture"), "llama");
    assert_eq!(string(&b, "general.name"), "hone-tiny-spm");
    assert_eq!(uint(&b, "general.file_type"), 0);
    for key in [
        "context_length",
        "embedding_length",
        "block_count",
        "feed_forward_length",
        "attention.head_count",
        "attention.head_count_kv",
        "rope.dimension_count",
        "vocab_size",
    ] {
        let key = format!("llama.{key}");
        assert_eq!(uint(&a, &key), uint(&b, &key), "{key}");
    }
    assert_eq!(uint(&b, "llama.attention.key_length"), 8);
    assert_eq!(
        b.get("llama.attention.layer_norm_rms_epsilon"),
        a.get("llama.attention.layer_norm_rms_epsilon")
    );
    for (key, value) in a
        .metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
    {
        assert_eq!(b.get(key), Some(value), "{key}");
    }
    let names = |f: &GgufFile| {
        let mut n: Vec<(String, Vec<usize>)> = f
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape()))
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(&a), names(&b));
    for t in &b.tensors {
        assert_eq!(t.ggml_type, GgmlType::F32, "{}", t.name);
        // Same values in the same (permuted) layout as the llama.cpp-written source.
        assert_eq!(
            a.tensor_f32(&t.name).unwrap(),
            b.tensor_f32(&t.name).unwrap(),
            "{}",
            t.name
        );
    }
    let diff = max_abs_diff(
        &logits(
            &load(src.to_str().unwrap(), Precision::Exact, &Device::Cpu)
                .unwrap()
                .model,
        ),
        &logits(
            &load(out.to_str().unwrap(), Precision::Exact, &Device::Cpu)
                .unwrap()
                .model,
        ),
    );
    assert!(diff < 1e-5, "f32 logits differ by {diff}");
}

#[test]
fn every_quant_round_trips_within_its_error_with_llama_cpp_types() {
    let tmp = TempDir::new().unwrap();
    let src = k_quantable_model(tmp.path());
    let reference = logits(
        &load(src.to_str().unwrap(), Precision::Exact, &Device::Cpu)
            .unwrap()
            .model,
    );
    let scale = max_abs(&reference);
    // Bounds relative to the largest logit: f32 exact, then by bits per weight.
    let cases = [
        (GgufQuant::F32, 1e-6),
        (GgufQuant::F16, 2e-3),
        (GgufQuant::Bf16, 2e-2),
        (GgufQuant::Q8_0, 1e-2),
        (GgufQuant::Q4_0, 0.15),
        (GgufQuant::Q4KM, 0.1),
    ];
    for (quant, bound) in cases {
        let out = tmp.path().join(format!("{quant}.gguf"));
        let report = export_model(src.to_str().unwrap(), None, &out, quant, false).unwrap();
        let ty = |name: &str| {
            report
                .tensors
                .iter()
                .find(|t| t.0 == name)
                .unwrap_or_else(|| panic!("{name}"))
                .2
        };
        assert_eq!(ty("blk.0.attn_norm.weight"), GgmlType::F32);
        let expected = match quant {
            GgufQuant::F32 => [GgmlType::F32; 4],
            GgufQuant::F16 => [GgmlType::F16; 4],
            GgufQuant::Bf16 => [GgmlType::BF16; 4],
            GgufQuant::Q8_0 => [GgmlType::Q8_0; 4],
            GgufQuant::Q4_0 => [
                GgmlType::Q6K,
                GgmlType::Q4_0,
                GgmlType::Q4_0,
                GgmlType::Q4_0,
            ],
            // Two layers: use_more_bits picks layer 1 (7 * 2 / 8 = 1) for attn_v and ffn_down.
            GgufQuant::Q4KM => [GgmlType::Q6K, GgmlType::Q4K, GgmlType::Q4K, GgmlType::Q6K],
        };
        let got = [
            ty("output.weight"),
            ty("token_embd.weight"),
            ty("blk.0.attn_v.weight"),
            ty("blk.1.attn_v.weight"),
        ];
        assert_eq!(got, expected, "{quant}");
        if quant == GgufQuant::Q4KM {
            assert_eq!(ty("blk.0.ffn_down.weight"), GgmlType::Q4K);
            assert_eq!(ty("blk.1.ffn_down.weight"), GgmlType::Q6K);
            assert_eq!(ty("blk.1.attn_q.weight"), GgmlType::Q4K);
        }
        let loaded = load(out.to_str().unwrap(), Precision::Exact, &Device::Cpu).unwrap();
        let diff = max_abs_diff(&reference, &logits(&loaded.model));
        eprintln!(
            "{quant}: {} bytes, max logit difference {diff} (largest logit {scale})",
            report.bytes
        );
        assert!(
            diff <= bound * scale,
            "{quant}: logits differ by {diff}, bound {}",
            bound * scale
        );
        assert!(
            quant == GgufQuant::F32 || diff > 0.0,
            "{quant} changed nothing"
        );
        // The SentencePiece tokenizer written from tokenizer.json tokenizes as the original.
        let original = Tokenizer::from_hf_dir(&src).unwrap();
        for text in [
            "Hello world, this is Hone.",
            " leading space",
            "<|im_start|>user\nhi<|im_end|>",
            "ünïcödé 123",
        ] {
            assert_eq!(
                original.encode(text, true).unwrap(),
                loaded.tokenizer.encode(text, true).unwrap(),
                "{text:?}"
            );
        }
    }
}

/// `src` exported as `tmp/NAME.gguf` in f32, kept in `$HONE_KEEP_EXPORTS` when set (for
/// scripts/check/gguf_logits_llama_cpp.py, which runs them in llama.cpp).
fn export_f32(tmp: &Path, src: &Path, name: &str) -> (PathBuf, hone::export::gguf::ExportReport) {
    let out = tmp.join(format!("{name}.gguf"));
    let report = export_model(src.to_str().unwrap(), None, &out, GgufQuant::F32, false).unwrap();
    if let Some(keep) = std::env::var_os("HONE_KEEP_EXPORTS") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&out, Path::new(&keep).join(format!("{name}.gguf"))).unwrap();
    }
    (out, report)
}

#[test]
fn hf_sources_of_every_family_round_trip() {
    let tmp = TempDir::new().unwrap();
    // The Gemma 3 fixture has a window pattern llama.cpp cannot run (refused below); gemma3-gguf
    // has the one it can.
    let names = FAMILY_MODELS.into_iter().filter(|&n| n != "gemma3");
    for name in names.chain(["gemma3-gguf", "llama-bf16"]) {
        let src = tiny_hf_model(tmp.path(), name);
        let (out, report) = export_f32(tmp.path(), &src, name);
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(string(&f, "tokenizer.ggml.model"), "gpt2");
        assert_eq!(string(&f, "tokenizer.ggml.pre"), "gpt-2");
        assert_eq!(uint(&f, "tokenizer.ggml.eos_token_id"), 4);
        assert_eq!(uint(&f, "tokenizer.ggml.bos_token_id"), 1);
        let types = f
            .get("tokenizer.ggml.token_type")
            .unwrap()
            .as_array()
            .unwrap();
        assert_eq!(types[4], GgufValue::I32(3), "<|im_end|> is a control token");
        assert_eq!(types[6], GgufValue::I32(1));
        let arch = match name {
            "qwen2" | "qwen3" | "smollm3" | "granite" | "olmo2" | "gemma2" => name,
            "gemma3-gguf" => "gemma3",
            "phi3" | "phi3-long" => "phi3",
            "glm" => "chatglm",
            "glm4" => "glm4",
            "starcoder2" => "starcoder2",
            _ => "llama",
        };
        assert_eq!(string(&f, "general.architecture"), arch);
        let n_vocab = uint(&f, &format!("{arch}.vocab_size")) as usize;
        assert_eq!(
            f.get("tokenizer.ggml.tokens")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            n_vocab
        );
        assert_eq!(
            types[n_vocab - 1],
            GgufValue::I32(5),
            "padding ids are unused tokens"
        );
        let has = |t: &str| report.tensors.iter().any(|(n, _, _)| n == t);
        let tied = [
            "llama-tied",
            "qwen2",
            "smollm3",
            "granite",
            "gemma2",
            "gemma3-gguf",
            "phi3",
            "starcoder2",
        ];
        let tied = tied.contains(&name);
        assert_eq!(has("output.weight"), !tied, "{name}");
        assert_eq!(has("rope_freqs.weight"), name == "llama-gqa", "{name}");
        // Phi-3: fused q|k|v and gate|up under llama.cpp's names, LongRoPE's factor sets.
        let phi3 = arch == "phi3";
        assert_eq!(has("blk.1.attn_qkv.weight"), phi3, "{name}");
        let fused_gate_up = phi3 || name.starts_with("glm") || name == "starcoder2";
        assert_eq!(has("blk.1.ffn_gate.weight"), !fused_gate_up, "{name}");
        assert_eq!(has("rope_factors_long.weight"), phi3, "{name}");
        assert_eq!(has("rope_factors_short.weight"), phi3, "{name}");
        assert_eq!(
            has("blk.1.attn_k.bias"),
            ["qwen2", "granite", "glm", "glm4", "starcoder2"].contains(&name),
            "{name}"
        );
        let qk_norm = ["qwen3", "olmo2", "gemma3-gguf"].contains(&name);
        assert_eq!(has("blk.1.attn_q_norm.weight"), qk_norm, "{name}");
        let post_norms = ["olmo2", "gemma2", "gemma3-gguf", "glm4"].contains(&name);
        assert_eq!(has("blk.1.post_ffw_norm.weight"), post_norms, "{name}");
        assert_eq!(has("blk.1.ffn_norm.weight"), name != "olmo2", "{name}");
        assert_eq!(has("output_norm.bias"), name == "starcoder2", "{name}");
        let diff = max_abs_diff(
            &logits(
                &load(src.to_str().unwrap(), Precision::Exact, &Device::Cpu)
                    .unwrap()
                    .model,
            ),
            &logits(
                &load(out.to_str().unwrap(), Precision::Exact, &Device::Cpu)
                    .unwrap()
                    .model,
            ),
        );
        assert!(diff < 1e-5, "{name}: f32 logits differ by {diff}");
        let exported = load(out.to_str().unwrap(), Precision::Exact, &Device::Cpu)
            .unwrap()
            .tokenizer;
        let original = Tokenizer::from_hf_dir(&src).unwrap();
        for text in ["ab abba cab", "<|im_start|>user\nab<|im_end|>"] {
            assert_eq!(
                original.encode(text, true).unwrap(),
                exported.encode(text, true).unwrap(),
                "{name}: {text:?}"
            );
        }
    }
}

/// The remote-code families through llama.cpp's archs: ChatGLM3 as `chatglm` with a fused
/// `attn_qkv`, Qwen v1 as `qwen` (w2 the gate, w1 up), Baichuan 2 7B as `baichuan` with `W_pack`
/// split into permuted q and k and plain v, its head normalized (llama.cpp's multiplies by the
/// rows as stored). Read back (Baichuan's q, k and v packed again), each computes the logits of
/// the checkpoint. llama.cpp knows Baichuan's 7B (rotary) and 13B (ALiBi) by their 32 and 40
/// layers: the 2-layer fixtures are refused as they are, and exported as 32- and 40-layer ones
/// (layers repeated).
#[test]
fn remote_code_families_round_trip() {
    let tmp = TempDir::new().unwrap();
    for (name, arch) in [
        ("chatglm3", "chatglm"),
        ("qwen", "qwen"),
        ("baichuan2", "baichuan"),
    ] {
        let src = tiny_remote_model(tmp.path(), name);
        if name == "baichuan2" {
            let refused = tmp.path().join("refused.gguf");
            let err = export_model(src.to_str().unwrap(), None, &refused, GgufQuant::F32, false)
                .unwrap_err();
            assert!(
                format!("{err:#}").contains("32 layers (Baichuan 7B)"),
                "{err:#}"
            );
            deepen(&src, 32);
        }
        let (out, report) = export_f32(tmp.path(), &src, name);
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(string(&f, "general.architecture"), arch);
        let has = |t: &str| report.tensors.iter().any(|(n, _, _)| n == t);
        assert_eq!(has("blk.1.attn_qkv.weight"), name != "baichuan2", "{name}");
        assert_eq!(has("blk.1.attn_qkv.bias"), name != "baichuan2", "{name}");
        assert_eq!(has("blk.1.attn_q.weight"), name == "baichuan2", "{name}");
        assert_eq!(has("blk.1.ffn_gate.weight"), name != "chatglm3", "{name}");
        let load_logits = |path: &Path| {
            logits(
                &load(path.to_str().unwrap(), Precision::Exact, &Device::Cpu)
                    .unwrap()
                    .model,
            )
        };
        let diff = max_abs_diff(&load_logits(&src), &load_logits(&out));
        assert!(diff < 1e-5, "{name}: f32 logits differ by {diff}");
    }
    let src = tiny_remote_model(tmp.path(), "baichuan2-alibi");
    let out = tmp.path().join("alibi.gguf");
    let err = export_model(src.to_str().unwrap(), None, &out, GgufQuant::F32, false).unwrap_err();
    assert!(
        format!("{err:#}").contains("ALiBi for 40 layers"),
        "{err:#}"
    );
    assert!(!out.exists());
    // At 40 layers llama.cpp runs it with ALiBi, and Hone reads it back so.
    deepen(&src, 40);
    let (out, _) = export_f32(tmp.path(), &src, "baichuan2-alibi");
    let loaded = load(out.to_str().unwrap(), Precision::Exact, &Device::Cpu).unwrap();
    assert!(loaded.model.config().alibi);
    let want = load(src.to_str().unwrap(), Precision::Exact, &Device::Cpu).unwrap();
    let diff = max_abs_diff(&logits(&want.model), &logits(&loaded.model));
    assert!(diff < 1e-5, "baichuan2-alibi: f32 logits differ by {diff}");
}

/// Rewrites the 2-layer checkpoint in `dir` as a `layers`-layer one, layer `l` a copy of layer
/// `l % 2`.
fn deepen(dir: &Path, layers: usize) {
    let path = dir.join("model.safetensors");
    let mut out = HashMap::new();
    for (name, t) in common::load_tensors(&path) {
        let Some((l, module)) = name
            .strip_prefix("model.layers.")
            .and_then(|rest| rest.split_once('.'))
        else {
            out.insert(name, t);
            continue;
        };
        let l: usize = l.parse().unwrap();
        for to in (l..layers).step_by(2) {
            out.insert(format!("model.layers.{to}.{module}"), t.clone());
        }
    }
    candle_core::safetensors::save(&out, &path).unwrap();
    let config_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    cfg["num_hidden_layers"] = json!(layers);
    std::fs::write(&config_path, cfg.to_string()).unwrap();
}

/// A remote-code fixture model (its own config keys, no generation config) with the byte-level
/// test tokenizer.
fn tiny_remote_model(tmp: &Path, name: &str) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture(&format!("models/{name}/{f}")), dir.join(f)).unwrap();
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let vocab = cfg.get("padded_vocab_size").unwrap_or(&cfg["vocab_size"]);
    write_byte_level_tokenizer(&dir, vocab.as_u64().unwrap() as usize);
    dir
}

/// llama.cpp's qwen3 graph loads q/k/v biases but has no o_proj bias: a Qwen3 with
/// `attention_bias: true` cannot be written as a GGUF llama.cpp runs.
#[test]
fn a_qwen3_o_proj_bias_is_refused() {
    let err = refused_export("qwen3", |cfg| cfg.o_proj_bias = true);
    assert!(err.contains("llama.cpp's qwen3"), "{err}");
}

/// The error of exporting fixture model `name` with its config changed by `change` (which llama.cpp
/// cannot run); the refused export leaves no file.
fn refused_export(name: &str, change: impl FnOnce(&mut hone::model::ModelConfig)) -> String {
    let tmp = TempDir::new().unwrap();
    let src = tiny_hf_model(tmp.path(), name);
    let mut parts = load_weights(src.to_str().unwrap(), None, &Device::Cpu).unwrap();
    change(&mut parts.config);
    let out = tmp.path().join("refused.gguf");
    let err = export_loaded(&parts, &out, GgufQuant::F32, false).unwrap_err();
    assert!(!out.exists(), "{name}: a refused export left a file");
    format!("{err:#}")
}

/// llama.cpp's gemma3 assumes its window pattern (every 6th layer global), attention scale and
/// local rotary base: the Gemma 3 fixture alternates sliding and global layers and is refused.
#[test]
fn a_gemma3_llama_cpp_would_run_otherwise_is_refused() {
    let tmp = TempDir::new().unwrap();
    let src = tiny_hf_model(tmp.path(), "gemma3");
    let out = tmp.path().join("gemma3.gguf");
    let err = export_model(src.to_str().unwrap(), None, &out, GgufQuant::F32, false).unwrap_err();
    assert!(
        format!("{err:#}").contains("every 6th layer global"),
        "{err:#}"
    );
    assert!(!out.exists());
}

/// llama.cpp's olmo2 arch sizes q as the hidden width: an OLMo 2 with another query width (the
/// tiny llama-gqa shape, 4 heads × 16 on a hidden size of 32) is refused.
#[test]
fn an_olmo2_query_width_llama_cpp_cannot_load_is_refused() {
    let err = refused_export("olmo2", |cfg| cfg.head_dim = 16);
    assert!(err.contains("llama.cpp's olmo2"), "{err}");
}

/// llama.cpp's smollm3 arch runs every 4th layer without RoPE and has no key for another
/// pattern: a SmolLM3 with other NoPE layers cannot be written as a GGUF llama.cpp runs right.
#[test]
fn a_smollm3_nope_pattern_llama_cpp_cannot_run_is_refused() {
    let err = refused_export("smollm3", |cfg| {
        assert_eq!(cfg.no_rope_layers, [3]);
        cfg.no_rope_layers = vec![1];
    });
    assert!(err.contains("every 4th layer without it"), "{err}");
}

#[test]
fn merged_adapter_export_matches_the_adapted_model() {
    let tmp = TempDir::new().unwrap();
    let src = tiny_hf_model(tmp.path(), "llama-tied");
    let adapter = fixture("adapters/llama-tied-qv");
    let out = tmp.path().join("merged.gguf");
    export_model(
        src.to_str().unwrap(),
        Some(&adapter),
        &out,
        GgufQuant::F32,
        false,
    )
    .unwrap();
    let adapted = load_with_adapter(
        src.to_str().unwrap(),
        Some(&adapter),
        Precision::Exact,
        &Device::Cpu,
    )
    .unwrap();
    let diff = max_abs_diff(
        &logits(&adapted.model),
        &logits(
            &load(out.to_str().unwrap(), Precision::Exact, &Device::Cpu)
                .unwrap()
                .model,
        ),
    );
    assert!(diff < 1e-5, "merged logits differ by {diff}");
}

#[test]
fn lora_adapter_gguf_has_llama_cpp_layout_and_merges_to_the_merged_export() {
    let tmp = TempDir::new().unwrap();
    let src = tiny_hf_model(tmp.path(), "llama-gqa");
    let src = src.to_str().unwrap();
    // Layer 1's k (permuted rows), o and up (alpha_pattern 2 instead of 16: folded into lora_b).
    let adapter = fixture("adapters/llama-gqa-regex");
    let lora = tmp.path().join("lora.gguf");
    export_lora_adapter(src, &adapter, &lora, false).unwrap();
    let f = GgufFile::open(&lora).unwrap();
    assert_eq!(string(&f, "general.architecture"), "llama");
    assert_eq!(string(&f, "general.type"), "adapter");
    assert_eq!(string(&f, "adapter.type"), "lora");
    assert_eq!(f.get("adapter.lora.alpha"), Some(&GgufValue::F32(16.0)));
    let mut names: Vec<(String, Vec<usize>)> = f
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape()))
        .collect();
    names.sort();
    let expected: Vec<(String, Vec<usize>)> = [
        ("blk.1.attn_k.weight.lora_a", vec![4, 32]),
        ("blk.1.attn_k.weight.lora_b", vec![32, 4]),
        ("blk.1.attn_output.weight.lora_a", vec![4, 64]),
        ("blk.1.attn_output.weight.lora_b", vec![32, 4]),
        ("blk.1.ffn_up.weight.lora_a", vec![4, 32]),
        ("blk.1.ffn_up.weight.lora_b", vec![80, 4]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), s))
    .collect();
    assert_eq!(names, expected);

    // llama.cpp's merge, W + alpha / r · B · A, in GGUF layout, equals the merged model's export.
    let base = tmp.path().join("base.gguf");
    let merged = tmp.path().join("merged.gguf");
    export_model(src, None, &base, GgufQuant::F32, false).unwrap();
    export_model(src, Some(&adapter), &merged, GgufQuant::F32, false).unwrap();
    let (base, merged) = (
        GgufFile::open(&base).unwrap(),
        GgufFile::open(&merged).unwrap(),
    );
    for module in [
        "blk.1.attn_k.weight",
        "blk.1.attn_output.weight",
        "blk.1.ffn_up.weight",
    ] {
        let diff = llama_cpp_merge_diff(&base, &f, &merged, module, (4, 16.0 / 4.0));
        assert!(diff < 1e-6, "{module}: llama.cpp's merge differs by {diff}");
        let (unmerged, _) = base.tensor_f32(module).unwrap();
        assert_ne!(
            unmerged,
            merged.tensor_f32(module).unwrap().0,
            "{module}: the adapter changes it"
        );
    }
    // The k update's rows are permuted like the weight's: unpermuted, B equals PEFT's B.
    let (b, _) = f.tensor_f32("blk.1.attn_k.weight.lora_b").unwrap();
    let peft = hone::adapters::read_adapter(&adapter).unwrap();
    let k = &peft.modules["model.layers.1.self_attn.k_proj"];
    assert_eq!(unpermute_rows(&b, 2, 4), k.b);
}

#[test]
fn lora_export_refuses_adapters_llama_cpp_cannot_apply() {
    let tmp = TempDir::new().unwrap();
    let out = tmp.path().join("lora.gguf");
    // Made for llama-gqa, whose up_proj is [80, 32]; llama-tied's is [88, 32].
    let tied = tiny_hf_model(tmp.path(), "llama-tied");
    let err = export_lora_adapter(
        tied.to_str().unwrap(),
        &fixture("adapters/llama-gqa-regex"),
        &out,
        false,
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("llama-gqa-regex")
            && msg.contains("up_proj")
            && msg.contains("different base model"),
        "{msg}"
    );
    // Trained biases have no place in a llama.cpp LoRA adapter.
    let qwen2 = tiny_hf_model(tmp.path(), "qwen2");
    let err = export_lora_adapter(
        qwen2.to_str().unwrap(),
        &fixture("adapters/qwen2-all-linear"),
        &out,
        false,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("trains biases"), "{err:#}");
    assert!(!out.exists());
}

#[test]
fn modelfile_has_the_chatml_template_and_every_stop_token() {
    let tmp = TempDir::new().unwrap();
    let src = tiny_hf_model(tmp.path(), "llama-tied");
    let out = tmp.path().join("tiny.gguf");
    export_model(src.to_str().unwrap(), None, &out, GgufQuant::F16, false).unwrap();
    let tok = load(out.to_str().unwrap(), Precision::Exact, &Device::Cpu)
        .unwrap()
        .tokenizer;
    let path = write_modelfile(&out, &tok).unwrap();
    assert_eq!(path, tmp.path().join("Modelfile"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, ollama_modelfile("tiny.gguf", &tok).unwrap());
    let expected = "FROM ./tiny.gguf\n\
        TEMPLATE \"\"\"{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\
        {{ range .Messages }}{{ if ne .Role \"system\" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}{{ end }}\
        <|im_start|>assistant\n\"\"\"\n\
        PARAMETER stop \"<|im_end|>\"\n";
    assert_eq!(text, expected);
}

#[test]
fn existing_output_is_refused_without_force_and_failed_writes_leave_nothing() {
    let tmp = TempDir::new().unwrap();
    let src = fixture("tokenizer/tiny-spm.gguf");
    let src = src.to_str().unwrap();
    let out = tmp.path().join("tiny.gguf");
    std::fs::write(&out, b"keep me").unwrap();
    let err = export_model(src, None, &out, GgufQuant::F16, false).unwrap_err();
    assert!(
        err.to_string().contains("already exists (pass --force"),
        "{err}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let err =
        export_lora_adapter(src, &fixture("adapters/llama-tied-qv"), &out, false).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    export_model(src, None, &out, GgufQuant::F16, true).unwrap();
    assert_eq!(
        string(&GgufFile::open(&out).unwrap(), "general.architecture"),
        "llama"
    );

    // The final rename fails (a directory is in the way): the temporary is removed.
    let blocked = tmp.path().join("blocked.gguf");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("inside"), b"x").unwrap();
    assert!(export_model(src, None, &blocked, GgufQuant::F16, true).is_err());
    assert_eq!(dir_entries(tmp.path()), ["blocked.gguf", "tiny.gguf"]);
    assert!(blocked.is_dir());
}

/// A LoRA on Baichuan's `W_pack` as a llama.cpp adapter: split by `lora_b`'s rows into the
/// `attn_q`, `attn_k`, `attn_v` updates llama.cpp's baichuan has (q and k rows permuted like its
/// weights), each with the whole `lora_a`; llama.cpp's merge of each equals the merged export's.
#[test]
fn a_w_pack_lora_splits_into_llama_cpp_q_k_v_updates() {
    use hone::adapters::TargetModules;
    use hone::adapters::{write_adapter, Adapter, AdapterConfig, LoraWeights, PeftConfig};
    let tmp = TempDir::new().unwrap();
    let src = tiny_remote_model(tmp.path(), "baichuan2");
    deepen(&src, 32);
    let (r, hidden, packed) = (4, 32, 96);
    let values = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i + seed) * 7919 % 1013) as f32 - 506.0) / 2000.0)
            .collect()
    };
    let config = AdapterConfig::new(r, 8.0, TargetModules::Names(vec!["W_pack".into()]));
    let module = LoraWeights {
        a: values(r * hidden, 1),
        b: values(packed * r, 2),
        r,
        in_features: hidden,
        out_features: packed,
        scale: 2.0,
        magnitude: None,
    };
    let adapter = Adapter {
        config: PeftConfig::Lora(config),
        modules: [("model.layers.0.self_attn.W_pack".to_string(), module)].into(),
        scales: Default::default(),
        biases: Default::default(),
        prompt: None,
        adaption: Default::default(),
        vera: None,
        loha: Default::default(),
        lokr: Default::default(),
        oft: Default::default(),
        adalora: Default::default(),
    };
    let adapter_dir = tmp.path().join("w-pack-lora");
    write_adapter(&adapter_dir, &adapter, None).unwrap();
    let src = src.to_str().unwrap();
    let lora = tmp.path().join("lora.gguf");
    export_lora_adapter(src, &adapter_dir, &lora, false).unwrap();
    let f = GgufFile::open(&lora).unwrap();
    let mut names: Vec<String> = f.tensors.iter().map(|t| t.name.clone()).collect();
    names.sort();
    let parts = ["attn_k", "attn_q", "attn_v"];
    let want: Vec<String> = parts
        .iter()
        .flat_map(|p| ["lora_a", "lora_b"].map(|s| format!("blk.0.{p}.weight.{s}")))
        .collect();
    assert_eq!(names, want);

    let base = tmp.path().join("base.gguf");
    let merged = tmp.path().join("merged.gguf");
    export_model(src, None, &base, GgufQuant::F32, false).unwrap();
    export_model(src, Some(&adapter_dir), &merged, GgufQuant::F32, false).unwrap();
    let (base, merged) = (
        GgufFile::open(&base).unwrap(),
        GgufFile::open(&merged).unwrap(),
    );
    for part in parts {
        let module = format!("blk.0.{part}.weight");
        let diff = llama_cpp_merge_diff(&base, &f, &merged, &module, (r, 8.0 / r as f64));
        assert!(diff < 1e-6, "{module}: llama.cpp's merge differs by {diff}");
    }
}

/// How far llama.cpp's merge of `module`, `W + scale · B · A` from the `base` export and the
/// `lora` adapter GGUF (rank `r`), is from the `merged` export's weight.
fn llama_cpp_merge_diff(
    base: &GgufFile,
    lora: &GgufFile,
    merged: &GgufFile,
    module: &str,
    (r, scale): (usize, f64),
) -> f32 {
    let (w, shape) = base.tensor_f32(module).unwrap();
    let (a, _) = lora.tensor_f32(&format!("{module}.lora_a")).unwrap();
    let (b, _) = lora.tensor_f32(&format!("{module}.lora_b")).unwrap();
    let (out, inp) = (shape[0], shape[1]);
    let dev = Device::Cpu;
    let delta = Tensor::from_vec(b, (out, r), &dev)
        .unwrap()
        .matmul(&Tensor::from_vec(a, (r, inp), &dev).unwrap())
        .unwrap();
    let applied = (Tensor::from_vec(w, (out, inp), &dev).unwrap()
        + delta.affine(scale, 0.0).unwrap())
    .unwrap();
    let want = Tensor::from_vec(merged.tensor_f32(module).unwrap().0, (out, inp), &dev).unwrap();
    max_abs_diff(&applied, &want)
}
