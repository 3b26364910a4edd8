//! Quantization kernels against the golden fixtures of `scripts/golden/quant.py` (gguf-py and
//! ggml's own C reference): dequantization bit-exact, quantization byte-exact.

use std::path::PathBuf;

use hone::quant::bnb::{self, Absmax, FourBit};
use hone::quant::{dequantize, quantize, GgmlType};

const DEQUANTIZED: [GgmlType; 12] = [
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Types Hone quantizes to; the fixture bytes come from gguf-py, or for the K-quants from ggml's
/// `quantize_row_*_ref`.
const QUANTIZED: [GgmlType; 9] = [
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/quant")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Compares bit patterns, so -0.0 vs 0.0 or a different infinity would fail.
fn assert_bits_eq(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    if let Some(&i) = bad.first() {
        panic!(
            "{what}: {} of {} values differ, first at {i}: got {} want {}",
            bad.len(),
            got.len(),
            got[i],
            want[i]
        );
    }
}

fn input() -> Vec<f32> {
    f32s(&fixture("input.f32.bin"))
}

#[test]
fn dequantize_matches_gguf_py_on_quantized_input() {
    let n = input().len();
    for ty in DEQUANTIZED {
        let got = dequantize(ty, &fixture(&format!("{}.q.bin", ty.name())), n).unwrap();
        let want = f32s(&fixture(&format!("{}.deq.bin", ty.name())));
        assert_bits_eq(&got, &want, ty.name());
    }
}

#[test]
fn dequantize_matches_gguf_py_on_random_blocks() {
    for ty in DEQUANTIZED {
        let bytes = fixture(&format!("{}.rand.q.bin", ty.name()));
        let want = f32s(&fixture(&format!("{}.rand.deq.bin", ty.name())));
        let got = dequantize(ty, &bytes, want.len()).unwrap();
        assert_bits_eq(&got, &want, &format!("{} random blocks", ty.name()));
    }
}

#[test]
fn quantize_matches_reference_bytes() {
    let x = input();
    for ty in QUANTIZED {
        let got = quantize(ty, &x).unwrap();
        let want = fixture(&format!("{}.q.bin", ty.name()));
        assert_eq!(got.len(), want.len(), "{}: length", ty.name());
        let block = ty.type_size();
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            panic!(
                "{}: byte {i} (block {}, offset {}) is {:#04x}, ggml writes {:#04x}",
                ty.name(),
                i / block,
                i % block,
                got[i],
                want[i]
            );
        }
    }
}

#[test]
fn f32_round_trips_exactly() {
    let x = input();
    let bytes = quantize(GgmlType::F32, &x).unwrap();
    assert_eq!(bytes.len(), 4 * x.len());
    assert_bits_eq(
        &dequantize(GgmlType::F32, &bytes, x.len()).unwrap(),
        &x,
        "F32",
    );
}

/// Round-trip error per type: at most `rel` times the largest magnitude in the block, plus a
/// little absolute slack for blocks so small that their f16 scale is subnormal. For the
/// 32-element types the bound is the rounding step (a whole step for the `_0` types, whose most
/// negative level has no positive mirror) plus the f16 rounding of the scale (2^-11 relative) at
/// the largest level, and for the `_1` types the f16 rounding of the minimum. The K-quant bounds
/// are loose (their scales and minimums are 6-bit numbers), yet far below what a wrong bit
/// layout would give.
#[test]
fn quantize_round_trip_error_is_within_type_precision() {
    let x = input();
    let f16_eps = 1.0 / 2048.0;
    let step = |steps: f32, levels: f32| (steps + levels * f16_eps) / levels;
    let bounds = [
        (GgmlType::Q8_0, step(0.5, 127.0)),
        (GgmlType::Q5_0, step(1.0, 16.0)),
        (GgmlType::Q4_0, step(1.0, 8.0)),
        (GgmlType::Q5_1, 2.0 * step(0.5, 31.0) + f16_eps),
        (GgmlType::Q4_1, 2.0 * step(0.5, 15.0) + f16_eps),
        (GgmlType::Q6K, 0.02),
        (GgmlType::Q4K, 0.08),
    ];
    for (ty, rel) in bounds {
        let back = dequantize(ty, &quantize(ty, &x).unwrap(), x.len()).unwrap();
        let mut worst = 0f32;
        for (xb, yb) in x.chunks(ty.block_size()).zip(back.chunks(ty.block_size())) {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            for (a, b) in xb.iter().zip(yb) {
                let err = (a - b).abs();
                assert!(
                    err <= rel * amax + 1e-5,
                    "{}: {a} came back as {b} (block max {amax})",
                    ty.name()
                );
                worst = worst.max(err / amax.max(1e-3));
            }
        }
        println!(
            "{}: worst error {worst:.4} of the block maximum (bound {rel:.4})",
            ty.name()
        );
    }
}

#[test]
fn dequantize_rejects_wrong_sizes_and_unsupported_types() {
    let err = dequantize(GgmlType::Q4_0, &[0; 17], 32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("take 18 bytes, got 17"), "{err}");
    let err = dequantize(GgmlType::Q4_0, &[0; 18], 31)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a whole number of Q4_0 blocks"), "{err}");
    let err = dequantize(GgmlType::Q8_1, &[0; 36], 32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Q8_1") && err.contains("not supported"),
        "{err}"
    );
    let err = quantize(GgmlType::Q3K, &[0.0; 256])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Q3_K") && err.contains("not supported"),
        "{err}"
    );
    let err = quantize(GgmlType::Q6K, &[0.0; 300])
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a whole number of Q6_K blocks"), "{err}");
}

/// bitsandbytes' 4-bit quantization (`scripts/golden/bnb.py`): packed codes, the absmax with and
/// without double quantization, and the dequantized values, all exact.
#[test]
fn bnb_4bit_matches_bitsandbytes_bytes_and_values() {
    let x = f32s(&fixture("bnb/input.f32.bin"));
    let dynamic = f32s(&fixture("bnb/dynamic_code.f32.bin"));
    assert_bits_eq(bnb::dynamic_map(), &dynamic, "dynamic map");
    for ty in [FourBit::Nf4, FourBit::Fp4] {
        let name = ty.name();
        let plain = bnb::quantize(&x, ty, false);
        assert_eq!(
            plain.packed,
            fixture(&format!("bnb/{name}.packed.bin")),
            "{name} codes"
        );
        let Absmax::Plain(absmax) = &plain.absmax else {
            panic!("{name}: plain absmax expected");
        };
        let want = f32s(&fixture(&format!("bnb/{name}.absmax.f32.bin")));
        assert_bits_eq(absmax, &want, &format!("{name} absmax"));
        let want = f32s(&fixture(&format!("bnb/{name}.deq.f32.bin")));
        assert_bits_eq(&plain.dequantize(ty), &want, &format!("{name} dequantized"));

        let nested = bnb::quantize(&x, ty, true);
        assert_eq!(
            nested.packed, plain.packed,
            "{name}: double quantization keeps the codes"
        );
        let Absmax::Nested {
            codes,
            scales,
            offset,
        } = &nested.absmax
        else {
            panic!("{name}: nested absmax expected");
        };
        let want_offset = f32s(&fixture(&format!("bnb/{name}.nested.offset.f32.bin")));
        assert_bits_eq(&[*offset], &want_offset, &format!("{name} offset"));
        let want_codes = fixture(&format!("bnb/{name}.nested.absmax.u8.bin"));
        assert_eq!(codes, &want_codes, "{name} nested absmax codes");
        let want_scales = f32s(&fixture(&format!("bnb/{name}.nested.scales.f32.bin")));
        assert_bits_eq(scales, &want_scales, &format!("{name} nested scales"));
        let want = f32s(&fixture(&format!("bnb/{name}.nested.deq.f32.bin")));
        let what = format!("{name} nested dequantized");
        assert_bits_eq(&nested.dequantize(ty), &want, &what);
        let ggml = match ty {
            FourBit::Nf4 => GgmlType::Nf4,
            FourBit::Fp4 => GgmlType::Fp4,
        };
        let blocks = dequantize(ggml, &nested.to_blocks(), x.len()).unwrap();
        assert_bits_eq(&blocks, &want, &format!("{what}, from Hone's blocks"));
    }
}
