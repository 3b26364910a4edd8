//! The model families beyond Llama through the CLI on their tiny fixture models: `hone info` names
//! the family and its switches, full fine-tuning lowers the loss and writes a checkpoint of the
//! same class that generates, and a LoRA adapter merges into what the adapted model generates.
//! (GGUF export of each family is checked in the library's `export_gguf` tests: the character
//! tokenizer these tests use has no llama.cpp pre-tokenizer.)

mod common;

use common::{arg, greedy, hone, losses, tiny_hf_model, train_config};
use serde_json::Value;

/// Each family's tiny model, what `hone info --json` says of its switches, and an eight-token
/// greedy continuation's test: the family trains (full and LoRA) and its checkpoints generate.
const FAMILIES: [(&str, &str, &str); 11] = [
    ("gemma2", "Gemma2ForCausalLM", r#""attn_softcap":2.0"#),
    (
        "gemma3",
        "Gemma3ForCausalLM",
        r#""norm_placement":"Sandwich""#,
    ),
    ("qwen3", "Qwen3ForCausalLM", r#""qk_norm":"PerHead""#),
    ("olmo2", "Olmo2ForCausalLM", r#""norm_placement":"Post""#),
    ("smollm3", "SmolLM3ForCausalLM", r#""no_rope_layers":[3]"#),
    ("granite", "GraniteForCausalLM", r#""logits":8.0"#),
    ("phi3", "Phi3ForCausalLM", r#""rotary_dim":12"#),
    ("glm", "GlmForCausalLM", r#""rotary_interleaved":true"#),
    (
        "glm4",
        "Glm4ForCausalLM",
        r#""norm_placement":"SandwichGlm4""#,
    ),
    // Gemma 3's multimodal checkpoint: Hone runs and saves its language model.
    ("gemma3-mm", "Gemma3ForCausalLM", r#""sliding_window""#),
    (
        "starcoder2",
        "Starcoder2ForCausalLM",
        r#""layer_norm":true"#,
    ),
];

#[test]
fn each_family_shows_its_switches_trains_and_merges() {
    for (name, class, switch) in FAMILIES {
        let tmp = tempfile::tempdir().unwrap();
        check_family(tmp.path(), name, class, switch);
    }
}

/// A chat template the character tokenizer can render.
const TEMPLATE: &str = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\
                        {% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}\
                        {% if add_generation_prompt %}<assistant>{% endif %}";

fn check_family(dir: &std::path::Path, name: &str, class: &str, switch: &str) {
    let model = tiny_hf_model(dir, name, Some(TEMPLATE));
    let info: Value = serde_json::from_str(hone(&["info", arg(&model), "--json"]).ok()).unwrap();
    assert_eq!(info["architecture"], class);
    let switches = info["switches"].to_string();
    assert!(switches.contains(switch), "{name}: {switches}");

    let config = train_config(dir);
    let model_key = format!("model_name_or_path={}", model.display());
    let full = hone(&[
        "train",
        arg(&config),
        &model_key,
        "finetuning_type=full",
        "learning_rate=1e-2",
        "max_steps=20",
    ]);
    full.ok();
    let out = dir.join("out");
    let losses = losses(&out);
    assert!(
        losses[losses.len() - 1] < losses[0] - 0.5,
        "{name}: the loss did not fall: {losses:?}"
    );
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(saved["architectures"][0], class);
    assert_ne!(
        greedy(&out),
        greedy(&model),
        "{name}: full fine-tuning changed nothing"
    );

    let lora_out = dir.join("lora");
    hone(&[
        "train",
        arg(&config),
        &model_key,
        &format!("output_dir={}", lora_out.display()),
        "max_steps=4",
    ])
    .ok();
    let merged = dir.join("merged");
    hone(&[
        "merge",
        "--model",
        arg(&model),
        "--adapter",
        arg(&lora_out),
        "--out",
        arg(&merged),
    ])
    .ok();
    let adapted = hone(&[
        "generate",
        "--model",
        arg(&model),
        "--adapter",
        arg(&lora_out),
        "--exact",
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "8",
    ]);
    assert_eq!(adapted.ok(), greedy(&merged), "{name}");
}

/// An adapter trained on a multimodal checkpoint names its modules as the multimodal class does
/// (transformers 5's `model.language_model.…`) and targets only the language model, so PEFT applies
/// it to that class; Hone reads it back onto the same base.
#[test]
fn adapters_of_a_multimodal_base_use_its_module_names() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_model(tmp.path(), "gemma3-mm", Some(TEMPLATE));
    let info: Value = serde_json::from_str(hone(&["info", arg(&model), "--json"]).ok()).unwrap();
    assert_eq!(info["wrapper"], "Gemma3ForConditionalGeneration");
    let config = train_config(tmp.path());
    let out = tmp.path().join("lora");
    hone(&[
        "train",
        arg(&config),
        &format!("model_name_or_path={}", model.display()),
        &format!("output_dir={}", out.display()),
        "max_steps=2",
    ])
    .ok();
    let weights = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&weights).unwrap();
    let key = "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight";
    assert!(tensors.names().contains(&key), "{:?}", tensors.names());
    let adapter: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    let targets = adapter["target_modules"].as_str().unwrap();
    assert!(targets.starts_with("^(?!.*(?:vision_tower"), "{targets}");
    hone(&[
        "generate",
        "--model",
        arg(&model),
        "--adapter",
        arg(&out),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "4",
    ])
    .ok();
}

/// PEFT refuses targets that match no module; so does Hone, naming the model's own layers (Phi-3
/// has no `q_proj`: its q, k and v are one `qkv_proj`).
#[test]
fn lora_targets_the_model_lacks_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_hf_model(tmp.path(), "phi3", Some(TEMPLATE));
    let config = train_config(tmp.path());
    let run = hone(&[
        "train",
        arg(&config),
        &format!("model_name_or_path={}", model.display()),
        "lora_target=q_proj,v_proj",
    ]);
    let err = run.error();
    assert!(
        err.contains("none of this model's linear layers match")
            && err.contains("qkv_proj, o_proj, gate_up_proj, down_proj"),
        "{err}"
    );
}
