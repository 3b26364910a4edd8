//! Hone's CPU compute kernels, shared by inference (`model`) and training (`train`): matrix
//! products on each weight storage type, attention, norms (RMSNorm, LayerNorm), rotary embeddings,
//! MLP activations (SwiGLU, GeGLU, plain GELU) and the fused LM-head cross-entropy. Differentiable kernels keep each forward beside its backward.

pub mod attention;
pub mod bf16;
pub mod columns;
pub mod cross_entropy;
pub mod few_rows;
pub mod glu;
pub mod layernorm;
pub mod math;
pub mod matmul;
pub mod matrix;
pub mod pool;
pub mod qdot;
pub mod rmsnorm;
pub mod rope;
pub mod stored;

/// The derivative of `f` in `v[i]` by central differences in f64 (step 1e-6): what the kernels'
/// backward passes are checked against.
#[cfg(test)]
fn central_difference(v: &mut [f64], i: usize, f: impl Fn(&[f64]) -> f64) -> f64 {
    let (h, orig) = (1e-6, v[i]);
    v[i] = orig + h;
    let up = f(v);
    v[i] = orig - h;
    let down = f(v);
    v[i] = orig;
    (up - down) / (2.0 * h)
}
