//! Llama-family models: configuration, weights, and the forward pass.

pub mod config;
pub mod llama;
pub mod load;
pub mod rope;
pub mod weights;

pub use config::{Architecture, ModelConfig, RopeScaling};
pub use llama::{Cache, Linear, Llama};
pub use load::{inspect, load, load_parts, load_with_adapter, LoadedModel, ModelParts};
