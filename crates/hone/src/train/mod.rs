//! Training: the model and LoRA layers built on the differentiable kernels (`crate::kernels`),
//! AdamW and learning-rate schedules, the run config and checkpoint directories.

pub mod adalora;
pub mod adaption;
pub mod checkpoint;
pub mod config;
pub mod dora;
pub mod dpo;
pub mod dropout;
pub mod factored;
pub mod freeze;
pub mod groups;
pub mod ia3;
pub mod linear;
pub mod loha;
pub mod lokr;
pub mod lora;
pub mod lora_init;
pub mod model;
pub mod norm_head;
pub mod oft;
pub mod optim;
pub mod params;
pub mod plan;
pub mod precision;
pub mod prompt;
pub mod rank_allocator;
pub mod reward;
pub mod schedule;
pub mod sft;
pub mod sweep;
pub mod vera;

pub use lora::LoraSettings;
pub use model::{TrainModel, TrainableSpec};
