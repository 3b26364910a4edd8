//! Tensor storage types: ggml's, their block layout, and conversion between their bytes and f32;
//! and bitsandbytes' 4-bit types, which Hone builds at load for QLoRA (`quantization_bit: 4`).
//!
//! GGUF files store weights as ggml types. Hone dequantizes them to f32 where f32 is wanted
//! (training and exact-parity inference), and quantizes f32 back when exporting. Both directions
//! are bit-exact with ggml (and gguf-py, which agrees with it): dequantization for every type
//! below, quantization for the types `quantize` accepts, using ggml's reference (imatrix-free)
//! quantizers. The work is split into runs of blocks spread over rayon's threads.

pub mod bnb;
mod float;
mod kquantize;
mod kquants;
mod legacy;

use anyhow::{bail, ensure, Context, Result};
use rayon::prelude::*;

/// A tensor storage type: ggml's, with the numeric ids of ggml.h / gguf-py's
/// `GGMLQuantizationType`, and bitsandbytes' NF4 and FP4 in Hone's blocks ([`bnb`]), which exist
/// only in memory (no file format stores them: they have no ggml id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    BF16,
    Nf4,
    Fp4,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Result<Self> {
        use GgmlType::*;
        Ok(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            24 => I8,
            25 => I16,
            26 => I32,
            27 => I64,
            28 => F64,
            30 => BF16,
            _ => bail!("unknown ggml tensor type id {id}"),
        })
    }

    /// The ggml id; `None` for the bitsandbytes types.
    pub fn id(self) -> Option<u32> {
        use GgmlType::*;
        Some(match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            I8 => 24,
            I16 => 25,
            I32 => 26,
            I64 => 27,
            F64 => 28,
            BF16 => 30,
            Nf4 | Fp4 => return None,
        })
    }

    /// The name llama.cpp prints for this type.
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2K => "Q2_K",
            Q3K => "Q3_K",
            Q4K => "Q4_K",
            Q5K => "Q5_K",
            Q6K => "Q6_K",
            Q8K => "Q8_K",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            BF16 => "BF16",
            Nf4 => "NF4",
            Fp4 => "FP4",
        }
    }

    /// Elements per block (1 for plain types).
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | BF16 | I8 | I16 | I32 | I64 | F64 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K => 256,
            Nf4 | Fp4 => bnb::BLOCK,
        }
    }

    /// Whether values are stored in blocks with shared scales (every ggml quantized type and the
    /// bitsandbytes 4-bit ones) rather than one by one as floats or integers.
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | I32 => 4,
            F16 | BF16 | I16 => 2,
            I8 => 1,
            I64 | F64 => 8,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
            Nf4 | Fp4 => bnb::BLOCK_BYTES,
        }
    }

    /// Bytes taken by `n_elements` of this type; an error when `n_elements` is not whole blocks.
    pub fn bytes_for(self, n_elements: u64) -> Result<u64> {
        let bs = self.block_size() as u64;
        if !n_elements.is_multiple_of(bs) {
            bail!(
                "{} elements is not a whole number of {} blocks ({bs} each)",
                n_elements,
                self.name()
            );
        }
        // A file may claim any count: found by fuzzing, 2⁶² f32 values overflowed the product.
        (n_elements / bs)
            .checked_mul(self.type_size() as u64)
            .with_context(|| format!("{n_elements} {} values overflow a byte count", self.name()))
    }
}

/// Decodes `n_elements` values of type `ty` from `bytes` (exactly the tensor's bytes), spread
/// over rayon's threads.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<Vec<f32>> {
    check_dequantize(ty, bytes, n_elements)?;
    // Zeroed allocation is lazy (calloc), so the pages are first touched by the worker threads.
    let mut out = vec![0f32; n_elements];
    decode(ty, bytes, &mut out, true);
    Ok(out)
}

/// Decodes `bytes` of type `ty` into `out` on the calling thread (a tile of a matrix product that
/// is itself one task of a parallel loop).
pub fn dequantize_into(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    check_dequantize(ty, bytes, out.len())?;
    decode(ty, bytes, out, false);
    Ok(())
}

fn check_dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize) -> Result<()> {
    use GgmlType::*;
    if !matches!(
        ty,
        F32 | F16
            | BF16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q2K
            | Q3K
            | Q4K
            | Q5K
            | Q6K
            | Nf4
            | Fp4
    ) {
        bail!("dequantizing {} tensors is not supported", ty.name());
    }
    let expected = ty.bytes_for(n_elements as u64)?;
    ensure!(
        bytes.len() as u64 == expected,
        "{n_elements} {} elements take {expected} bytes, got {}",
        ty.name(),
        bytes.len()
    );
    Ok(())
}

/// The decoding of a checked type and length, in parallel or not.
fn decode(ty: GgmlType, b: &[u8], y: &mut [f32], par: bool) {
    use GgmlType::*;
    match ty {
        F32 => blocks(b, y, par, |b: &[u8; 4], y: &mut [f32; 1]| {
            y[0] = f32::from_le_bytes(*b)
        }),
        F16 => blocks(b, y, par, float::dequantize_f16),
        BF16 => blocks(b, y, par, float::dequantize_bf16),
        Q4_0 => blocks(b, y, par, legacy::dequantize_q4_0),
        Q4_1 => blocks(b, y, par, legacy::dequantize_q4_1),
        Q5_0 => blocks(b, y, par, legacy::dequantize_q5_0),
        Q5_1 => blocks(b, y, par, legacy::dequantize_q5_1),
        Q8_0 => blocks(b, y, par, legacy::dequantize_q8_0),
        Q2K => blocks(b, y, par, kquants::dequantize_q2_k),
        Q3K => blocks(b, y, par, kquants::dequantize_q3_k),
        Q4K => blocks(b, y, par, kquants::dequantize_q4_k),
        Q5K => blocks(b, y, par, kquants::dequantize_q5_k),
        Q6K => blocks(b, y, par, kquants::dequantize_q6_k),
        Nf4 => blocks(b, y, par, bnb::dequantize_nf4),
        Fp4 => blocks(b, y, par, bnb::dequantize_fp4),
        Q8_1 | Q8K | I8 | I16 | I32 | I64 | F64 => unreachable!("checked by check_dequantize"),
    }
}

/// Encodes `data` as type `ty`, byte for byte as ggml's `quantize_row_*_ref` (and gguf-py) do.
pub fn quantize(ty: GgmlType, data: &[f32]) -> Result<Vec<u8>> {
    use GgmlType::*;
    let kernel: fn(&[f32], &mut [u8]) = match ty {
        F32 => |x, q| {
            par_blocks(x, q, |x: &[f32; 1], q: &mut [u8; 4]| {
                *q = x[0].to_le_bytes()
            })
        },
        F16 => |x, q| par_blocks(x, q, float::quantize_f16),
        BF16 => |x, q| par_blocks(x, q, float::quantize_bf16),
        Q4_0 => |x, q| par_blocks(x, q, legacy::quantize_q4_0),
        Q4_1 => |x, q| par_blocks(x, q, legacy::quantize_q4_1),
        Q5_0 => |x, q| par_blocks(x, q, legacy::quantize_q5_0),
        Q5_1 => |x, q| par_blocks(x, q, legacy::quantize_q5_1),
        Q8_0 => |x, q| par_blocks(x, q, legacy::quantize_q8_0),
        Q4K => |x, q| par_blocks(x, q, kquantize::quantize_q4_k),
        Q6K => |x, q| par_blocks(x, q, kquantize::quantize_q6_k),
        _ => bail!("quantizing to {} is not supported", ty.name()),
    };
    let n_bytes = ty.bytes_for(data.len() as u64)?;
    let mut out = vec![0u8; n_bytes as usize];
    kernel(data, &mut out);
    Ok(out)
}

/// Blocks handed to one rayon task: enough work to amortise scheduling (16K values for the
/// 32-element types), few enough that the 135M-parameter default model makes thousands of tasks.
const BLOCKS_PER_TASK: usize = 512;

/// Runs `f` on each pair of corresponding blocks of `src` and `dst`, in parallel. The callers have
/// checked that both hold the same whole number of blocks.
fn par_blocks<A: Sync, B: Send, const I: usize, const O: usize>(
    src: &[A],
    dst: &mut [B],
    f: impl Fn(&[A; I], &mut [B; O]) + Sync,
) {
    let (src, _) = src.as_chunks::<I>();
    let (dst, _) = dst.as_chunks_mut::<O>();
    debug_assert_eq!(src.len(), dst.len());
    src.par_chunks(BLOCKS_PER_TASK)
        .zip(dst.par_chunks_mut(BLOCKS_PER_TASK))
        .for_each(|(src, dst)| src.iter().zip(dst).for_each(|(s, d)| f(s, d)));
}

/// [`par_blocks`], or the same loop on the calling thread.
fn blocks<const I: usize, const O: usize>(
    src: &[u8],
    dst: &mut [f32],
    par: bool,
    f: impl Fn(&[u8; I], &mut [f32; O]) + Sync,
) {
    if par {
        par_blocks(src, dst, f);
    } else {
        let (src, _) = src.as_chunks::<I>();
        let (dst, _) = dst.as_chunks_mut::<O>();
        src.iter().zip(dst).for_each(|(s, d)| f(s, d));
    }
}

/// The f16 stored little-endian at `b[i..i + 2]`, widened (exactly) to f32.
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// f32 to f16 bits, rounding to nearest even as ggml's `GGML_FP32_TO_FP16` and numpy do.
fn f16_bits(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_bits().to_le_bytes()
}
