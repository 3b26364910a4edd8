//! Hone's CPU compute kernels, shared by inference (`model`) and training (`train`): matrix
//! products on each weight storage type, attention, norms, rotary embeddings, gated MLP activations (SwiGLU, GeGLU) and the
//! fused LM-head cross-entropy. Differentiable kernels keep each forward beside its backward.

pub mod attention;
pub mod bf16;
pub mod cross_entropy;
pub mod few_rows;
pub mod glu;
pub mod math;
pub mod matmul;
pub mod matrix;
pub mod pool;
pub mod qdot;
pub mod rmsnorm;
pub mod rope;
pub mod stored;
