//! Writing models and adapters out in the formats other tools load.

pub mod gguf;
