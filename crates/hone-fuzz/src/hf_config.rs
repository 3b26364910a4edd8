//! HF `config.json`: parsed into a model config, then loaded beside the tiny model's weights and
//! run, so a value that parses but makes no sense (a negative rope base, a zero-sized head) must
//! be refused before it reaches the arithmetic.

use hone::model::ModelConfig;

use crate::{run, scratch};

pub fn hf_config(data: &[u8]) {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let Ok(config) = ModelConfig::from_hf_json(&json) else {
        return;
    };
    let _ = config.parameter_count();
    let _ = config.attention_widths();
    let model = scratch::tiny_model("hf-config-model", &["config.json"]);
    scratch::write(&model, "config.json", data);
    run::load_and_step(&model, None);
}
