//! Hone: fine-tune, evaluate and export Llama-family language models.

pub mod adapters;
pub mod alloc;
pub mod chat;
pub mod data;
pub mod eval;
pub mod export;
pub mod generate;
pub mod io;
pub mod kernels;
pub mod model;
pub mod quant;
pub mod serve;
pub mod tokenizer;
pub mod train;
