//! safetensors files: the header and data read as values (adapters, checkpoints), mapped with
//! each tensor converted to f32, and as the weights of the tiny model, loaded and run.

use candle_core::Device;
use hone::io::safetensors::{map_file, read_f32_values};

use crate::{run, scratch};

/// Tensors up to this many bytes are converted on their own (a model load converts or maps the
/// rest after checking their shapes against the config).
const MAX_CONVERTED_BYTES: usize = 1 << 22;

pub fn safetensors(data: &[u8]) {
    let dir = scratch::fresh_dir("safetensors");
    let model = scratch::tiny_model("safetensors-model", &["model.safetensors"]);
    for path in [
        scratch::write(&dir, "values.safetensors", data),
        scratch::write(&model, "model.safetensors", data),
    ] {
        if let Ok((map, tensors)) = map_file(&path) {
            for tensor in &tensors {
                if tensor.range.len() <= MAX_CONVERTED_BYTES {
                    let _ = tensor.to_f32(&map, &Device::Cpu);
                }
            }
        }
    }
    let _ = read_f32_values(&dir.join("values.safetensors"));
    run::load_and_step(&model, None);
}
