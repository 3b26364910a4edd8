//! Training: Hone's own differentiable kernels, with forward and backward passes side by side.

pub mod kernels;
pub mod optim;
pub mod schedule;
