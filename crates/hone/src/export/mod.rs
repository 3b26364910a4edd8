//! Writing models out in the formats other tools load: Hugging Face checkpoint directories.

pub mod hf;

pub use hf::{
    check_output_dir, tensors_in_hf_order, write_hf_checkpoint, HfCheckpoint, HfWriteOptions,
    NamedTensor, SaveDtype,
};
