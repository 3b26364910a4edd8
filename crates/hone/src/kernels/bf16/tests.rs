use super::*;
use crate::kernels::stored::tests::{bf16_kernels as kernels, stored, values};
use crate::quant::GgmlType;

fn round(x: f32) -> f64 {
    f64::from(f32::from_bits(u32::from(to_bf16(x)) << 16))
}

/// `c[i, j] = Σ_t a[i, t] · b(t, j)` in f64 with `a` rounded to bf16, and `Σ |terms|` (the scale
/// the f32 accumulation error is measured against).
fn reference(
    a: &[f32],
    m: usize,
    k: usize,
    n: usize,
    b: impl Fn(usize, usize) -> f64,
) -> Vec<(f64, f64)> {
    let mut out = Vec::with_capacity(m * n);
    for i in 0..m {
        for j in 0..n {
            let terms = (0..k).map(|t| round(a[i * k + t]) * b(t, j));
            out.push(terms.fold((0.0, 0.0), |(s, abs), v| (s + v, abs + v.abs())));
        }
    }
    out
}

/// `got` against the f64 sums, within the bound of a `k`-term f32 summation: `k · ε · Σ |terms|`
/// (plus one rounding of the value added to when accumulating).
fn check(got: &[f32], want: &[(f64, f64)], k: usize, init: Option<&[f32]>, what: &str) {
    let eps = f64::from(f32::EPSILON);
    for (i, (&g, &(w, scale))) in got.iter().zip(want).enumerate() {
        let w = w + init.map_or(0.0, |init| f64::from(init[i]));
        assert!(
            (f64::from(g) - w).abs() <= (k + 1) as f64 * eps * (scale + w.abs()),
            "{what}: element {i}: {g} vs {w}"
        );
    }
}

/// Forward and input gradient of a two-part stack, on odd shapes (an odd width, rows and columns
/// that fill no tile, more rows and columns than one task, more pairs than one depth block),
/// against f64 sums of the bf16 values.
#[test]
fn products_equal_the_sums_of_the_rounded_values() {
    for kernel in kernels() {
        for (m, rows, k) in [
            (3, (5, 4), 7),
            (45, (37, 21), 71),
            (300, (100, 33), 40),
            (40, (300, 9), 601),
        ] {
            let parts = [
                stored(GgmlType::BF16, rows.0, k, 1),
                stored(GgmlType::BF16, rows.1, k, 2),
            ];
            let parts: Vec<&StoredMatrix> = parts.iter().collect();
            let w: Vec<f64> = parts
                .iter()
                .flat_map(|p| p.to_f32())
                .map(f64::from)
                .collect();
            let n = rows.0 + rows.1;
            let what = format!("{kernel:?} m={m} n={n} k={k}");

            // Packed for each product, and packed once and kept (twice, to read it back).
            let kept = Packed::default();
            for packed in [None, Some(&kept), Some(&kept)] {
                let x = values(m * k, 3);
                let mut y = vec![f32::NAN; m * n];
                forward(kernel, &parts, packed, &x, m, &mut y);
                check(
                    &y,
                    &reference(&x, m, k, n, |t, j| w[j * k + t]),
                    k,
                    None,
                    &what,
                );

                let dy = values(m * n, 4);
                let init = values(m * k, 5);
                let mut dx = init.clone();
                backward_input(kernel, &parts, packed, &dy, m, &mut dx, true);
                let want = reference(&dy, m, n, k, |t, j| w[t * k + j]);
                check(&dx, &want, n, Some(&init), &what);
                backward_input(kernel, &parts, packed, &dy, m, &mut dx, false);
                check(&dx, &want, n, None, &what);
            }
        }
    }
}

/// Rounding to bf16: nearest, ties to even, overflow to infinity, NaN stays NaN.
#[test]
fn rounding_is_to_nearest_even() {
    let bf = |bits: u32| to_bf16(f32::from_bits(bits));
    assert_eq!(bf(0x3f80_0000), 0x3f80);
    assert_eq!(bf(0x3f80_7fff), 0x3f80);
    assert_eq!(bf(0x3f80_8000), 0x3f80, "tie to the even 0x3f80");
    assert_eq!(bf(0x3f81_8000), 0x3f82, "tie to the even 0x3f82");
    assert_eq!(bf(0x3f80_8001), 0x3f81);
    assert_eq!(bf(0xbf80_8001), 0xbf81);
    assert_eq!(bf(f32::MAX.to_bits()), 0x7f80);
    assert!(f32::from_bits(u32::from(to_bf16(f32::NAN)) << 16).is_nan());
    for x in values(1000, 7) {
        assert_eq!(to_bf16(x), half::bf16::from_f32(x).to_bits(), "{x}");
    }
}

/// The weight gradient `dyᵀ · x` of one part of a stacked output (a column block of `dy`), on odd
/// token counts and more tokens than one depth block, accumulated onto what the gradient held.
#[test]
fn weight_gradients_equal_the_sums_of_the_rounded_values() {
    for kernel in kernels() {
        for (m, width, cols, inp) in [(7, 9, 2..7, 5), (301, 60, 13..51, 70)] {
            let dy = values(m * width, 1);
            let x = values(m * inp, 2);
            let init = values(cols.len() * inp, 3);
            let mut dw = init.clone();
            weight_gradient(kernel, &dy, width, cols.clone(), &x, m, &mut dw);
            let dyt: Vec<f32> = (0..cols.len() * m)
                .map(|i| dy[(i % m) * width + cols.start + i / m])
                .collect();
            let want = reference(&dyt, cols.len(), m, inp, |t, j| round(x[t * inp + j]));
            check(&dw, &want, m, Some(&init), &format!("{kernel:?} m={m}"));
        }
    }
}
