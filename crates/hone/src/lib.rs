//! Hone: fine-tune, evaluate and export Llama-family language models.

pub mod io;
pub mod quant;
