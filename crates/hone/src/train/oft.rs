//! OFT as PEFT defines it (`peft.OFTConfig`): each targeted layer's input is turned by a learned
//! block-diagonal rotation, `y = W (x · blockdiag(R_1, …, R_n)) + b`, each `R_i` the Cayley
//! transform of a skew-symmetric `Q_i` whose triangle trains ([`crate::kernels::rotation`]); Q
//! starts at 0 (R = I), so training starts from the base model exactly.
//!
//! COFT projects the triangles into a small ball in place at every forward (PEFT's
//! `_project_batch` under `no_grad`). Here the forward uses the projection and the backward
//! writes it back before accumulating the gradient, which leaves the optimizer the same values
//! PEFT's has: the projection is idempotent, so projecting again next forward changes nothing.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::linear::adapt_selected_parts;
use super::model::TrainModel;
use crate::adapters::{Adapter, OftConfig, OftWeights};
use crate::kernels::rotation::{self, Cayley};
use crate::model::norm::Tensor1;

/// One layer's rotation.
#[derive(Clone, Debug)]
pub struct Oft {
    /// `[rows, b(b−1)/2]`, one row per block or one shared by all.
    pub triangles: Tensor1,
    pub block_size: usize,
    /// Blocks across the layer's input.
    pub blocks: usize,
    pub cayley: Cayley,
    pub coft: Option<f64>,
}

/// What the forward keeps for the backward: the rotations it used.
#[derive(Debug)]
pub struct OftSaved {
    r: Vec<f32>,
}

impl Oft {
    /// PEFT's start (`init_weights: true`): every triangle 0.
    pub fn init(config: &OftConfig, in_features: usize) -> Oft {
        let (blocks, b) = config.geometry(in_features);
        let rows = if config.block_share { 1 } else { blocks };
        Oft {
            triangles: Tensor1::new(vec![0.0; rows * rotation::triangle_len(b)], true),
            block_size: b,
            blocks,
            cayley: config.cayley(),
            coft: config.coft_eps(),
        }
    }

    /// The rotation of a saved adapter, for a layer of `in_features` inputs.
    pub fn from_weights(w: &OftWeights, in_features: usize) -> std::result::Result<Oft, String> {
        w.fits(in_features)?;
        Ok(Oft {
            triangles: Tensor1::new(w.triangles.clone(), true),
            block_size: w.block_size,
            blocks: in_features / w.block_size,
            cayley: w.cayley,
            coft: w.coft,
        })
    }

    /// The rotation as PEFT saves it.
    pub fn weights(&self) -> OftWeights {
        OftWeights {
            triangles: self.triangles.value.clone(),
            block_size: self.block_size,
            cayley: self.cayley,
            coft: self.coft,
        }
    }

    /// The triangles the rotation is built from: COFT's projection of the stored ones.
    fn used_triangles(&self) -> std::borrow::Cow<'_, [f32]> {
        match self.coft {
            None => std::borrow::Cow::Borrowed(&self.triangles.value),
            Some(eps) => {
                let mut t = self.triangles.value.clone();
                rotation::project(&mut t, self.block_size, eps);
                std::borrow::Cow::Owned(t)
            }
        }
    }

    /// `x · blockdiag(R)` (`x` `[tokens, in]`), and what the backward needs.
    pub fn forward(&self, x: &[f32]) -> (Vec<f32>, OftSaved) {
        let r = rotation::rotations(&self.used_triangles(), self.block_size, self.cayley);
        let rotated = rotation::rotate(x, &r, self.block_size, self.blocks);
        (rotated, OftSaved { r })
    }

    /// From `dx_rotated`, the rotated input's gradient: adds `dx_rotated · blockdiag(R)ᵀ` to `dx`
    /// and each triangle's gradient (through its `R`) to the triangles'.
    pub fn backward(&mut self, x: &[f32], dx_rotated: &[f32], saved: &OftSaved, dx: &mut [f32]) {
        let b = self.block_size;
        let dr = rotation::rotate_backward(x, dx_rotated, &saved.r, b, self.blocks, dx);
        if self.coft.is_some() {
            self.triangles.value = self.used_triangles().into_owned();
        }
        let n = rotation::triangle_len(b);
        let Some(grad) = &mut self.triangles.grad else {
            return;
        };
        let triangles = self.triangles.value.par_chunks_exact(n);
        let blocks = grad
            .par_chunks_exact_mut(n)
            .zip(triangles)
            .zip(dr.par_chunks_exact(b * b));
        blocks.for_each(|((grad, t), g)| {
            let dt = rotation::rotation_backward(t, b, self.cayley, g);
            grad.iter_mut().zip(dt).for_each(|(g, d)| *g += d);
        });
    }
}

/// Gives every projection part of `model` that `config` targets its rotation: zero, or
/// `start`'s (an adapter to continue).
pub fn attach(model: &mut TrainModel, config: &OftConfig, start: Option<&Adapter>) -> Result<()> {
    adapt_selected_parts(
        model,
        |path| config.selects(path),
        |part, inp, _| {
            let oft = match start.map(|a| a.oft.get(&part.path)) {
                Some(Some(w)) => Oft::from_weights(w, inp).map_err(|problem| {
                    anyhow::anyhow!(
                        "adapter_name_or_path: {}'s rotation does not fit: {problem}",
                        part.path
                    )
                })?,
                Some(None) => bail!("adapter_name_or_path: no OFT rotation for {}", part.path),
                None => Oft::init(config, inp),
            };
            part.oft = Some(oft);
            Ok(())
        },
    )
}
