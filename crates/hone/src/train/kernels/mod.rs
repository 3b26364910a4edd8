//! Fused CPU kernels for training, each forward beside its backward.
