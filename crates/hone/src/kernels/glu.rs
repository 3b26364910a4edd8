//! MLP activations, out = act(gate) · up: SwiGLU (silu, Llama) and GeGLU (GELU with the tanh
//! approximation, transformers' `gelu_pytorch_tanh`, Gemma); and act(x) alone for an MLP without
//! a gate (StarCoder2). The backward recomputes the
//! activation from `gate` instead of saving it. Both read gate and up where one matmul leaves
//! them, side by side in each row, so nothing is copied apart.

use rayon::prelude::*;

use super::math::exp;

/// Elements per work item: enough to amortize scheduling, small enough to spread over cores.
const CHUNK: usize = 1024;

/// The activation applied to the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Activation {
    /// silu(g) = g·σ(g) (transformers' `silu`).
    Silu,
    /// 0.5·g·(1 + tanh(√(2/π)·(g + 0.044715·g³))) (`gelu_pytorch_tanh`).
    GeluTanh,
}

impl Activation {
    /// act(g) and act'(g).
    #[inline(always)]
    fn value_and_slope(self, g: f32) -> (f32, f32) {
        match self {
            Activation::Silu => {
                let s = sigmoid(g);
                (g * s, s * (1.0 + g * (1.0 - s)))
            }
            Activation::GeluTanh => {
                const BETA: f32 = 0.797_884_6; // √(2/π)
                const KAPPA: f32 = 0.044_715;
                let t = (BETA * (g + KAPPA * g * g * g)).tanh();
                let slope =
                    0.5 * (1.0 + t) + 0.5 * g * (1.0 - t * t) * BETA * (1.0 + 3.0 * KAPPA * g * g);
                (0.5 * g * (1.0 + t), slope)
            }
        }
    }
}

/// `out = act(gate) · up` for each row `[gate | up]` of `gate_up` (`[rows, 2·width]`, the stacked
/// gate|up product as it comes out of one matmul); `out` is `[rows, width]`.
pub fn forward(act: Activation, gate_up: &[f32], width: usize, out: &mut [f32]) {
    assert!(width > 0 && gate_up.len() == 2 * out.len() && out.len().is_multiple_of(width));
    out.par_chunks_mut(width)
        .zip(gate_up.par_chunks(2 * width))
        .with_min_len(CHUNK.div_ceil(width))
        .for_each(|(out, row)| {
            let (gate, up) = row.split_at(width);
            forward_row(act, gate, up, out)
        });
}

avx512_or_portable! {
    /// One row of [`forward`]: 8% of a bf16 full fine-tuning step, with the backward's rows, when
    /// these ran 4 lanes wide.
    fn forward_row(act: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) = forward_row_portable;
}

#[inline(always)]
fn forward_row_portable(act: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
    match act {
        // Written out so the silu loop stays the vectorized one it always was.
        Activation::Silu => {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g * sigmoid(g) * u;
            }
        }
        Activation::GeluTanh => {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = act.value_and_slope(g).0 * u;
            }
        }
    }
}

/// From `dout` (`[rows, width]`), the gradient of the stacked product, `[dgate | dup]` per row
/// into `dgate_up` (`[rows, 2·width]`, overwritten).
pub fn backward(
    act: Activation,
    dout: &[f32],
    gate_up: &[f32],
    width: usize,
    dgate_up: &mut [f32],
) {
    assert!(width > 0 && gate_up.len() == 2 * dout.len() && dgate_up.len() == gate_up.len());
    dgate_up
        .par_chunks_mut(2 * width)
        .zip(gate_up.par_chunks(2 * width))
        .zip(dout.par_chunks(width))
        .with_min_len(CHUNK.div_ceil(width))
        .for_each(|((grad, row), dout)| backward_row(act, dout, row, grad));
}

avx512_or_portable! {
    fn backward_row(act: Activation, dout: &[f32], row: &[f32], grad: &mut [f32]) = backward_row_portable;
}

/// One row of [`backward`]: `row` is `[gate | up]`, `grad` receives `[dgate | dup]`.
#[inline(always)]
fn backward_row_portable(act: Activation, dout: &[f32], row: &[f32], grad: &mut [f32]) {
    let (gate, up) = row.split_at(dout.len());
    let (dgate, dup) = grad.split_at_mut(dout.len());
    let items = dgate.iter_mut().zip(dup).zip(dout).zip(gate).zip(up);
    for ((((dg, du), &d), &g), &u) in items {
        let (value, slope) = act.value_and_slope(g);
        *du = d * value;
        *dg = d * u * slope;
    }
}

/// `out = act(x)` elementwise: the activation of an MLP without a gate (StarCoder2's GELU).
pub fn activate(act: Activation, x: &[f32], out: &mut [f32]) {
    assert!(x.len() == out.len());
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(out, x)| {
            for (o, &x) in out.iter_mut().zip(x) {
                *o = act.value_and_slope(x).0;
            }
        });
}

/// `dx = dout · act'(x)`, the backward of [`activate`].
pub fn activate_backward(act: Activation, dout: &[f32], x: &[f32], dx: &mut [f32]) {
    assert!(x.len() == dout.len() && dx.len() == x.len());
    dx.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK).zip(x.par_chunks(CHUNK)))
        .for_each(|(dx, (dout, x))| {
            for ((dx, &d), &x) in dx.iter_mut().zip(dout).zip(x) {
                *dx = d * act.value_and_slope(x).1;
            }
        });
}

fn sigmoid(g: f32) -> f32 {
    1.0 / (1.0 + exp(-g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_saturates() {
        assert_eq!(sigmoid(1e4), 1.0);
        assert!(sigmoid(-1e4) < 1e-37);
    }

    /// Elementwise op: each output's central difference w.r.t. its own gate, in f64.
    #[test]
    fn gradients_match_finite_differences() {
        let gate: Vec<f32> = (0..2100).map(|i| (i as f32 - 1050.0) * 0.021).collect();
        let up: Vec<f32> = (0..2100)
            .map(|i| ((i * 7) % 13) as f32 * 0.3 - 1.8)
            .collect();
        let dout: Vec<f32> = (0..2100)
            .map(|i| ((i * 5) % 11) as f32 * 0.2 - 1.0)
            .collect();
        // Rows of 300: [gate | up] side by side.
        let width = 300;
        let gate_up: Vec<f32> = gate
            .chunks(width)
            .zip(up.chunks(width))
            .flat_map(|(g, u)| g.iter().chain(u).copied())
            .collect();
        let mut out = vec![0.0; 2100];
        forward(Activation::Silu, &gate_up, width, &mut out);
        let mut dgate_up = vec![0.0; 4200];
        backward(Activation::Silu, &dout, &gate_up, width, &mut dgate_up);
        let (dgate, dup): (Vec<f32>, Vec<f32>) = (
            dgate_up
                .chunks(2 * width)
                .flat_map(|r| r[..width].to_vec())
                .collect(),
            dgate_up
                .chunks(2 * width)
                .flat_map(|r| r[width..].to_vec())
                .collect(),
        );

        let silu = |g: f64| g / (1.0 + (-g).exp());
        let h = 1e-6;
        for i in 0..gate.len() {
            let (g, u, d) = (gate[i] as f64, up[i] as f64, dout[i] as f64);
            let tol = |want: f64| 1e-5 * want.abs().max(1.0);
            assert!(
                (out[i] as f64 - silu(g) * u).abs() < tol(silu(g) * u),
                "out[{i}]"
            );
            let fd_gate = d * u * (silu(g + h) - silu(g - h)) / (2.0 * h);
            assert!(
                (dgate[i] as f64 - fd_gate).abs() < tol(fd_gate),
                "dgate[{i}]"
            );
            // out is linear in up, so its derivative is exact.
            assert!(
                (dup[i] as f64 - d * silu(g)).abs() < tol(d * silu(g)),
                "dup[{i}]"
            );
        }
    }
}
