//! HF checkpoints written by Hone: PEFT adapters (fixtures from scripts/golden/peft_adapters.py)
//! merged into their base models and written out load back through Hone's own loader with the
//! logits of PEFT's adapted models; sharded and 16-bit checkpoints reload as they should.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::{dir_entries, fixture, load_tensors, max_abs_diff, FAMILY_MODELS};
use hone::adapters::{self, read_adapter};
use hone::export::{
    tensors_in_hf_order, write_hf_checkpoint, HfWriteOptions, NamedTensor, SaveDtype,
};
use hone::io::gguf::GgufFile;
use hone::io::source::ModelSource;
use hone::model::{hf_tensor_shapes, weights, ModelConfig};
use hone::tokenizer::Tokenizer;
use safetensors::SafeTensors;
use serde_json::Value;

/// (adapter, base model) under fixtures/adapters and fixtures/models.
const ADAPTERS: [(&str, &str); 4] = [
    ("llama-tied-qv", "llama-tied"),
    ("qwen2-all-linear", "qwen2"),
    ("llama-gqa-regex", "llama-gqa"),
    ("qwen3-all-linear", "qwen3"),
];

type Tensors = Vec<NamedTensor>;

/// The tiny SentencePiece tokenizer with a ChatML template (the fixture models carry none).
fn tokenizer() -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::open(&fixture("tokenizer/tiny-spm.gguf")).unwrap()).unwrap()
}

/// A base model with an adapter merged, as tensors for the writer.
fn merged(adapter: &str, base: &str) -> (ModelConfig, Tensors) {
    let source = ModelSource::HfDir(fixture(&format!("models/{base}")));
    let (cfg, mut w) = weights::load(&source, &Device::Cpu).unwrap();
    let adapter = read_adapter(&fixture(&format!("adapters/{adapter}"))).unwrap();
    adapters::merge(&mut w, &cfg, &adapter).unwrap();
    let tensors = tensors_in_hf_order(&cfg, w).unwrap();
    (cfg, tensors)
}

fn write(dir: &Path, cfg: &ModelConfig, tensors: Tensors, dtype: SaveDtype, max_shard: u64) {
    let opts = HfWriteOptions {
        max_shard_bytes: max_shard,
        ..Default::default()
    };
    write_hf_checkpoint(dir, cfg, tensors, &tokenizer(), dtype, &opts)
        .map_err(|e| format!("{e:#}"))
        .unwrap();
}

/// Logits of the checkpoint in `dir`, loaded through `hone::model::load` (tokenizer included).
fn logits(dir: &Path, ids: &Tensor) -> Tensor {
    let loaded = hone::model::load(
        dir.to_str().unwrap(),
        hone::model::Precision::Exact,
        &Device::Cpu,
    )
    .unwrap();
    loaded.model.forward(ids, None).unwrap()
}

fn golden(adapter: &str) -> (Tensor, Tensor) {
    let g = load_tensors(&fixture(&format!("adapters/{adapter}.golden.safetensors")));
    (
        g["input_ids"].to_dtype(DType::U32).unwrap(),
        g["logits"].clone(),
    )
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Tensor name -> shape of one safetensors file.
fn shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| (name, v.shape().to_vec()))
        .collect()
}

#[test]
fn the_tensor_list_of_a_config_is_what_transformers_saves() {
    for base in FAMILY_MODELS {
        let dir = fixture(&format!("models/{base}"));
        let cfg = ModelConfig::from_hf_file(&dir.join("config.json")).unwrap();
        let ours: BTreeMap<String, Vec<usize>> = hf_tensor_shapes(&cfg).into_iter().collect();
        assert_eq!(ours, shapes(&dir.join("model.safetensors")), "{base}");
        let count: usize = ours.values().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(count as u64, cfg.parameter_count(), "{base}");
    }
}

#[test]
fn merged_checkpoints_reload_with_peft_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, base) in ADAPTERS {
        let (cfg, tensors) = merged(name, base);
        let out = tmp.path().join(name);
        write(&out, &cfg, tensors, SaveDtype::F32, u64::MAX);

        let files = [
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ];
        assert_eq!(dir_entries(&out), files, "{name}");
        let (ids, want) = golden(name);
        let diff = max_abs_diff(&logits(&out, &ids), &want);
        assert!(diff < 1e-4, "{name}: max abs logit difference {diff}");

        let mut reread = ModelConfig::from_hf_file(&out.join("config.json")).unwrap();
        assert_eq!(reread.source_dtype, "float32");
        reread.source_dtype.clone_from(&cfg.source_dtype);
        assert_eq!(reread, cfg, "{name}: config.json reads back as the config");
        let tied = !shapes(&out.join("model.safetensors")).contains_key("lm_head.weight");
        assert_eq!(
            tied, cfg.tie_word_embeddings,
            "{name}: lm_head saved iff untied"
        );
    }
    assert_eq!(
        dir_entries(tmp.path()).len(),
        ADAPTERS.len(),
        "no staging left"
    );
}

/// Windowed layers and per-layer-type rotary settings survive a checkpoint written and read
/// again: Mistral's every-layer window, Qwen2's `layer_types`, Gemma 3's sliding and global layers,
/// with the model computing transformers' logits from the written files.
#[test]
fn sliding_windows_are_written_as_transformers_writes_them() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["mistral-window", "qwen2-window", "gemma2", "gemma3"] {
        let source = ModelSource::HfDir(fixture(&format!("models/{name}")));
        let (cfg, w) = weights::load(&source, &Device::Cpu).unwrap();
        assert!(cfg.sliding_window.is_some(), "{name}");
        let out = tmp.path().join(name);
        write(
            &out,
            &cfg,
            tensors_in_hf_order(&cfg, w).unwrap(),
            SaveDtype::F32,
            u64::MAX,
        );
        let mut reread = ModelConfig::from_hf_file(&out.join("config.json")).unwrap();
        reread.source_dtype.clone_from(&cfg.source_dtype);
        assert_eq!(reread, cfg, "{name}");
        let (ours, theirs) = (
            json(&out.join("config.json")),
            json(&source.path().join("config.json")),
        );
        let keys = [
            "sliding_window",
            "layer_types",
            "use_sliding_window",
            "rope_parameters",
            "query_pre_attn_scalar",
            "hidden_activation",
            "attn_logit_softcapping",
            "final_logit_softcapping",
        ];
        for key in keys {
            assert_eq!(ours[key], theirs[key], "{name}: {key}");
        }
        let golden = load_tensors(&fixture(&format!("models/{name}/golden.safetensors")));
        let ids = golden["input_ids"]
            .to_dtype(candle_core::DType::U32)
            .unwrap();
        let diff = max_abs_diff(&logits(&out, &ids), &golden["logits"]);
        assert!(diff < 1e-4, "{name}: {diff}");
    }
}

#[test]
fn config_json_has_transformers_5_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, tensors) = merged("llama-gqa-regex", "llama-gqa");
    let out = tmp.path().join("gqa");
    write(&out, &cfg, tensors, SaveDtype::BF16, u64::MAX);
    let ours = json(&out.join("config.json"));
    let theirs = json(&fixture("models/llama-gqa/config.json"));
    for key in theirs.as_object().unwrap().keys() {
        if key == "transformers_version" {
            continue;
        }
        let want = if key == "dtype" {
            &Value::from("bfloat16")
        } else {
            &theirs[key]
        };
        assert_eq!(&ours[key], want, "config.json {key}");
    }
    // transformers 4 reads these instead of rope_parameters.
    assert_eq!(ours["rope_theta"], 500000.0);
    assert_eq!(ours["rope_scaling"]["rope_type"], "llama3");
    assert_eq!(ours["rope_scaling"]["factor"], 8.0);

    let generation = json(&out.join("generation_config.json"));
    let im_end = tokenizer().inner().token_to_id("<|im_end|>").unwrap();
    let eos: Vec<u64> = generation["eos_token_id"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(eos[0], 2, "the config's eos first");
    assert!(eos.contains(&u64::from(im_end)), "end of turn: {eos:?}");
    assert_eq!(generation["bos_token_id"], 1);
}

#[test]
fn sharded_checkpoints_index_every_tensor_and_reload_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, tensors) = merged("llama-gqa-regex", "llama-gqa");
    let (single, sharded) = (tmp.path().join("single"), tmp.path().join("sharded"));
    write(&single, &cfg, tensors.clone(), SaveDtype::F32, u64::MAX);
    let limit = 20_000;
    write(&sharded, &cfg, tensors.clone(), SaveDtype::F32, limit);

    let index = json(&sharded.join("model.safetensors.index.json"));
    let map = index["weight_map"].as_object().unwrap();
    let total: usize = tensors.iter().map(|(_, _, v)| v.len() * 4).sum();
    assert_eq!(index["metadata"]["total_size"], total as u64);
    assert_eq!(map.len(), tensors.len());
    let shard_files: Vec<String> = dir_entries(&sharded)
        .into_iter()
        .filter(|f| f.starts_with("model-"))
        .collect();
    let n = shard_files.len();
    assert!(n > 2, "{n} shards");
    for (k, file) in shard_files.iter().enumerate() {
        assert_eq!(file, &format!("model-{:05}-of-{n:05}.safetensors", k + 1));
        let in_file = shapes(&sharded.join(file));
        let mapped: Vec<&String> = map
            .iter()
            .filter(|(_, f)| *f == file)
            .map(|(t, _)| t)
            .collect();
        assert_eq!(in_file.keys().collect::<Vec<_>>(), mapped, "{file}");
        let bytes: usize = in_file
            .values()
            .map(|s| s.iter().product::<usize>() * 4)
            .sum();
        assert!(
            bytes <= limit as usize || in_file.len() == 1,
            "{file}: {bytes} bytes"
        );
    }
    let (ids, _) = golden("llama-gqa-regex");
    let diff = max_abs_diff(&logits(&single, &ids), &logits(&sharded, &ids));
    assert_eq!(
        diff, 0.0,
        "sharded and single-file checkpoints compute the same"
    );
}

#[test]
fn sixteen_bit_checkpoints_store_each_weight_within_rounding() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, tensors) = merged("qwen2-all-linear", "qwen2");
    // Round to nearest: error at most half a unit in the last place, 2^-8 |x| with bf16's 7 stored
    // mantissa bits and 2^-11 |x| with f16's 10; f16's subnormals (below 2^-14) are 2^-24 apart.
    for (dtype, name, stored, rel, abs) in [
        (SaveDtype::BF16, "bfloat16", "BF16", 2f32.powi(-8), 0.0),
        (
            SaveDtype::F16,
            "float16",
            "F16",
            2f32.powi(-11),
            2f32.powi(-25),
        ),
    ] {
        let out = tmp.path().join(name);
        write(&out, &cfg, tensors.clone(), dtype, u64::MAX);
        assert_eq!(json(&out.join("config.json"))["dtype"], name);
        let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let reloaded = load_tensors(&out.join("model.safetensors"));
        for (tensor, _, values) in &tensors {
            let dtype_written = format!("{:?}", st.tensor(tensor).unwrap().dtype());
            assert_eq!(dtype_written, stored, "{tensor}");
            let back = reloaded[tensor].to_dtype(DType::F32).unwrap();
            let back = back.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (x, y) in values.iter().zip(&back) {
                assert!(
                    (x - y).abs() <= rel * x.abs() + abs,
                    "{name} {tensor}: {x} -> {y}"
                );
            }
        }
        let (ids, want) = golden("qwen2-all-linear");
        let diff = max_abs_diff(&logits(&out, &ids), &want);
        let scale = max_abs_diff(&want, &want.zeros_like().unwrap());
        eprintln!("{name}: max abs logit difference to PEFT's f32 logits {diff:.3e} (max |logit| {scale:.2})");
        // The weight bound above is the contract; this only catches a model that reloads as
        // something else (bf16 rounding moves this tiny random model's logits by ~2%).
        assert!(diff < 0.1 * scale, "{name}: {diff}");
    }
}
