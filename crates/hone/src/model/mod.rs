//! Llama-family models: configuration, weights, and the forward pass.

pub mod config;
mod few_rows;
mod kv_cache;
pub mod llama;
pub mod load;
pub mod rope;
pub mod tensors;
pub mod weights;

pub use config::{Architecture, ModelConfig, RopeScaling};
pub use kv_cache::Cache;
pub use llama::{Linear, Llama};
pub use load::{inspect, load, load_weights, load_with_adapter, LoadedModel, LoadedWeights};
pub use tensors::hf_tensor_shapes;
