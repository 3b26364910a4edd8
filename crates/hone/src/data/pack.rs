//! Training rows and batches: an example becomes a [`Row`] on its own or packed with others into
//! at most `cutoff_len` tokens, and rows are padded into a [`Batch`].
//!
//! A packed row keeps its examples apart the way transformers' `DataCollatorWithFlattening` does:
//! `position_ids` restart at 0 for each example, `segment_ids` number the examples so attention
//! never crosses them, and each example's first label is [`IGNORE_INDEX`] (nothing of its own
//! precedes it, so it would otherwise be learnt from the end of the previous example; for an
//! example alone that label is never used, as the loss shifts).

use std::cmp::Reverse;
use std::collections::BTreeSet;

use super::Example;
use crate::kernels::cross_entropy::IGNORE_INDEX;

/// One training row: a single example, or several packed.
///
/// A run holds every row for its whole length, so a row keeps only what it cannot rebuild: the
/// token ids, one bit a token for whether it is learnt (its label is then its id, else
/// [`IGNORE_INDEX`] — an [`Example`]'s labels are always one or the other), and each example's
/// length; labels, positions and segment ids are spelled out when a batch is made. Kept per token
/// as i64 labels and u32 positions and segments, they took 16 of 20 bytes a token: over a GB for a
/// dataset of 10⁶ rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub input_ids: Vec<u32>,
    /// Bit `i % 64` of word `i / 64`: whether token `i` is learnt.
    learned: Vec<u64>,
    /// The length of each example in the row, in order (one for a single example).
    lengths: Vec<u32>,
}

impl Row {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Bytes the row's vectors hold on the heap (as allocated, not just as filled).
    pub fn heap_bytes(&self) -> usize {
        4 * self.input_ids.capacity() + 8 * self.learned.capacity() + 4 * self.lengths.capacity()
    }

    /// Whether the row holds more than one example.
    pub fn is_packed(&self) -> bool {
        self.lengths.len() > 1
    }

    /// Each token's label: its id where it is learnt, else [`IGNORE_INDEX`].
    pub fn labels(&self) -> impl Iterator<Item = i64> + '_ {
        (0..self.len()).map(|i| match self.is_learned(i) {
            true => i64::from(self.input_ids[i]),
            false => IGNORE_INDEX,
        })
    }

    /// Each token's position: from 0 in each example.
    pub fn position_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.lengths.iter().flat_map(|&len| 0..len)
    }

    /// Each token's example: 0, 1, 2, ... for the examples packed in the row; all 0 for one.
    pub fn segment_ids(&self) -> impl Iterator<Item = u32> + '_ {
        (0u32..)
            .zip(&self.lengths)
            .flat_map(|(segment, &len)| std::iter::repeat_n(segment, len as usize))
    }

    /// The number of examples in the row (the first segment id a following row may use).
    fn segments(&self) -> u32 {
        self.lengths.len() as u32
    }

    fn is_learned(&self, i: usize) -> bool {
        self.learned[i / 64] >> (i % 64) & 1 == 1
    }

    /// Appends `len` tokens, learnt where `learned(k)` says.
    fn extend(&mut self, ids: &[u32], learned: impl Fn(usize) -> bool) {
        let start = self.len();
        self.input_ids.extend_from_slice(ids);
        self.learned.resize(self.len().div_ceil(64), 0);
        for k in (0..ids.len()).filter(|&k| learned(k)) {
            let i = start + k;
            self.learned[i / 64] |= 1 << (i % 64);
        }
    }

    /// Appends an example; its first label is not learnt (see the module comment).
    fn push(&mut self, example: Example) {
        let len = example.input_ids.len();
        if len == 0 {
            return;
        }
        for (&id, &label) in example.input_ids.iter().zip(&example.labels) {
            assert!(
                label == IGNORE_INDEX || label == i64::from(id),
                "a label is its token's id or IGNORE_INDEX, not {label} for token {id}"
            );
        }
        self.extend(&example.input_ids, |k| {
            k > 0 && example.labels[k] != IGNORE_INDEX
        });
        self.lengths.push(len as u32);
    }

    /// Appends the examples of another row, in order.
    fn append(&mut self, other: Row) {
        if self.is_empty() {
            *self = other;
            return;
        }
        self.extend(&other.input_ids, |k| other.is_learned(k));
        self.lengths.extend(other.lengths);
    }
}

impl From<Example> for Row {
    fn from(example: Example) -> Row {
        let mut row = Row::default();
        row.push(example);
        row
    }
}

/// Packs rows (of an example each, as a rule) into rows of at most `cutoff_len` tokens: longest
/// first, each into the row it fills best (the one with the least room that still fits it, the
/// earliest on ties), else a new row. Deterministic for a given input order. A row longer than
/// `cutoff_len` stays on its own.
pub fn pack(rows: Vec<Row>, cutoff_len: usize) -> Vec<Row> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| Reverse(rows[i].len()));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    // (room left, bin): the bin with the least room that fits is the first entry >= (len, 0).
    let mut room: BTreeSet<(usize, usize)> = BTreeSet::new();
    for i in order {
        let len = rows[i].len();
        match room.range((len, 0)..).next().copied() {
            Some((free, bin)) => {
                room.remove(&(free, bin));
                room.insert((free - len, bin));
                bins[bin].push(i);
            }
            None => {
                room.insert((cutoff_len.saturating_sub(len), bins.len()));
                bins.push(vec![i]);
            }
        }
    }
    let mut rows: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
    bins.into_iter()
        .map(|bin| {
            let mut packed = Row::default();
            for i in bin {
                packed.append(rows[i].take().expect("each row is in one bin"));
            }
            packed
        })
        .collect()
}

/// Rows padded to the longest, flattened row-major (`batch × seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
    pub position_ids: Vec<u32>,
    /// Present only when a row is packed; padding then has a segment of its own.
    pub segment_ids: Option<Vec<u32>>,
}

/// Pads rows to the longest: input `pad_id`, label [`IGNORE_INDEX`], position ids continuing from
/// the row's last, and (when any row is packed) segment ids one past the row's last.
pub fn collate(rows: &[&Row], pad_id: u32) -> Batch {
    let seq = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let packed = rows.iter().any(|r| r.is_packed());
    let cells = rows.len() * seq;
    let mut batch = Batch {
        batch: rows.len(),
        seq,
        input_ids: Vec::with_capacity(cells),
        labels: Vec::with_capacity(cells),
        position_ids: Vec::with_capacity(cells),
        segment_ids: packed.then(|| Vec::with_capacity(cells)),
    };
    for row in rows {
        let pad = seq - row.len();
        batch.input_ids.extend(&row.input_ids);
        batch.input_ids.extend(std::iter::repeat_n(pad_id, pad));
        batch.labels.extend(row.labels());
        batch.labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        let next_position = row.lengths.last().copied().unwrap_or(0);
        batch.position_ids.extend(row.position_ids());
        batch
            .position_ids
            .extend(next_position..next_position + pad as u32);
        if let Some(segments) = &mut batch.segment_ids {
            segments.extend(row.segment_ids());
            segments.extend(std::iter::repeat_n(row.segments(), pad));
        }
    }
    batch
}

/// The rows laid end to end as one row, without padding (transformers'
/// `DataCollatorWithFlattening`, LLaMA-Factory's padding-free batches): the same tokens, labels and
/// positions as [`collate`], and every example its own segment so attention never crosses them.
/// The loss and its gradient are the padded batch's — each row's first label is ignored already,
/// so no token is learnt from the row before — but no work is spent on padding.
pub fn flatten(rows: &[&Row]) -> Batch {
    let seq = rows.iter().map(|r| r.len()).sum();
    let mut batch = Batch {
        batch: 1,
        seq,
        input_ids: Vec::with_capacity(seq),
        labels: Vec::with_capacity(seq),
        position_ids: Vec::with_capacity(seq),
        segment_ids: Some(Vec::with_capacity(seq)),
    };
    let mut first_segment = 0;
    for row in rows {
        batch.input_ids.extend(&row.input_ids);
        batch.labels.extend(row.labels());
        batch.position_ids.extend(row.position_ids());
        if let Some(segments) = &mut batch.segment_ids {
            segments.extend(row.segment_ids().map(|s| first_segment + s));
        }
        first_segment += row.segments();
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: i64 = IGNORE_INDEX;

    /// An example of `len` tokens with ids `base, base+1, ...`, labelled from position `prompt`.
    fn example(base: u32, len: usize, prompt: usize) -> Example {
        let input_ids: Vec<u32> = (base..base + len as u32).collect();
        let labels = input_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| if i < prompt { X } else { i64::from(id) })
            .collect();
        Example { input_ids, labels }
    }

    fn single(examples: Vec<Example>) -> Vec<Row> {
        examples.into_iter().map(Row::from).collect()
    }

    #[test]
    fn a_single_example_row() {
        let row = Row::from(example(10, 4, 0));
        assert_eq!(row.input_ids, vec![10, 11, 12, 13]);
        assert_eq!(row.labels().collect::<Vec<_>>(), vec![X, 11, 12, 13]);
        assert_eq!(row.position_ids().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(row.segment_ids().collect::<Vec<_>>(), vec![0, 0, 0, 0]);
        assert!(!row.is_packed());
    }

    /// Learnt bits cross their 64-token words where rows are appended.
    #[test]
    fn labels_survive_packing_across_words() {
        let examples = vec![example(0, 70, 3), example(1000, 61, 60)];
        let packed = pack(single(examples.clone()), 200).remove(0);
        let mut want: Vec<i64> = Vec::new();
        for e in [&examples[0], &examples[1]] {
            want.push(X);
            want.extend(&e.labels[1..]);
        }
        assert_eq!(packed.labels().collect::<Vec<_>>(), want);
    }

    #[test]
    fn packing_fills_rows_best_fit_longest_first() {
        let lens = [5, 3, 4, 2, 6];
        let examples: Vec<Example> = lens
            .iter()
            .enumerate()
            .map(|(i, &len)| example(100 * i as u32, len, 1))
            .collect();
        let rows = pack(single(examples.clone()), 8);
        // 6 opens row 0 (room 2), 5 row 1 (room 3), 4 row 2 (room 4); 3 fits row 1 exactly,
        // 2 fits row 0 exactly.
        let ids_of = |row: &Row| row.input_ids.clone();
        let concat = |a: usize, b: usize| -> Vec<u32> {
            examples[a]
                .input_ids
                .iter()
                .chain(&examples[b].input_ids)
                .copied()
                .collect()
        };
        assert_eq!(rows.len(), 3);
        assert_eq!(ids_of(&rows[0]), concat(4, 3));
        assert_eq!(ids_of(&rows[1]), concat(0, 1));
        assert_eq!(ids_of(&rows[2]), examples[2].input_ids);
        assert_eq!(
            rows[1].position_ids().collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 0, 1, 2]
        );
        assert_eq!(
            rows[1].segment_ids().collect::<Vec<_>>(),
            vec![0, 0, 0, 0, 0, 1, 1, 1]
        );
        assert_eq!(
            rows[1].labels().collect::<Vec<_>>(),
            vec![X, 1, 2, 3, 4, X, 101, 102]
        );
        assert!(rows[1].is_packed() && !rows[2].is_packed());
        assert_eq!(pack(single(examples), 8), rows, "deterministic");
    }

    #[test]
    fn packing_gives_an_overlong_example_its_own_row() {
        let rows = pack(
            single(vec![example(0, 3, 0), example(50, 9, 0), example(90, 2, 0)]),
            5,
        );
        let lens: Vec<usize> = rows.iter().map(Row::len).collect();
        assert_eq!(lens, vec![9, 5]);
        assert_eq!(
            rows[1].segment_ids().collect::<Vec<_>>(),
            vec![0, 0, 0, 1, 1]
        );
    }

    #[test]
    fn collate_pads_and_continues_positions_and_segments() {
        let packed = pack(single(vec![example(10, 3, 1), example(20, 2, 1)]), 5).remove(0);
        let single = Row::from(example(30, 2, 1));
        let batch = collate(&[&packed, &single], 0);
        assert_eq!((batch.batch, batch.seq), (2, 5));
        assert_eq!(batch.input_ids, vec![10, 11, 12, 20, 21, 30, 31, 0, 0, 0]);
        assert_eq!(batch.labels, vec![X, 11, 12, X, 21, X, 31, X, X, X]);
        assert_eq!(batch.position_ids, vec![0, 1, 2, 0, 1, 0, 1, 2, 3, 4]);
        assert_eq!(batch.segment_ids, Some(vec![0, 0, 0, 1, 1, 0, 0, 1, 1, 1]));
        let unpacked = collate(&[&single, &Row::from(example(40, 4, 0))], 7);
        assert_eq!(unpacked.segment_ids, None);
        assert_eq!(unpacked.input_ids, vec![30, 31, 7, 7, 40, 41, 42, 43]);
        assert_eq!(unpacked.position_ids, vec![0, 1, 2, 3, 0, 1, 2, 3]);
        let empty = collate(&[], 0);
        assert_eq!((empty.batch, empty.seq, empty.input_ids.len()), (0, 0, 0));
    }

    #[test]
    fn flattening_lays_rows_end_to_end_with_their_own_segments() {
        let packed = pack(single(vec![example(0, 2, 0), example(10, 3, 1)]), 8).remove(0);
        let single = Row::from(example(20, 2, 0));
        let batch = flatten(&[&packed, &single]);
        assert_eq!((batch.batch, batch.seq), (1, 7));
        assert_eq!(batch.input_ids, vec![10, 11, 12, 0, 1, 20, 21]);
        assert_eq!(batch.labels, vec![X, 11, 12, X, 1, X, 21]);
        assert_eq!(batch.position_ids, vec![0, 1, 2, 0, 1, 0, 1]);
        assert_eq!(batch.segment_ids, Some(vec![0, 0, 0, 1, 1, 2, 2]));
    }
}
