//! The adapters whose update a layer builds each step from other factors, beside LoRA in a
//! projection's part: VeRA (vectors over shared frozen projections), LoHa (two low-rank products
//! multiplied elementwise) and LoKr (a Kronecker product).

use anyhow::{ensure, Result};

use super::loha::Loha;
use super::lokr::Lokr;
use super::model::TrainModel;
use super::vera::Vera;

/// A part's VeRA or LoHa adapter.
#[derive(Clone, Debug)]
pub enum Factored {
    Vera(Vera),
    Loha(Loha),
    Lokr(Lokr),
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
            Factored::Loha(l) => l.forward(x, y),
            Factored::Lokr(l) => l.forward(x, y),
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
            Factored::Loha(l) => l.backward(dy, x, saved, dx),
            Factored::Lokr(l) => l.backward(dy, x, saved, dx),
        }
    }
}

/// Gives every part of `model` that `selects` picks the adapter `make` builds for it from its
/// path, its `(in, out)` and its index among the model's parts (which tells modules' random
/// starts apart).
pub fn attach(
    model: &mut TrainModel,
    selects: impl Fn(&str) -> Result<bool>,
    mut make: impl FnMut(&str, (usize, usize), u64) -> Result<Factored>,
) -> Result<()> {
    let mut stream = 0u64;
    let mut any = false;
    for block in &mut model.blocks {
        for projection in block.linears_mut() {
            let inp = projection.in_features;
            for part in &mut projection.parts {
                stream += 1;
                if selects(&part.path)? {
                    part.factored = Some(make(&part.path, (inp, part.out_features), stream)?);
                    any = true;
                }
            }
        }
    }
    ensure!(
        any,
        "target_modules: selects none of the model's linear layers"
    );
    Ok(())
}
