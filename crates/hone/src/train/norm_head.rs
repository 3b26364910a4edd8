//! Baichuan 2's normalized LM head (`NormHead`): the logits read each head row divided by its
//! length. When the head trains, its raw rows are the parameter (as checkpoints hold them): each
//! pass normalizes them, and the gradient goes back through the normalization, as the modeling
//! file's training mode does. A frozen head is normalized once, when the model is built.

use crate::model::weights::normalize_rows;

/// The rows of `w` `[rows, cols]` divided by their lengths (at least 1e-12, as `F.normalize`),
/// and the lengths.
pub fn forward(w: &[f32], cols: usize) -> (Vec<f32>, Vec<f32>) {
    let mut normalized = w.to_vec();
    let lengths = normalize_rows(&mut normalized, cols);
    (normalized, lengths)
}

/// Adds into `dw` the gradient with respect to the raw rows, given `dn`, the gradient with respect
/// to the normalized rows `n` of [`forward`]: `(dn − n (n · dn)) / ‖w‖` per row.
pub fn backward(n: &[f32], lengths: &[f32], dn: &[f32], dw: &mut [f32]) {
    let cols = n.len() / lengths.len().max(1);
    let rows = n
        .chunks_exact(cols)
        .zip(dn.chunks_exact(cols))
        .zip(dw.chunks_exact_mut(cols));
    for (((n, dn), dw), &length) in rows.zip(lengths) {
        let along: f32 = n.iter().zip(dn).map(|(a, b)| a * b).sum();
        for ((d, &n), &g) in dw.iter_mut().zip(n).zip(dn) {
            *d += (g - n * along) / length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss Σ c ∘ normalize(w) against central finite differences in f64.
    #[test]
    fn backward_matches_finite_differences() {
        let (rows, cols) = (3, 5);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let c: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.1)
            .collect();
        let loss = |w: &[f64]| -> f64 {
            w.chunks(cols)
                .zip(c.chunks(cols))
                .map(|(row, c)| {
                    let length = row.iter().map(|x| x * x).sum::<f64>().sqrt();
                    row.iter()
                        .zip(c)
                        .map(|(x, &c)| x / length * c as f64)
                        .sum::<f64>()
                })
                .sum()
        };
        let (n, lengths) = forward(&w, cols);
        let mut dw = vec![0.0; w.len()];
        backward(&n, &lengths, &c, &mut dw);
        let w64: Vec<f64> = w.iter().map(|&x| f64::from(x)).collect();
        for i in 0..w.len() {
            let (mut plus, mut minus) = (w64.clone(), w64.clone());
            plus[i] += 1e-6;
            minus[i] -= 1e-6;
            let numeric = (loss(&plus) - loss(&minus)) / 2e-6;
            assert!(
                (f64::from(dw[i]) - numeric).abs() < 1e-4,
                "element {i}: {} vs {numeric}",
                dw[i]
            );
        }
    }
}
