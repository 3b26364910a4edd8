//! Fused CPU kernels for training, each forward beside its backward.

pub mod attention;
pub mod matmul;
