//! Reading and writing the file formats users already have: GGUF, safetensors, HF directories.

pub mod gguf;
pub mod hub;
pub mod safetensors;
pub mod source;
