//! SwiGLU, out = silu(gate) · up, the gate of a Llama MLP; the backward recomputes the sigmoid
//! from `gate` instead of saving it.

use rayon::prelude::*;

/// Elements per work item: enough to amortize scheduling, small enough to spread over cores.
const CHUNK: usize = 1024;

/// `out = silu(gate) · up`, elementwise over equal-length slices.
pub fn forward(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && out.len() == gate.len());
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((out, gate), up)| {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g * sigmoid(g) * u;
            }
        });
}

/// Writes `dgate = dout · up · silu'(gate)` and `dup = dout · silu(gate)`, where
/// silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
pub fn backward(dout: &[f32], gate: &[f32], up: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    let n = gate.len();
    assert!(up.len() == n && dout.len() == n && dgate.len() == n && dup.len() == n);
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dout.par_chunks(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(((dgate, dup), dout), (gate, up))| {
            let items = dgate.iter_mut().zip(dup).zip(dout).zip(gate).zip(up);
            for ((((dg, du), &d), &g), &u) in items {
                let s = sigmoid(g);
                *du = d * (g * s);
                *dg = d * u * (s * (1.0 + g * (1.0 - s)));
            }
        });
}

/// σ(g) = 1 / (1 + e^−g). Stable at both ends: e^−g saturates (to ≈0 or to a huge finite value)
/// instead of producing inf/inf, so σ goes cleanly to 1 or 0 and silu to g or 0.
#[inline(always)]
fn sigmoid(g: f32) -> f32 {
    1.0 / (1.0 + exp(-g))
}

/// e^x for |x| ≲ 87, branch-free so the loops above vectorize (`f32::exp` is an opaque libm
/// call that keeps them scalar). x is clamped to [−87, 88], where e^x is a normal finite f32;
/// for the sigmoid that changes nothing beyond f32 resolution. Relative error below 3e-7.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // Adding 1.5·2^23 rounds to an integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split so n·LN2_HI is exact for |n| < 2^15 (Cody–Waite range reduction).
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor series of e^r to r^7 on |r| ≤ ln2/2: truncation error < 5e-9.
    let mut p = 1.0 / 5040.0;
    for k in [720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0] {
        p = p * r + 1.0 / k;
    }
    let n = t.to_bits() as i32 - ROUND.to_bits() as i32;
    p * f32::from_bits(((n + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_and_saturates() {
        let mut worst = 0f64;
        for i in -87_000..=87_000 {
            let x = i as f32 * 1e-3 + 1.3e-4;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert!(exp(-1e4) > 0.0 && exp(1e4).is_finite());
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
        let mut out = vec![0.0; 2100];
        forward(&gate, &up, &mut out);
        let (mut dgate, mut dup) = (vec![0.0; 2100], vec![0.0; 2100]);
        backward(&dout, &gate, &up, &mut dgate, &mut dup);

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
