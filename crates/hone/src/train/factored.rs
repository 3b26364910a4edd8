//! The adapters whose update a layer builds each step from other factors, beside LoRA in a
//! projection's part: VeRA (vectors over shared frozen projections), LoHa (two low-rank products
//! multiplied elementwise), LoKr (a Kronecker product) and AdaLoRA (an SVD-shaped product whose
//! ranks are allocated as it trains).

use anyhow::{bail, ensure, Result};

use super::adalora::Adalora;
use super::linear::{adapt_selected_parts, lora_backward, lora_forward};
use super::loha::Loha;
use super::lokr::Lokr;
use super::lora::Lora;
use super::model::TrainModel;
use super::vera::Vera;
use crate::kernels::matmul::MatRef;

/// A part's VeRA, LoHa, LoKr or AdaLoRA adapter.
#[derive(Clone, Debug)]
pub enum Factored {
    Vera(Vera),
    Loha(Loha),
    Lokr(Lokr),
    Adalora(Adalora),
}

impl Factored {
    /// Adds the update's output to `y`'s columns `col..col + out` (of `y_cols`); returns what
    /// the backward needs.
    pub fn forward(
        &self,
        x: &[f32],
        y: (&mut [f32], usize, usize),
        dropout_seed: Option<u64>,
    ) -> Vec<f32> {
        match self {
            Factored::Vera(v) => v.forward(x, y, dropout_seed),
            Factored::Loha(l) => through_lora(&l.as_lora(), x, y, None),
            Factored::Lokr(l) => through_lora(&l.as_lora(), x, y, None),
            Factored::Adalora(a) => through_lora(&a.as_lora(), x, y, dropout_seed),
        }
    }

    /// Accumulates the factors' gradients from `dy`'s columns and adds the input's to `dx`.
    pub fn backward(
        &mut self,
        dy: (&[f32], usize, usize),
        x: &[f32],
        saved: &[f32],
        seed: u64,
        dx: &mut [f32],
    ) {
        match self {
            Factored::Vera(v) => v.backward(dy, x, saved, seed, dx),
            Factored::Loha(l) => {
                let lora = back_through_lora(l.as_lora(), dy, x, saved, (seed, dx));
                l.chain(&lora.grad_a, &lora.grad_b);
            }
            Factored::Lokr(l) => {
                let lora = back_through_lora(l.as_lora(), dy, x, saved, (seed, dx));
                l.chain(&lora.grad_a, &lora.grad_b);
            }
            Factored::Adalora(a) => {
                let lora = back_through_lora(a.as_lora(), dy, x, saved, (seed, dx));
                a.chain(&lora.grad_a, &lora.grad_b);
            }
        }
    }
}

/// The forward of an update built as `lora` from its factors each step (LoHa, LoKr, AdaLoRA),
/// added to `y`'s columns `col..col + out` (dropout, when `lora` has it, drawn from
/// `dropout_seed`); returns what the backward needs.
fn through_lora(
    lora: &Lora,
    x: &[f32],
    (y, y_cols, col): (&mut [f32], usize, usize),
    dropout_seed: Option<u64>,
) -> Vec<f32> {
    lora_forward(lora, x, y, y_cols, col, dropout_seed)
}

/// The backward through `lora`, the forward's update (its dropout masks drawn again from
/// `seed`): adds the input's gradient to `dx` and returns `lora` with its A and B gradients,
/// which the method chains to its factors.
fn back_through_lora(
    mut lora: Lora,
    (dy, dy_cols, col): (&[f32], usize, usize),
    x: &[f32],
    xa: &[f32],
    (seed, dx): (u64, &mut [f32]),
) -> Lora {
    let n = x.len() / lora.in_features;
    let g = MatRef::strided(&dy[col..], n, lora.out_features, dy_cols);
    lora_backward(&mut lora, g, x, xa, seed, dx);
    lora
}

/// Gives every part of `model` that `selects` picks the adapter `make` builds for it from its
/// path, its `(in, out)` and its index among the model's parts (which tells modules' random
/// starts apart).
pub fn attach(
    model: &mut TrainModel,
    selects: impl Fn(&str) -> Result<bool>,
    mut make: impl FnMut(&str, (usize, usize), u64) -> Result<Factored>,
) -> Result<()> {
    adapt_selected_parts(model, selects, |part, inp, stream| {
        part.factored = Some(make(&part.path, (inp, part.out_features), stream)?);
        Ok(())
    })
}

/// The saved tensors of the module at `path` (`saved`, its `[out, in]` by `dims`) when the run
/// continues an adapter (`continuing`), checked to fit the `(in, out)` layer; None when the run
/// starts afresh. `what` names them in errors (`LoHa factors`).
pub fn continued<'w, W>(
    (path, (inp, out)): (&str, (usize, usize)),
    (continuing, saved): (bool, Option<&'w W>),
    dims: impl Fn(&W) -> (usize, usize),
    what: &str,
) -> Result<Option<&'w W>> {
    match saved {
        Some(w) => {
            let (o, i) = dims(w);
            ensure!(
                (o, i) == (out, inp),
                "adapter_name_or_path: {path}'s {what} are for a [{o}, {i}] layer, not [{out}, {inp}]"
            );
            Ok(Some(w))
        }
        None if continuing => bail!("adapter_name_or_path: no {what} for {path}"),
        None => Ok(None),
    }
}
