//! Hone's CPU compute kernels, shared by inference (`model`) and training (`train`): matrix
//! products on each weight storage type, attention, norms (RMSNorm, LayerNorm), rotary embeddings,
//! MLP activations (SwiGLU, GeGLU, plain GELU) and the fused LM-head cross-entropy. Differentiable kernels keep each forward beside its backward.

/// Defines `fn NAME(ARGS) -> RET` that runs `PORTABLE(ARGS)` compiled for AVX-512 (F and BW, the
/// byte and word operations the bf16 conversions use) where the CPU has it, and as it is
/// elsewhere. The crate targets baseline x86-64, where the element-wise loops (polynomial
/// exponentials, conversions, packing) run 4 lanes wide; `PORTABLE` must be `#[inline(always)]` so
/// the AVX-512 copy gets its body. The same operations in the same order either way, so the same
/// values: no contraction into FMAs happens without fast-math.
macro_rules! avx512_or_portable {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $portable:path;) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                #[target_feature(enable = "avx512f,avx512bw")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $portable($($arg),*)
                }
                // SAFETY: the CPU has the feature `avx512` is compiled for.
                return unsafe { avx512($($arg),*) };
            }
            $portable($($arg),*)
        }
    };
}

/// Below this many values element-wise passes stay on the calling thread: a decoding step's few
/// rows would cost more to hand to the pool than to compute.
pub(crate) const PARALLEL_MIN: usize = 1 << 14;

/// `f` on each `d`-wide row of `y` and `x` with the row's slot in `stats` (a norm's forward), on
/// the pool when there are enough values.
pub(crate) fn for_each_row<F>(y: &mut [f32], x: &[f32], stats: &mut [f32], d: usize, f: F)
where
    F: Fn(((&mut [f32], &[f32]), &mut f32)) + Send + Sync,
{
    use rayon::prelude::*;
    if x.len() < PARALLEL_MIN {
        y.chunks_mut(d).zip(x.chunks(d)).zip(stats).for_each(f);
    } else {
        y.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .zip(stats.par_iter_mut())
            .for_each(f);
    }
}

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
pub mod rotation;
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
