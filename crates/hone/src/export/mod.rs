//! Writing models and adapters out in the formats other tools load: Hugging Face checkpoint
//! directories and GGUF files.

pub mod gguf;
pub mod hf;

pub use hf::{
    check_output_dir, tensors_in_hf_order, write_hf_checkpoint, HfCheckpoint, HfWriteOptions,
    NamedTensor, SaveDtype,
};
