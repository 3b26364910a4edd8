//! bitsandbytes' 4-bit weight quantization, QLoRA's NF4 and FP4 (`quantization_bit: 4`),
//! byte-exact with bitsandbytes' CPU backend, and the 64-value blocks Hone multiplies from.
//!
//! bitsandbytes quantizes a tensor flat, in blocks of 64 values: each value becomes the index of
//! the nearest of 16 codes (NF4: quantiles of a normal distribution; FP4: a sign, 2 exponent bits
//! and 1 mantissa bit) times the block's absolute maximum. With double quantization the absmax
//! values are quantized in turn: their mean is subtracted and the rest stored as 8-bit codes of
//! the signed dynamic map, in blocks of 256 with an f32 scale each.
//!
//! Hone keeps that state only while quantizing (it is what the golden tests compare). The matrix
//! it multiplies from stores each 64-value block self-contained, as its absmax already
//! dequantized (an f32) followed by the 32 bytes of codes: 36 bytes, 4.5 bits per weight, where
//! bitsandbytes' double-quantized state takes 4.13 — the price of blocks that decode on their own
//! in every kernel. The decoded values are bit for bit those of bitsandbytes' `dequantize_4bit`.

use std::sync::OnceLock;

use rayon::prelude::*;

/// Values per 4-bit block.
pub const BLOCK: usize = 64;
/// Bytes of one block as Hone stores it: the f32 absmax, then two codes per byte.
pub const BLOCK_BYTES: usize = 4 + BLOCK / 2;
/// Absmax values per block of the double quantization.
const NESTED_BLOCK: usize = 256;

/// The 4-bit data types (`quantization_type`, `bnb_4bit_quant_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FourBit {
    Nf4,
    Fp4,
}

/// NF4's codes as bitsandbytes lists them (`get_4bit_type("nf4")`), already in [-1, 1].
const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// FP4's codes in bit-pattern order before normalization (`get_4bit_type("fp4")`). bitsandbytes
/// lists code 8 as -0, but its CPU decoder returns +0 for it (and its quantizer cannot tell the
/// two zeros apart), so +0 it is.
const FP4_RAW: [f32; 16] = [
    0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0,
];

impl FourBit {
    /// The 16 codes in [-1, 1], indexed by the stored nibble.
    pub fn codes(self) -> &'static [f32; 16] {
        static FP4: OnceLock<[f32; 16]> = OnceLock::new();
        match self {
            FourBit::Nf4 => &NF4,
            // bitsandbytes divides by the largest magnitude, in f32.
            FourBit::Fp4 => FP4.get_or_init(|| FP4_RAW.map(|v| v / 12.0)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FourBit::Nf4 => "nf4",
            FourBit::Fp4 => "fp4",
        }
    }

    /// The nibble bitsandbytes writes for `scaled` (a value over its block's absmax): the
    /// number of midpoints between sorted codes below it (`torch.bucketize`), mapped back from
    /// sorted order to bit-pattern order. A value on a midpoint takes the lower code.
    fn nibble(self, scaled: f32, sorted: &Sorted) -> u8 {
        let bucket = sorted.midpoints.iter().filter(|&&m| m < scaled).count();
        sorted.order[bucket]
    }

    fn sorted(self) -> Sorted {
        let codes = self.codes();
        let mut order: [u8; 16] = std::array::from_fn(|i| i as u8);
        // A stable sort, as torch.argsort leaves FP4's +0 before its -0.
        order.sort_by(|&a, &b| {
            codes[a as usize]
                .partial_cmp(&codes[b as usize])
                .expect("codes are finite")
        });
        let midpoints = std::array::from_fn(|i| {
            (codes[order[i] as usize] + codes[order[i + 1] as usize]) / 2.0
        });
        Sorted { midpoints, order }
    }
}

/// Codes in ascending order and the midpoints between neighbours.
struct Sorted {
    midpoints: [f32; 15],
    order: [u8; 16],
}

/// bitsandbytes' state for a 4-bit tensor: the packed codes (the first value of each pair in
/// the high nibble) and the per-block absmax.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    pub packed: Vec<u8>,
    pub absmax: Absmax,
}

/// The per-block absmax as bitsandbytes keeps it.
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax {
    /// One f32 per block.
    Plain(Vec<f32>),
    /// Double quantization (`compress_statistics`): 8-bit dynamic-map codes of `absmax - offset`,
    /// one f32 scale per 256 codes, and the offset (the mean absmax).
    Nested {
        codes: Vec<u8>,
        scales: Vec<f32>,
        offset: f32,
    },
}

impl Absmax {
    /// The absmax of every block as `dequantize_4bit` uses it.
    pub fn values(&self) -> Vec<f32> {
        match self {
            Absmax::Plain(v) => v.clone(),
            Absmax::Nested {
                codes,
                scales,
                offset,
            } => {
                let map = dynamic_map();
                codes
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| map[c as usize] * scales[i / NESTED_BLOCK] + offset)
                    .collect()
            }
        }
    }
}

/// `x` quantized as `bitsandbytes.functional.quantize_4bit(x, blocksize=64, quant_type, compress_statistics=double)`.
///
/// # Panics
/// If `x` is not a whole number of 64-value blocks (Hone quantizes rows of whole blocks only).
pub fn quantize(x: &[f32], ty: FourBit, double: bool) -> Quantized {
    assert!(x.len().is_multiple_of(BLOCK), "not whole 64-value blocks");
    let sorted = ty.sorted();
    let mut packed = vec![0u8; x.len() / 2];
    let mut absmax = vec![0f32; x.len() / BLOCK];
    x.par_chunks(BLOCK)
        .zip(packed.par_chunks_mut(BLOCK / 2))
        .zip(&mut absmax)
        .for_each(|((x, packed), absmax)| {
            *absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let inverse = 1.0 / absmax.max(1e-38);
            for (pair, byte) in x.chunks_exact(2).zip(packed.iter_mut()) {
                let code = |v: f32| ty.nibble((v * inverse).clamp(-1.0, 1.0), &sorted);
                *byte = code(pair[0]) << 4 | code(pair[1]);
            }
        });
    let absmax = if double {
        nested(&absmax)
    } else {
        Absmax::Plain(absmax)
    };
    Quantized { packed, absmax }
}

/// The double quantization of `absmax`: its mean subtracted, the rest quantized to the dynamic
/// map in blocks of 256 (`quantize_blockwise`, run by the C library's lookup-table quantizer).
fn nested(absmax: &[f32]) -> Absmax {
    let offset = torch_sum(absmax) / absmax.len() as f32;
    let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let lut = dynamic_lut();
    let mut codes = vec![0u8; centred.len()];
    let scales = centred
        .chunks(NESTED_BLOCK)
        .zip(codes.chunks_mut(NESTED_BLOCK))
        .map(|(values, codes)| {
            let scale = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            if scale != 0.0 {
                let inverse = 1.0 / scale;
                for (v, c) in values.iter().zip(codes.iter_mut()) {
                    *c = lut[lut_index(v * inverse)];
                }
            }
            scale
        })
        .collect();
    Absmax::Nested {
        codes,
        scales,
        offset,
    }
}

/// The bin of bitsandbytes' 65536-entry lookup table a value in [-1, 1] falls in.
fn lut_index(v: f32) -> usize {
    let bins = (LUT_SIZE - 1) as f32;
    ((v.clamp(-1.0, 1.0) + 1.0) * 0.5 * bins + 0.5) as u16 as usize
}

const LUT_SIZE: usize = 65536;

/// For each of 65536 evenly spaced points of [-1, 1], the dynamic-map code nearest to it: the
/// C library's quantizer rounds a value to its bin, then looks the code up (`build_quantize_lut`).
fn dynamic_lut() -> &'static [u8; LUT_SIZE] {
    static LUT: OnceLock<Box<[u8; LUT_SIZE]>> = OnceLock::new();
    LUT.get_or_init(|| {
        let map = dynamic_map();
        let midpoints: Vec<f32> = map.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        let mut lut = Box::new([0u8; LUT_SIZE]);
        let mut code = 0;
        for (i, entry) in lut.iter_mut().enumerate() {
            let v = -1.0 + (2.0 * i as f32) / (LUT_SIZE - 1) as f32;
            while code < midpoints.len() && midpoints[code] < v {
                code += 1;
            }
            *entry = code as u8;
        }
        lut
    })
}

/// bitsandbytes' signed 8-bit dynamic map (`create_dynamic_map()`), sorted: for each decade
/// 10⁻⁶…10⁰ the midpoints of an even split of [0.1, 1] into 2ⁱ parts, with both signs, then 0
/// and 1.
pub fn dynamic_map() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(|| {
        let decades = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0f64];
        let mut data = Vec::with_capacity(256);
        for (i, &decade) in decades.iter().enumerate() {
            let bounds = torch_linspace(0.1, 1.0, (1 << i) + 1);
            let decade = decade as f32;
            let means = bounds.windows(2).map(|w| (w[0] + w[1]) / 2.0);
            for mean in means.clone() {
                data.push(decade * mean);
            }
            for mean in means {
                data.push(-decade * mean);
            }
        }
        data.extend([0.0, 1.0]);
        data.sort_by(f32::total_cmp);
        data.try_into().expect("254 codes, 0 and 1")
    })
}

/// `torch.linspace(start, end, steps)` in f32 as its vectorized CPU kernel computes it: the first
/// half counted up from `start`, the second down from `end`, each point one fused multiply-add.
fn torch_linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// `torch.sum` of an f32 vector in the order its CPU kernel adds (single-threaded, 8-lane
/// vectors: four vector accumulators over cascading levels, then the lanes): the mean that
/// offsets the double quantization must be the same f32 as bitsandbytes'. Torch splits sums of
/// more than 32768 values across its threads; this follows one thread, so for the largest
/// matrices the offset can differ from a multi-threaded torch in its last bit.
fn torch_sum(x: &[f32]) -> f32 {
    const LANES: usize = 8;
    const ILP: usize = 4;
    let vectors = x.len() / LANES;
    let lane_vector = |v: usize| -> [f32; LANES] { x[v * LANES..][..LANES].try_into().unwrap() };
    let groups = vectors / ILP;
    let mut partial = cascade_sum(groups, |g| {
        std::array::from_fn(|k| lane_vector(g * ILP + k))
    });
    for v in groups * ILP..vectors {
        add(&mut partial[0], &lane_vector(v));
    }
    for k in 1..ILP {
        let row = partial[k];
        add(&mut partial[0], &row);
    }
    let mut total = 0f32;
    for &v in &x[vectors * LANES..] {
        total += v;
    }
    for lane in partial[0] {
        total += lane;
    }
    total
}

type Lanes = [[f32; 8]; 4];

fn add(acc: &mut [f32; 8], v: &[f32; 8]) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a += b;
    }
}

/// Torch's `multi_row_sum`: `size` rows added into level 0; every `2^level_power` rows a level
/// is carried into the next, so only sums of similar size meet.
fn cascade_sum(size: usize, row: impl Fn(usize) -> Lanes) -> Lanes {
    const LEVELS: usize = 4;
    let ceil_log2 = if size <= 2 {
        1
    } else {
        usize::BITS - (size - 1).leading_zeros()
    } as usize;
    let level_power = (ceil_log2 / LEVELS).max(4);
    let level_step = 1 << level_power;
    let level_mask = level_step - 1;
    let mut acc = [[[0f32; 8]; 4]; LEVELS];
    let add_rows = |to: &mut Lanes, from: &Lanes| {
        for (t, f) in to.iter_mut().zip(from) {
            add(t, f);
        }
    };
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            add_rows(&mut acc[0], &row(i));
            i += 1;
        }
        for j in 1..LEVELS {
            let lower = acc[j - 1];
            add_rows(&mut acc[j], &lower);
            acc[j - 1] = [[0.0; 8]; 4];
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size {
        add_rows(&mut acc[0], &row(i));
        i += 1;
    }
    for j in 1..LEVELS {
        let level = acc[j];
        add_rows(&mut acc[0], &level);
    }
    acc[0]
}

impl Quantized {
    /// `dequantize_4bit`: each code times its block's absmax, in f32.
    pub fn dequantize(&self, ty: FourBit) -> Vec<f32> {
        let codes = ty.codes();
        let absmax = self.absmax.values();
        let mut out = vec![0f32; self.packed.len() * 2];
        out.par_chunks_mut(BLOCK)
            .zip(self.packed.par_chunks(BLOCK / 2))
            .zip(absmax)
            .for_each(|((out, packed), absmax)| decode(codes, absmax, packed, out));
        out
    }

    /// Hone's blocks: each block's dequantized absmax (little-endian f32), then its codes.
    pub fn to_blocks(&self) -> Vec<u8> {
        let absmax = self.absmax.values();
        let mut out = Vec::with_capacity(absmax.len() * BLOCK_BYTES);
        for (a, codes) in absmax.iter().zip(self.packed.chunks_exact(BLOCK / 2)) {
            out.extend_from_slice(&a.to_le_bytes());
            out.extend_from_slice(codes);
        }
        out
    }
}

fn decode(codes: &[f32; 16], absmax: f32, packed: &[u8], out: &mut [f32]) {
    for (pair, &byte) in out.chunks_exact_mut(2).zip(packed) {
        pair[0] = codes[(byte >> 4) as usize] * absmax;
        pair[1] = codes[(byte & 0xf) as usize] * absmax;
    }
}

/// One of Hone's NF4 blocks decoded.
pub(super) fn dequantize_nf4(b: &[u8; BLOCK_BYTES], y: &mut [f32; BLOCK]) {
    decode_block(FourBit::Nf4.codes(), b, y);
}

/// One of Hone's FP4 blocks decoded.
pub(super) fn dequantize_fp4(b: &[u8; BLOCK_BYTES], y: &mut [f32; BLOCK]) {
    decode_block(FourBit::Fp4.codes(), b, y);
}

fn decode_block(codes: &[f32; 16], b: &[u8; BLOCK_BYTES], y: &mut [f32; BLOCK]) {
    let absmax = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    decode(codes, absmax, &b[4..], y);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp4_sorts_its_two_zeros_as_torch_does() {
        let sorted = FourBit::Fp4.sorted();
        let zeros: Vec<u8> = sorted.order[7..9].to_vec();
        assert_eq!(zeros, [0, 8]);
        assert_eq!(FourBit::Fp4.nibble(0.0, &sorted), 0);
        assert_eq!(FourBit::Nf4.nibble(0.0, &FourBit::Nf4.sorted()), 7);
    }

    #[test]
    fn sums_follow_torchs_order_and_stay_close_to_the_exact_sum() {
        for n in [1, 7, 8, 33, 384, 5184, 13824] {
            let x: Vec<f32> = (0..n).map(|i| 0.01 + (i % 97) as f32 * 1e-3).collect();
            let exact: f64 = x.iter().map(|&v| f64::from(v)).sum();
            let ours = f64::from(torch_sum(&x));
            assert!(
                (ours - exact).abs() <= exact * 1e-6,
                "{n}: {ours} vs {exact}"
            );
        }
    }

    #[test]
    fn blocks_decode_to_the_dequantized_values() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        for ty in [FourBit::Nf4, FourBit::Fp4] {
            let q = quantize(&x, ty, true);
            let blocks = q.to_blocks();
            let mut y = [0f32; BLOCK];
            let want = q.dequantize(ty);
            for (b, want) in blocks
                .chunks_exact(BLOCK_BYTES)
                .zip(want.chunks_exact(BLOCK))
            {
                let b = b.try_into().unwrap();
                match ty {
                    FourBit::Nf4 => dequantize_nf4(b, &mut y),
                    FourBit::Fp4 => dequantize_fp4(b, &mut y),
                }
                assert_eq!(&y[..], want);
            }
        }
    }
}
