//! IA3's forward and backward for a projection's parts (the method, and PEFT's conventions, in
//! [`crate::adapters::ia3`]), beside LoRA's in `train::linear`.
//!
//! A part that scales its outputs computes `y_p = l ⊙ (x·W_pᵀ + b_p)`: backward, `dl = Σ_tokens
//! dy_p ⊙ (x·W_pᵀ + b_p)` and the rest of the projection's backward sees `l ⊙ dy_p`. A part that
//! scales its input (a feedforward module, alone in its projection) computes `y = (l ⊙ x)·Wᵀ + b`:
//! backward, with `g = dy·W` the gradient of the scaled input, `dl = Σ_tokens g ⊙ x` and
//! `dx = l ⊙ g`.

use anyhow::{bail, Result};

use super::linear::Part;
use crate::adapters::ia3::{Ia3Config, Ia3Matcher, SHARED_INPUT_SCALING};
use crate::adapters::Ia3Vector;
use crate::kernels::columns::{column_sums, columns, rows_times, scale_columns, Columns};
use crate::model::norm::Tensor1;

/// An IA3 run's adapter config with its module selection compiled.
pub struct Ia3Settings {
    pub config: Ia3Config,
    pub matcher: Ia3Matcher,
}

impl Ia3Settings {
    pub fn new(config: Ia3Config) -> Result<Ia3Settings> {
        config.validate()?;
        let matcher = config.matcher()?;
        Ok(Ia3Settings { config, matcher })
    }
}

/// One part's IA3 vector and its gradient.
#[derive(Clone, Debug)]
pub struct Ia3 {
    pub scale: Tensor1,
    /// Scales the part's input features, else its output features.
    pub feedforward: bool,
}

impl Ia3 {
    /// PEFT's init: ones (`init_ia3_weights`), which scale nothing.
    pub fn ones(len: usize, feedforward: bool) -> Ia3 {
        Ia3 {
            scale: Tensor1::new(vec![1.0; len], true),
            feedforward,
        }
    }

    pub fn from_vector(v: &Ia3Vector) -> Ia3 {
        Ia3 {
            scale: Tensor1::new(v.values.clone(), true),
            feedforward: v.feedforward,
        }
    }

    /// The vector as PEFT saves it.
    pub fn vector(&self) -> Ia3Vector {
        Ia3Vector {
            values: self.scale.value.clone(),
            feedforward: self.feedforward,
        }
    }
}

/// PEFT scales a feedforward module's own input; Hone's projections share one input product
/// between their parts, so only a part alone in its projection may scale its input.
pub(super) fn check_input_scaling(parts: &[Part]) -> Result<()> {
    let scales_input = |p: &Part| p.ia3.as_ref().is_some_and(|i| i.feedforward);
    if parts.len() > 1 {
        if let Some(p) = parts.iter().find(|p| scales_input(p)) {
            let others: Vec<&str> = parts.iter().map(|p| p.path.as_str()).collect();
            bail!(
                "{}: {SHARED_INPUT_SCALING} ({}); make it a target without input scaling",
                p.path,
                others.join(", ")
            );
        }
    }
    Ok(())
}

/// `l ⊙ x` when the projection's (one) part scales its input.
pub(super) fn scaled_input(parts: &[Part], x: &[f32]) -> Option<Vec<f32>> {
    let l = &parts[0].ia3.as_ref().filter(|i| i.feedforward)?.scale.value;
    Some(rows_times(x, l, 0.0))
}

/// Multiplies the output columns of every part that scales its outputs (after its bias); returns
/// each such part's outputs before scaling, for the backward.
pub(super) fn scale_outputs(parts: &[Part], y: &mut [f32], y_cols: usize) -> Vec<Option<Vec<f32>>> {
    let mut start = 0;
    let mut saved = Vec::with_capacity(parts.len());
    for part in parts {
        let width = part.out_features;
        saved.push(output_scale(part).map(|l| {
            let before = columns(y, y_cols, start, width);
            scale_columns(y, y_cols, start, l);
            before
        }));
        start += width;
    }
    saved
}

/// The output scaling's backward: each scaled part's `dl`, and `dy` with its columns times `l`
/// (None when no part scales its outputs).
pub(super) fn output_backward(
    parts: &mut [Part],
    dy: &[f32],
    dy_cols: usize,
    saved: &[Option<Vec<f32>>],
) -> Option<Vec<f32>> {
    saved.iter().any(Option::is_some).then(|| {
        let mut scaled = dy.to_vec();
        let mut start = 0;
        for (part, before) in parts.iter_mut().zip(saved) {
            let width = part.out_features;
            if let (Some(ia3), Some(before)) = (part.ia3.as_mut(), before) {
                let grad = ia3.scale.grad.as_mut().expect("IA3 vectors train");
                add_column_products(grad, &columns(dy, dy_cols, start, width), before);
                scale_columns(&mut scaled, dy_cols, start, &ia3.scale.value);
            }
            start += width;
        }
        scaled
    })
}

/// The input scaling's backward: `dx` holds the gradient of the scaled input; adds `Σ dx ⊙ x` to
/// `dl` and leaves `l ⊙ dx` in `dx`.
pub(super) fn input_backward(parts: &mut [Part], x: &[f32], dx: &mut [f32]) {
    let Some(ia3) = parts[0].ia3.as_mut().filter(|i| i.feedforward) else {
        return;
    };
    let grad = ia3.scale.grad.as_mut().expect("IA3 vectors train");
    add_column_products(grad, dx, x);
    let l = &ia3.scale.value;
    scale_columns(dx, l.len(), 0, l);
}

fn output_scale(part: &Part) -> Option<&[f32]> {
    let ia3 = part.ia3.as_ref().filter(|i| !i.feedforward)?;
    Some(&ia3.scale.value)
}

/// `grad[j] += Σ_rows a[row, j] · b[row, j]` for `a`, `b` as wide as `grad` (see
/// [`column_sums`]).
fn add_column_products(grad: &mut [f32], a: &[f32], b: &[f32]) {
    let whole = |data| Columns {
        data,
        stride: grad.len(),
        start: 0,
    };
    let sums = column_sums(grad.len(), whole(a), Some(whole(b)));
    for (g, s) in grad.iter_mut().zip(sums) {
        *g += s as f32;
    }
}
