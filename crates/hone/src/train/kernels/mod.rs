//! Fused CPU kernels for training, each forward beside its backward.

pub mod cross_entropy;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
