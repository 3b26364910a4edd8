//! Evaluation: metrics that say how well a model fits or answers held-out data.

pub mod perplexity;
