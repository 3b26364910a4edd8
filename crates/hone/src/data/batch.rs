//! A training batch: rows padded to one length, labels aligned with the ids (HF convention).

/// Rows padded to the longest in the batch: input pad id, label -100, position ids continuing,
/// and segment ids only when a row is packed.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub position_ids: Vec<u32>,
    pub segment_ids: Option<Vec<u32>>,
}
