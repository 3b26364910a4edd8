//! Fused CPU kernels for training, each forward beside its backward.

pub mod attention;
pub mod cross_entropy;
pub mod math;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
