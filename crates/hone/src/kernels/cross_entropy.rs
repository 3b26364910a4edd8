//! Cross-entropy fused with the LM head: `loss = CE(h Wᵀ, labels)` and its gradients in one pass
//! over chunks of labelled rows, so the `[tokens, vocab]` logits are never materialised.
//!
//! Only rows with a label are computed: they are gathered first, so prompt-masked positions cost
//! nothing. Each chunk of `chunk` rows computes its logits, their log-sum-exp and loss, and then
//! immediately turns the logits buffer into `dlogits = (softmax − onehot) · grad_scale` and feeds it
//! to the two backward products (`dh = dlogits W`, `dW += dlogitsᵀ h`), so the buffer is reused.
//! Labels follow Hugging Face: already shifted by the caller (label `i` is the target of position
//! `i`), `-100` = ignored; the loss matches `F.cross_entropy(h @ W.T, labels, ignore_index=-100)`.

use anyhow::{bail, ensure, Result};
use rayon::prelude::*;

use super::math::exp;
use super::matrix::MatrixRef;

/// Hugging Face's `ignore_index`: positions with this label carry neither loss nor gradient.
pub const IGNORE_INDEX: i64 = -100;

#[derive(Clone, Copy, Debug)]
pub struct CeShape {
    /// Positions: rows of `h` and entries of `labels`.
    pub n: usize,
    pub hidden: usize,
    pub vocab: usize,
    /// Labelled rows per chunk; the scratch logits take `chunk × vocab` floats.
    pub chunk: usize,
    /// Logits are soft-capped to `cap · tanh(z / cap)` (Gemma 2's `final_logit_softcapping`).
    pub softcap: Option<f32>,
}

/// Number of positions whose label is not [`IGNORE_INDEX`]: the divisor of a mean loss, e.g. for
/// `grad_scale = 1 / count` over a whole gradient-accumulation window.
pub fn count_labels<L: Copy + Into<i64>>(labels: &[L]) -> usize {
    labels.iter().filter(|&&l| l.into() != IGNORE_INDEX).count()
}

/// Summed loss over the labelled positions and their count (`loss_sum / n_labels` is the mean
/// loss), for evaluation: no gradient is computed.
pub fn loss<L: Copy + Into<i64>>(
    h: &[f32],
    w: MatrixRef,
    labels: &[L],
    shape: CeShape,
) -> Result<(f64, usize)> {
    let mut loss_sum = 0.0;
    let count = chunk_losses(h, w, labels, shape, |_, losses| {
        // Summed serially: a rayon reduction's order, hence its rounding, varies between runs.
        loss_sum += losses.iter().sum::<f64>();
    })?;
    Ok((loss_sum, count))
}

/// Each position's loss (0 where it has no label), for objectives built on sequence
/// log-probabilities (a sequence's is minus the sum of its positions' losses).
pub fn position_losses<L: Copy + Into<i64>>(
    h: &[f32],
    w: MatrixRef,
    labels: &[L],
    shape: CeShape,
) -> Result<Vec<f64>> {
    let mut out = vec![0.0; shape.n];
    chunk_losses(h, w, labels, shape, |part, losses| {
        for (&(row, _), &loss) in part.iter().zip(losses) {
            out[row] = loss;
        }
    })?;
    Ok(out)
}

/// Computes the labelled rows' losses a chunk at a time (no gradient), handing each chunk's
/// `(row, target)` pairs and losses to `take`; returns the number of labelled rows.
fn chunk_losses<L: Copy + Into<i64>>(
    h: &[f32],
    w: MatrixRef,
    labels: &[L],
    shape: CeShape,
    mut take: impl FnMut(&[(usize, usize)], &[f64]),
) -> Result<usize> {
    let rows = labelled_rows(h, w, labels, shape)?;
    let mut scratch = Scratch::new(shape, rows.len());
    for part in rows.chunks(shape.chunk) {
        let (_, logits, losses) = scratch.logits(h, w, part, shape);
        logits
            .par_chunks(shape.vocab)
            .zip(losses.par_iter_mut())
            .zip(part.par_iter())
            .for_each(|((row, loss), &(_, target))| *loss = row_loss(row, target));
        take(part, losses);
    }
    Ok(rows.len())
}

/// Forward and backward in one call. Returns the summed loss over the labelled positions and their
/// count. `dh` (`[n, hidden]`) is written: `grad_scale · ∂loss_sum/∂h`, zero on ignored rows.
/// `dw` (`[vocab, hidden]`), when the LM head is trainable, is accumulated (`+=`) with
/// `grad_scale · ∂loss_sum/∂W`. `grad_scale = 1 / n_labels` gives the gradient of the mean loss.
pub fn forward_backward<L: Copy + Into<i64>>(
    h: &[f32],
    w: MatrixRef,
    labels: &[L],
    shape: CeShape,
    grad_scale: f32,
    dh: &mut [f32],
    dw: Option<&mut [f32]>,
) -> Result<(f64, usize)> {
    fused(h, w, labels, shape, |_| grad_scale, dh, dw, |_, _| {})
}

/// Each position's loss (0 where it has no label) and, in `dh`, the gradient of each position's
/// own loss with respect to its input row (factor 1): one pass where an objective built on the
/// losses then scales each row of `dh` by its factor — valid when the head itself does not train
/// (a frozen head's weight gradient would need the factors before the pass).
pub fn position_losses_and_input_grads<L: Copy + Into<i64>>(
    h: &[f32],
    w: MatrixRef,
    labels: &[L],
    shape: CeShape,
    dh: &mut [f32],
) -> Result<Vec<f64>> {
    let mut out = vec![0.0; shape.n];
    fused(
        h,
        w,
        labels,
        shape,
        |_| 1.0,
        dh,
        None,
        |part, losses| {
            for (&(row, _), &loss) in part.iter().zip(losses) {
                out[row] = loss;
            }
        },
    )?;
    Ok(out)
}

/// [`forward_backward`] with a gradient factor per position: `dh` and `dw` get
/// `∂(Σᵢ weights[i] · lossᵢ)/∂·` — the gradient of any objective that is a function of the
/// positions' losses, given its derivative with respect to each (e.g. DPO's, through sequence
/// log-probabilities). The returned loss is the unweighted sum.
pub fn forward_backward_weighted<L: Copy + Into<i64>>(
    h: &[f32],
    w: MatrixRef,
    labels: &[L],
    shape: CeShape,
    weights: &[f32],
    dh: &mut [f32],
    dw: Option<&mut [f32]>,
) -> Result<(f64, usize)> {
    ensure!(
        weights.len() == shape.n,
        "cross-entropy: {} weights for {} positions",
        weights.len(),
        shape.n
    );
    fused(h, w, labels, shape, |row| weights[row], dh, dw, |_, _| {})
}

/// The fused forward and backward, `scale(position)` the gradient factor of each position;
/// `take` hears each chunk's `(row, target)` pairs and losses.
#[allow(clippy::too_many_arguments)]
fn fused<L: Copy + Into<i64>>(
    h: &[f32],
    w: MatrixRef,
    labels: &[L],
    shape: CeShape,
    scale: impl Fn(usize) -> f32 + Sync,
    dh: &mut [f32],
    mut dw: Option<&mut [f32]>,
    mut take: impl FnMut(&[(usize, usize)], &[f64]),
) -> Result<(f64, usize)> {
    let CeShape { hidden, vocab, .. } = shape;
    let rows = labelled_rows(h, w, labels, shape)?;
    ensure!(
        dh.len() == shape.n * hidden,
        "cross-entropy: dh has {} elements, expected {} × {hidden}",
        dh.len(),
        shape.n
    );
    if let Some(dw) = dw.as_deref() {
        ensure!(
            dw.len() == vocab * hidden,
            "cross-entropy: dW has {} elements, expected {vocab} × {hidden}",
            dw.len()
        );
    }
    dh.fill(0.0);
    let mut scratch = Scratch::new(shape, rows.len());
    let mut dh_chunk = vec![0.0; scratch.capacity * hidden];
    let mut loss_sum = 0.0;
    for part in rows.chunks(shape.chunk) {
        let c = part.len();
        let (_, dlogits, losses) = scratch.logits(h, w, part, shape);
        dlogits
            .par_chunks_mut(vocab)
            .zip(losses.par_iter_mut())
            .zip(part.par_iter())
            .for_each(|((row, loss), &(position, target))| {
                *loss = row_loss_into_grad(row, target, scale(position))
            });
        loss_sum += losses.iter().sum::<f64>();
        take(part, losses);
        if let Some(cap) = shape.softcap {
            // Back through the cap: d z = d capped · (1 − (capped / cap)²), from the capped
            // logits kept before the softmax took their place.
            let capped = &scratch.capped[..c * vocab];
            let dlogits = &mut scratch.logits[..c * vocab];
            dlogits
                .par_chunks_mut(vocab)
                .zip(capped.par_chunks(vocab))
                .for_each(|(d, z)| {
                    for (d, &z) in d.iter_mut().zip(z) {
                        *d *= 1.0 - (z / cap) * (z / cap);
                    }
                });
        }
        let (hc, dlogits) = (&scratch.hc[..c * hidden], &scratch.logits[..c * vocab]);

        let dh_chunk = &mut dh_chunk[..c * hidden];
        w.backward_input(dlogits, dh_chunk, false);
        for (&(row, _), src) in part.iter().zip(dh_chunk.chunks_exact(hidden)) {
            dh[row * hidden..(row + 1) * hidden].copy_from_slice(src);
        }
        if let Some(dw) = dw.as_deref_mut() {
            w.weight_gradient(dlogits, vocab, 0..vocab, hc, dw);
        }
    }
    Ok((loss_sum, rows.len()))
}

/// Checks the shapes and labels; returns `(row, target)` for every labelled row.
fn labelled_rows<L: Copy + Into<i64>>(
    h: &[f32],
    w: MatrixRef,
    labels: &[L],
    shape: CeShape,
) -> Result<Vec<(usize, usize)>> {
    let CeShape {
        n,
        hidden,
        vocab,
        chunk,
        ..
    } = shape;
    ensure!(
        hidden > 0 && vocab > 0 && chunk > 0,
        "cross-entropy: hidden ({hidden}), vocab ({vocab}) and chunk ({chunk}) must be positive"
    );
    ensure!(
        h.len() == n * hidden,
        "cross-entropy: h has {} elements, expected {n} × {hidden}",
        h.len()
    );
    ensure!(
        w.rows() == vocab && w.cols() == hidden,
        "cross-entropy: LM-head weight is [{}, {}], expected [{vocab}, {hidden}]",
        w.rows(),
        w.cols()
    );
    ensure!(
        labels.len() == n,
        "cross-entropy: {} labels for {n} positions",
        labels.len()
    );
    let mut rows = Vec::new();
    for (i, &label) in labels.iter().enumerate() {
        match label.into() {
            IGNORE_INDEX => {}
            t if (0..vocab as i64).contains(&t) => rows.push((i, t as usize)),
            t => bail!(
                "cross-entropy: label {t} at position {i} is outside the vocabulary 0..{vocab} \
                 and is not the ignore index {IGNORE_INDEX}"
            ),
        }
    }
    Ok(rows)
}

/// Per-chunk buffers, sized once for the largest chunk.
struct Scratch {
    capacity: usize,
    hc: Vec<f32>,
    logits: Vec<f32>,
    /// The capped logits, kept for the backward when the logits are soft-capped.
    capped: Vec<f32>,
    losses: Vec<f64>,
}

impl Scratch {
    fn new(shape: CeShape, labelled: usize) -> Self {
        let capacity = shape.chunk.min(labelled);
        Scratch {
            capacity,
            hc: vec![0.0; capacity * shape.hidden],
            logits: vec![0.0; capacity * shape.vocab],
            capped: match shape.softcap {
                Some(_) => vec![0.0; capacity * shape.vocab],
                None => Vec::new(),
            },
            losses: vec![0.0; capacity],
        }
    }

    /// Gathers the chunk's rows of `h` and computes their logits `hc Wᵀ`; returns the gathered
    /// rows, the logits and the per-row loss slots, all trimmed to the chunk.
    fn logits(
        &mut self,
        h: &[f32],
        w: MatrixRef,
        part: &[(usize, usize)],
        shape: CeShape,
    ) -> (&[f32], &mut [f32], &mut [f64]) {
        let CeShape { hidden, vocab, .. } = shape;
        let c = part.len();
        let hc = &mut self.hc[..c * hidden];
        for (&(row, _), dst) in part.iter().zip(hc.chunks_exact_mut(hidden)) {
            dst.copy_from_slice(&h[row * hidden..(row + 1) * hidden]);
        }
        let logits = &mut self.logits[..c * vocab];
        w.forward(hc, logits);
        if let Some(cap) = shape.softcap {
            softcap(logits, cap);
            self.capped[..c * vocab].copy_from_slice(logits);
        }
        (hc, logits, &mut self.losses[..c])
    }
}

/// `z ← cap · tanh(z / cap)` over logits.
pub fn softcap(logits: &mut [f32], cap: f32) {
    logits
        .par_iter_mut()
        .for_each(|z| *z = cap * (*z / cap).tanh());
}

/// `logsumexp(row) − row[target]`. The exponentials are summed in f64: a vocabulary row has tens of
/// thousands of terms, beyond what an f32 sum keeps to 1e-4.
pub fn row_loss(row: &[f32], target: usize) -> f64 {
    let max = row_max(row);
    let mut sum = Lanes::default();
    for chunk in row.chunks(LANES) {
        sum.add(chunk.iter().map(|&x| exp(x - max)));
    }
    f64::from(max) + sum.total().ln() - f64::from(row[target])
}

avx512_or_portable! {
    /// [`row_loss`], turning the logits in place into `(softmax − onehot(target)) · grad_scale`.
    fn row_loss_into_grad(row: &mut [f32], target: usize, grad_scale: f32) -> f64 = row_loss_into_grad_portable;
}

#[inline(always)]
fn row_loss_into_grad_portable(row: &mut [f32], target: usize, grad_scale: f32) -> f64 {
    let max = row_max(row);
    let target_logit = row[target];
    let mut sum = Lanes::default();
    for chunk in row.chunks_mut(LANES) {
        chunk.iter_mut().for_each(|x| *x = exp(*x - max));
        sum.add(chunk.iter().copied());
    }
    let sum = sum.total();
    let scale = (f64::from(grad_scale) / sum) as f32;
    for x in row.iter_mut() {
        *x *= scale;
    }
    row[target] -= grad_scale;
    f64::from(max) + sum.ln() - f64::from(target_logit)
}

const LANES: usize = 16;

/// A sum kept in `LANES` f32 partial sums, so the exponentials of a row vectorize, combined in
/// f64 at the end: each lane adds at most vocab / 16 terms in (0, 1].
#[derive(Default)]
struct Lanes([f32; LANES]);

impl Lanes {
    fn add(&mut self, values: impl Iterator<Item = f32>) {
        self.0
            .iter_mut()
            .zip(values)
            .for_each(|(lane, v)| *lane += v);
    }

    fn total(&self) -> f64 {
        self.0.iter().map(|&l| f64::from(l)).sum()
    }
}

fn row_max(row: &[f32]) -> f32 {
    row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::matrix::Matrix;

    fn f32_head(values: &[f32], hidden: usize) -> Matrix {
        Matrix::F32 {
            values: values.to_vec(),
            cols: hidden,
        }
    }

    fn pseudo_random(len: usize, seed: u32, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * scale
            })
            .collect()
    }

    /// Central differences of `loss` against the analytic dh and dW, on a tiny shape, with and
    /// without soft-capped logits (a cap of 1.5 bends logits of this size well into the tanh).
    #[test]
    fn matches_finite_differences() {
        for softcap in [None, Some(1.5)] {
            matches_finite_differences_with(softcap);
        }
    }

    fn matches_finite_differences_with(softcap: Option<f32>) {
        let shape = CeShape {
            n: 5,
            hidden: 4,
            vocab: 7,
            chunk: 2,
            softcap,
        };
        let h = pseudo_random(20, 1, 4.0);
        let w = pseudo_random(28, 2, 2.0);
        let head = f32_head(&w, 4);
        let labels: [i32; 5] = [3, -100, 0, 6, 2];
        let n_labels = count_labels(&labels);
        let scale = 1.0 / n_labels as f32;
        let mut dh = vec![f32::NAN; 20];
        let mut dw = vec![0.0; 28];
        let (loss_sum, n) = forward_backward(
            &h,
            head.as_ref(),
            &labels,
            shape,
            scale,
            &mut dh,
            Some(&mut dw),
        )
        .unwrap();
        assert_eq!((n, n_labels), (4, 4));
        assert_eq!(
            loss(&h, head.as_ref(), &labels, shape).unwrap(),
            (loss_sum, 4)
        );
        assert!(dh[4..8].iter().all(|&x| x == 0.0), "ignored row has dh 0");

        let mean = |h: &[f32], w: &[f32]| {
            loss(h, f32_head(w, 4).as_ref(), &labels, shape).unwrap().0 / n as f64
        };
        let eps = 1e-2f32;
        let nudged = |x: &[f32], i: usize, d: f32| {
            let mut x = x.to_vec();
            x[i] += d;
            x
        };
        let mut worst = 0.0f64;
        for (i, &analytic) in dh.iter().enumerate() {
            let numeric = (mean(&nudged(&h, i, eps), &w) - mean(&nudged(&h, i, -eps), &w))
                / (2.0 * f64::from(eps));
            worst = worst.max((numeric - f64::from(analytic)).abs());
        }
        for (i, &analytic) in dw.iter().enumerate() {
            let numeric = (mean(&h, &nudged(&w, i, eps)) - mean(&h, &nudged(&w, i, -eps)))
                / (2.0 * f64::from(eps));
            worst = worst.max((numeric - f64::from(analytic)).abs());
        }
        assert!(worst < 1e-3, "finite differences differ by {worst:.2e}");
    }

    #[test]
    fn all_ignored_costs_nothing_and_leaves_dw_alone() {
        let shape = CeShape {
            n: 3,
            hidden: 2,
            vocab: 4,
            chunk: 8,
            softcap: None,
        };
        let (h, w) = (
            pseudo_random(6, 3, 1.0),
            f32_head(&pseudo_random(8, 4, 1.0), 2),
        );
        let mut dh = vec![1.0; 6];
        let mut dw = vec![0.5; 8];
        let out = forward_backward(
            &h,
            w.as_ref(),
            &[-100i64; 3],
            shape,
            1.0,
            &mut dh,
            Some(&mut dw),
        )
        .unwrap();
        assert_eq!(out, (0.0, 0));
        assert!(dh.iter().all(|&x| x == 0.0));
        assert!(dw.iter().all(|&x| x == 0.5));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let shape = CeShape {
            n: 2,
            hidden: 2,
            vocab: 3,
            chunk: 1,
            softcap: None,
        };
        let (h, w) = (vec![0.0; 4], f32_head(&[0.0; 6], 2));
        let err = loss(&h, w.as_ref(), &[0i64, 3], shape)
            .unwrap_err()
            .to_string();
        assert!(err.contains("label 3 at position 1"), "{err}");
        let err = loss(&h, w.as_ref(), &[-1i64, 0], shape)
            .unwrap_err()
            .to_string();
        assert!(err.contains("label -1 at position 0"), "{err}");
        let err = loss(&h, f32_head(&[0.0; 4], 2).as_ref(), &[0i64, 0], shape)
            .unwrap_err()
            .to_string();
        assert!(err.contains("LM-head weight is [2, 2]"), "{err}");
        let mut dh = vec![0.0; 3];
        let err = forward_backward(&h, w.as_ref(), &[0i64, 0], shape, 1.0, &mut dh, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dh has 3 elements"), "{err}");
        let zero_chunk = CeShape { chunk: 0, ..shape };
        assert!(loss(&h, w.as_ref(), &[0i64, 0], zero_chunk).is_err());
    }

    /// A head kept quantized gives the loss and dh of its dequantized f32 values.
    #[test]
    fn a_stored_head_is_its_dequantized_values() {
        use crate::kernels::stored::{StoredMatrix, WeightBytes};
        use crate::quant::{self, GgmlType};
        let shape = CeShape {
            n: 6,
            hidden: 64,
            vocab: 40,
            chunk: 4,
            softcap: None,
        };
        let h = pseudo_random(6 * 64, 5, 2.0);
        let bytes = quant::quantize(GgmlType::Q8_0, &pseudo_random(40 * 64, 6, 1.0)).unwrap();
        let m = StoredMatrix::new(
            GgmlType::Q8_0,
            40,
            64,
            WeightBytes::Owned(std::sync::Arc::new(bytes)),
        )
        .unwrap();
        let dense = f32_head(&m.to_f32(), 64);
        let stored = Matrix::Stored(vec![m]);
        let labels = [1i64, 39, -100, 0, 7, 7];
        let (mut dh_s, mut dh_f) = (vec![0.0; 6 * 64], vec![0.0; 6 * 64]);
        let (ls, _) =
            forward_backward(&h, stored.as_ref(), &labels, shape, 0.2, &mut dh_s, None).unwrap();
        let (lf, _) =
            forward_backward(&h, dense.as_ref(), &labels, shape, 0.2, &mut dh_f, None).unwrap();
        assert!((ls - lf).abs() < 1e-5 * lf.abs(), "{ls} vs {lf}");
        for (a, b) in dh_s.iter().zip(&dh_f) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
