//! Llama-block models (every family Hone runs, as switches on the one block): configuration,
//! weights, and the forward pass.

pub mod adaption;
pub mod attend;
pub mod block;
pub mod config;
mod kv_cache;
pub mod layout;
pub mod linear;
pub mod llama;
pub mod load;
pub mod memory;
pub mod norm;
pub mod quantize;
pub mod rope;
pub mod tensors;
pub mod value_head;
pub mod virtual_tokens;
pub mod weights;

pub use config::{Architecture, ModelConfig, NormPlacement, QkNorm, RopeScaling, SlidingWindow};
pub use kv_cache::Cache;
pub use linear::{Linear, Weight};
pub use llama::{Llama, LoraSet};
pub use load::{
    inspect, load, load_stored_weights, load_weights, load_weights_quantized, load_with_adapter,
    LoadedModel, LoadedWeights, Precision, StoredWeights,
};
pub use tensors::hf_tensor_shapes;
