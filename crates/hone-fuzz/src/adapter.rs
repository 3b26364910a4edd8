//! PEFT adapter directories: `adapter_config.json` and `adapter_model.safetensors`, read, then
//! applied to the tiny model on both precisions (unmerged beside the stored weights; merged on
//! `--exact`) and run.

use hone::adapters::peft::read_adapter;

use crate::{parts, run, scratch};

pub fn adapter(data: &[u8]) {
    let [config, tensors] = parts(data, 2)[..] else {
        unreachable!("parts gives two")
    };
    let dir = scratch::fresh_dir("adapter");
    scratch::write(&dir, "adapter_config.json", config);
    scratch::write(&dir, "adapter_model.safetensors", tensors);
    if read_adapter(&dir).is_ok() {
        let model = scratch::tiny_model("adapter-model", &[]);
        run::load_and_step(&model, Some(&dir));
    }
}
