//! Writing adapters: what Hone writes reads back identically and has exactly the layout PEFT's
//! `save_pretrained` gives (file names, tensor names, shapes and dtype, config keys and text).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{dir_entries, fixture};
use hone::adapters::{
    read_adapter, write_adapter, Adapter, AdapterConfig, LoraWeights, PeftConfig, TargetModules,
};
use hone::io::gguf::GgufFile;
use hone::tokenizer::Tokenizer;
use safetensors::SafeTensors;

const FIXTURES: [&str; 4] = [
    "llama-tied-qv",
    "qwen2-all-linear",
    "llama-gqa-regex",
    "qwen3-all-linear",
];

/// Tensor name -> (dtype, shape, bytes) of a safetensors file.
fn tensors(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let info = (
                format!("{:?}", v.dtype()),
                v.shape().to_vec(),
                v.data().to_vec(),
            );
            (name, info)
        })
        .collect()
}

#[test]
fn written_adapters_have_peft_layout_and_read_back_identically() {
    let tmp = tempfile::tempdir().unwrap();
    for name in FIXTURES {
        let peft_dir = fixture(&format!("adapters/{name}"));
        let adapter = read_adapter(&peft_dir).unwrap();
        let out = tmp.path().join(name);
        write_adapter(&out, &adapter, None).unwrap();

        assert_eq!(dir_entries(&out), dir_entries(&peft_dir), "{name}: files");
        assert_eq!(
            tensors(&out.join("adapter_model.safetensors")),
            tensors(&peft_dir.join("adapter_model.safetensors")),
            "{name}: tensor names, dtypes, shapes and values"
        );
        let config = |dir: &Path| std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
        assert_eq!(
            config(&out),
            config(&peft_dir),
            "{name}: adapter_config.json text"
        );
        assert_eq!(read_adapter(&out).unwrap(), adapter, "{name}: read back");
    }
}

#[test]
fn a_new_config_has_the_fields_peft_writes() {
    let peft: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("adapters/llama-tied-qv/adapter_config.json")).unwrap(),
    )
    .unwrap();
    let ours = AdapterConfig::new(4, 8.0, TargetModules::Names(vec!["q_proj".into()])).to_json();
    let keys = |v: &serde_json::Value| {
        let mut keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&ours), keys(&peft));
}

/// A one-module adapter, as a training run would build it.
fn small_adapter(base: &str) -> Adapter {
    let mut config = AdapterConfig::new(2, 4.0, TargetModules::Names(vec!["q_proj".into()]));
    config.common.base_model_name_or_path = Some(base.into());
    let module = "model.layers.0.self_attn.q_proj".to_string();
    let weights = LoraWeights {
        a: (0..2 * 32).map(|i| i as f32 / 64.0).collect(),
        b: (0..32 * 2).map(|i| -(i as f32) / 64.0).collect(),
        r: 2,
        in_features: 32,
        out_features: 32,
        scale: 2.0,
        magnitude: None,
    };
    Adapter {
        config: PeftConfig::Lora(config),
        modules: BTreeMap::from([(module, weights)]),
        scales: BTreeMap::new(),
        biases: BTreeMap::new(),
        prompt: None,
        adaption: BTreeMap::new(),
        vera: None,
        loha: Default::default(),
        lokr: Default::default(),
        oft: Default::default(),
        adalora: Default::default(),
    }
}

#[test]
fn writing_into_an_existing_directory_replaces_only_the_adapter_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    write_adapter(
        &out,
        &read_adapter(&fixture("adapters/llama-tied-qv")).unwrap(),
        None,
    )
    .unwrap();
    std::fs::write(out.join("README.md"), "my notes").unwrap();
    std::fs::write(out.join("trainer_state.json"), "{}").unwrap();

    let adapter = small_adapter("fixtures/models/llama-tied");
    write_adapter(&out, &adapter, None).unwrap();
    assert_eq!(read_adapter(&out).unwrap(), adapter);
    assert_eq!(
        std::fs::read_to_string(out.join("README.md")).unwrap(),
        "my notes"
    );
    assert!(out.join("trainer_state.json").exists());
    assert_eq!(
        dir_entries(tmp.path()),
        ["run"],
        "the staging directory is gone"
    );
}

#[test]
fn the_tokenizer_is_saved_beside_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("with-tokenizer");
    let gguf = GgufFile::open(&fixture("tokenizer/tiny-spm.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    write_adapter(&out, &small_adapter("tiny-spm"), Some(&tok)).unwrap();
    let reloaded = Tokenizer::from_hf_dir(&out).unwrap();
    let text = "Once upon a time";
    assert_eq!(
        reloaded.encode(text, true).unwrap(),
        tok.encode(text, true).unwrap()
    );
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(
        card.starts_with("---\nbase_model: tiny-spm\nlibrary_name: peft\n"),
        "{card}"
    );
}

#[test]
fn an_inconsistent_adapter_is_not_written() {
    let tmp = tempfile::tempdir().unwrap();
    type Damage = fn(&mut Adapter);
    let cases: [(&str, Damage); 3] = [
        ("does not select it", |a| {
            let w = a.modules.pop_first().unwrap().1;
            a.modules.insert("model.layers.0.mlp.up_proj".into(), w);
        }),
        ("rank 3", |a| a.config.lora_mut().unwrap().r = 3),
        ("scale 2 differs", |a| {
            a.config.lora_mut().unwrap().lora_alpha = 8.0
        }),
    ];
    for (expected, damage) in cases {
        let mut adapter = small_adapter("base");
        damage(&mut adapter);
        let out = tmp.path().join("bad");
        let err = format!("{:#}", write_adapter(&out, &adapter, None).unwrap_err());
        assert!(err.contains(expected) && err.contains("bad"), "{err}");
        assert!(!out.exists(), "nothing is written for a bad adapter");
    }
}
