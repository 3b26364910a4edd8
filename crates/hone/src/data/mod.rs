//! Instruction data: batches of token ids and labels for training.

pub mod batch;

pub use batch::Batch;
