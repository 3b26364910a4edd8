//! Training: Hone's own differentiable kernels, with forward and backward passes side by side;
//! the optimizer and schedules; the run config and checkpoint directories.

pub mod checkpoint;
pub mod config;
pub mod kernels;
pub mod optim;
pub mod schedule;
