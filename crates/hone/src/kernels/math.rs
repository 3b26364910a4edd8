//! Scalar math shared by the kernels, written so the loops that call it vectorize.

/// `e^x` to about 1 ulp, exactly 0 below -87.3 (so -inf gives 0), for x ≤ 88. A polynomial
/// instead of libm's `expf` call, which would keep the softmax loops from vectorizing.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // e^x = 2^n · e^r with n = round(x / ln 2) and |r| ≤ ln 2 / 2; ln 2 split in two so that
    // n · LN2_HI is exact. Cephes' minimax polynomial for e^r on that interval.
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MIN: f32 = -87.336_55;
    // Adding 1.5 · 2^23 rounds to an integer in the low mantissa bits (no SSE4.1 roundps, no
    // float-to-int conversion): bits(ROUND + n) = bits(ROUND) + n.
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(MIN, 88.0);
    let shifted = xc * LOG2_E + ROUND;
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let n = shifted - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((n_int + 127) as u32) << 23);
    if x < MIN {
        0.0
    } else {
        er * two_n
    }
}

#[cfg(test)]
mod tests {
    use super::exp;

    #[test]
    fn exp_is_accurate_and_saturates() {
        let mut worst = 0f64;
        for i in -87_000..=87_000 {
            let x = i as f32 * 1e-3 + 1.3e-4;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 3e-7, "relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert!(exp(1e4).is_finite());
    }
}
