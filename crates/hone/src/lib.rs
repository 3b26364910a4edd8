//! Hone: fine-tune, evaluate and export Llama-family language models.

pub mod chat;
pub mod io;
pub mod quant;
pub mod tokenizer;
