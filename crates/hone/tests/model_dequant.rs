//! The default model (SmolLM2-135M-Instruct, Q4_1 with a Q8_0 embedding and F32 norms)
//! dequantized by Hone, checked tensor by tensor against checksums of gguf-py's dequantization
//! (`scripts/golden/quant.py`).

mod common;

use std::collections::BTreeMap;

use hone::io::gguf::GgufFile;

/// The script's checksum: sum of bits[i] * (2i + 1) mod 2^64, which any change of any value alters.
fn checksum(values: &[f32]) -> u64 {
    values.iter().enumerate().fold(0u64, |h, (i, v)| {
        h.wrapping_add((v.to_bits() as u64).wrapping_mul(2 * i as u64 + 1))
    })
}

#[test]
fn default_model_dequantizes_bit_exactly() {
    let Some(path) = common::real_model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let sums = std::fs::read_to_string(common::fixture("quant/model_checksums.json")).unwrap();
    let want: BTreeMap<String, String> = serde_json::from_str(&sums).unwrap();
    let gguf = GgufFile::open(&path).unwrap();
    let names: Vec<&String> = gguf.tensors.iter().map(|t| &t.name).collect();
    assert_eq!(names.len(), want.len(), "tensor count");

    let mut n_values = 0;
    for name in names {
        let (data, shape) = gguf.tensor_f32(name).unwrap();
        assert_eq!(shape.iter().product::<usize>(), data.len(), "{name}: shape");
        let got = format!("{:016x}", checksum(&data));
        assert_eq!(
            Some(&got),
            want.get(name),
            "{name}: dequantized values differ from gguf-py"
        );
        n_values += data.len();
    }
    assert!(n_values > 100_000_000, "only {n_values} values");
}
