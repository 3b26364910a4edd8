//! Reading and writing the file formats users already have: GGUF, safetensors, HF directories.

pub mod atomic;
pub mod gguf;
mod gguf_value;
pub mod gguf_write;
pub mod hub;
pub mod hub_dataset;
pub mod json;
pub mod names;
pub mod safetensors;
pub mod source;
pub mod untrusted;
