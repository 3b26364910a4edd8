//! The GGUF reader on bad input: each broken file is an error naming the file and the problem,
//! never a panic. Files are written with `GgufWriter` and then corrupted byte by byte.

use std::path::{Path, PathBuf};

use hone::io::gguf::{GgufFile, GgufValue};
use hone::io::gguf_write::GgufWriter;
use hone::quant::GgmlType;
use tempfile::TempDir;

/// The name of the one Q4_0 tensor in the sample file, unique so its bytes can be found.
const TENSOR: &str = "blk.0.sample_weight";
/// The first metadata key in the sample file.
const FIRST_KEY: &str = "general.architecture";

/// A small valid file: three metadata entries, an F32 and a Q4_0 tensor.
fn sample() -> (TempDir, PathBuf, Vec<u8>) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("sample.gguf");
    let mut w = GgufWriter::new();
    w.set(FIRST_KEY, GgufValue::String("llama".into()))
        .set("llama.block_count", GgufValue::U32(1))
        .set(
            "tokenizer.ggml.tokens",
            GgufValue::Array(vec![GgufValue::String("a".into())]),
        );
    let norm: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let weight: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin()).collect();
    w.add_tensor("blk.0.norm", &[64], GgmlType::F32, &norm)
        .unwrap();
    w.add_tensor(TENSOR, &[2, 64], GgmlType::Q4_0, &weight)
        .unwrap();
    w.write(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    GgufFile::open(&path).expect("the untouched sample is valid");
    (dir, path, bytes)
}

/// Writes `bytes` as `name` in `dir` and opens it, expecting an error.
fn open_err(dir: &TempDir, name: &str, bytes: &[u8]) -> (PathBuf, String) {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = match GgufFile::open(&path) {
        Ok(_) => panic!("{name}: opened without error"),
        Err(e) => format!("{e:#}"),
    };
    (path, err)
}

fn assert_mentions(err: &str, path: &Path, problem: &str) {
    assert!(
        err.contains(&path.display().to_string()),
        "no file name in: {err}"
    );
    assert!(err.contains(problem), "expected {problem:?} in: {err}");
}

fn find(bytes: &[u8], needle: &[u8]) -> usize {
    bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

/// Byte offset of a field of the sample tensor's directory entry (after its name:
/// n_dims u32, two u64 dims, type u32, offset u64).
fn tensor_field(bytes: &[u8], field: &str) -> usize {
    let after_name = find(bytes, TENSOR.as_bytes()) + TENSOR.len();
    after_name
        + match field {
            "n_dims" => 0,
            "type" => 4 + 2 * 8,
            "offset" => 4 + 2 * 8 + 4,
            _ => unreachable!(),
        }
}

fn patch(bytes: &[u8], at: usize, with: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    b[at..at + with.len()].copy_from_slice(with);
    b
}

#[test]
fn missing_file() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("absent.gguf");
    let err = format!("{:#}", GgufFile::open(&path).err().unwrap());
    assert_mentions(&err, &path, "cannot open");
}

#[test]
fn bad_magic_and_empty_file() {
    let (dir, _, bytes) = sample();
    let (path, err) = open_err(&dir, "magic.gguf", &patch(&bytes, 0, b"GGML"));
    assert_mentions(&err, &path, "bad magic");
    let (path, err) = open_err(&dir, "empty.gguf", &[]);
    assert_mentions(&err, &path, "bad magic");
}

#[test]
fn unsupported_versions() {
    let (dir, _, bytes) = sample();
    for version in [1u32, 4] {
        let (path, err) = open_err(
            &dir,
            "version.gguf",
            &patch(&bytes, 4, &version.to_le_bytes()),
        );
        assert_mentions(&err, &path, &format!("unsupported GGUF version {version}"));
    }
}

#[test]
fn truncated_in_header() {
    let (dir, _, bytes) = sample();
    for len in [6, 20, 40, tensor_field(&bytes, "type")] {
        let (path, err) = open_err(&dir, "cut.gguf", &bytes[..len]);
        assert_mentions(&err, &path, "unexpected end of file");
    }
}

#[test]
fn truncated_in_tensor_data() {
    let (dir, path, bytes) = sample();
    let info = GgufFile::open(&path)
        .unwrap()
        .tensor_info(TENSOR)
        .unwrap()
        .clone();
    let cut = (info.offset + info.n_bytes / 2) as usize;
    let (path, err) = open_err(&dir, "cut.gguf", &bytes[..cut]);
    assert_mentions(&err, &path, &format!("tensor {TENSOR}"));
    assert_mentions(&err, &path, "runs past the end of the file");
}

#[test]
fn header_counts_that_lie() {
    let (dir, _, bytes) = sample();
    let (path, err) = open_err(
        &dir,
        "tensors.gguf",
        &patch(&bytes, 8, &(1u64 << 40).to_le_bytes()),
    );
    assert_mentions(&err, &path, "1099511627776 tensors");
    let (path, err) = open_err(
        &dir,
        "kv.gguf",
        &patch(&bytes, 16, &(1u64 << 40).to_le_bytes()),
    );
    assert_mentions(&err, &path, "1099511627776 metadata entries");
    // One tensor too many: the reader runs into the data section and fails cleanly there.
    let (path, err) = open_err(&dir, "three.gguf", &patch(&bytes, 8, &3u64.to_le_bytes()));
    assert_mentions(&err, &path, "tensor entry 2");
}

#[test]
fn tensor_data_past_eof() {
    let (dir, _, bytes) = sample();
    let at = tensor_field(&bytes, "offset");
    let (path, err) = open_err(
        &dir,
        "offset.gguf",
        &patch(&bytes, at, &(1u64 << 20).to_le_bytes()),
    );
    assert_mentions(&err, &path, "runs past the end of the file");
    let (path, err) = open_err(
        &dir,
        "overflow.gguf",
        &patch(&bytes, at, &(u64::MAX - 31).to_le_bytes()),
    );
    assert_mentions(&err, &path, "overflows");
}

#[test]
fn unknown_tensor_type_id() {
    let (dir, _, bytes) = sample();
    let at = tensor_field(&bytes, "type");
    let (path, err) = open_err(&dir, "type.gguf", &patch(&bytes, at, &99u32.to_le_bytes()));
    assert_mentions(&err, &path, &format!("tensor {TENSOR}"));
    assert_mentions(&err, &path, "unknown ggml tensor type id 99");
}

#[test]
fn unknown_metadata_value_type() {
    let (dir, _, bytes) = sample();
    let at = 24 + 8 + FIRST_KEY.len();
    let (path, err) = open_err(&dir, "value.gguf", &patch(&bytes, at, &13u32.to_le_bytes()));
    assert_mentions(&err, &path, FIRST_KEY);
    assert_mentions(&err, &path, "unknown metadata value type 13");
}

#[test]
fn bad_tensor_dimensions() {
    let (dir, _, bytes) = sample();
    let at = tensor_field(&bytes, "n_dims");
    let (path, err) = open_err(&dir, "dims.gguf", &patch(&bytes, at, &5u32.to_le_bytes()));
    assert_mentions(&err, &path, "5 dimensions");
    // Rows of 32 values hold whole Q4_0 blocks, but 16 do not (though the total, 128, would).
    let (path, err) = open_err(
        &dir,
        "row.gguf",
        &patch(&bytes, at + 4, &16u64.to_le_bytes()),
    );
    assert_mentions(&err, &path, "rows of 16 values are not whole Q4_0 blocks");
    // Found by fuzzing: 2⁶³ f32 values (dimensions 2³² and 2³¹) overflowed their byte count.
    let huge = patch(&bytes, at + 4, &(1u64 << 32).to_le_bytes());
    let huge = patch(&huge, at + 12, &(1u64 << 31).to_le_bytes());
    let huge = patch(&huge, tensor_field(&bytes, "type"), &0u32.to_le_bytes());
    let (path, err) = open_err(&dir, "huge.gguf", &huge);
    assert_mentions(&err, &path, "values overflow a byte count");
}

#[test]
fn unaligned_tensor_offset() {
    let (dir, _, bytes) = sample();
    let at = tensor_field(&bytes, "offset");
    let offset = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let (path, err) = open_err(
        &dir,
        "align.gguf",
        &patch(&bytes, at, &(offset + 4).to_le_bytes()),
    );
    assert_mentions(&err, &path, "not a multiple of the alignment 32");
}

#[test]
fn duplicate_names() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("names.gguf");
    let mut w = GgufWriter::new();
    w.set("key_a", GgufValue::U8(1))
        .set("key_b", GgufValue::U8(2));
    w.add_tensor("tensor_a", &[32], GgmlType::F32, &[0.0; 32])
        .unwrap();
    w.add_tensor("tensor_b", &[32], GgmlType::F32, &[1.0; 32])
        .unwrap();
    w.write(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let (path, err) = open_err(
        &dir,
        "keys.gguf",
        &patch(&bytes, find(&bytes, b"key_b"), b"key_a"),
    );
    assert_mentions(&err, &path, "metadata key \"key_a\" appears twice");
    let at = find(&bytes, b"tensor_b");
    let (path, err) = open_err(&dir, "tensors.gguf", &patch(&bytes, at, b"tensor_a"));
    assert_mentions(&err, &path, "tensor tensor_a appears twice");
}

/// Arrays of arrays are valid GGUF (gguf-py reads them), but a file of nothing but nested array
/// headers must not exhaust the reader's stack.
#[test]
fn deeply_nested_arrays() {
    let dir = TempDir::new().unwrap();
    let mut b = [
        b"GGUF".as_slice(),
        &3u32.to_le_bytes(),
        &0u64.to_le_bytes(),
        &1u64.to_le_bytes(),
    ]
    .concat();
    b.extend_from_slice(&6u64.to_le_bytes());
    b.extend_from_slice(b"nested");
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..9 {
        b.extend_from_slice(&9u32.to_le_bytes()); // item type: array
        b.extend_from_slice(&1u64.to_le_bytes()); // one item
    }
    b.extend_from_slice(&[0; 16]);
    let (path, err) = open_err(&dir, "nested.gguf", &b);
    assert_mentions(&err, &path, "arrays nested more than 8 deep");
}

#[test]
fn alignment_not_a_power_of_two() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("align.gguf");
    let mut w = GgufWriter::new();
    w.set("general.alignment", GgufValue::U32(24));
    let err = format!("{:#}", w.write(&path).unwrap_err());
    assert_mentions(&err, &path, "general.alignment must be a u32 power of two");
    assert!(!path.exists(), "nothing written");
    // The reader meets such a file when the value is patched after writing.
    w.set("general.alignment", GgufValue::U32(32));
    w.write(&path).unwrap();
    let written = std::fs::read(&path).unwrap();
    let at = find(&written, b"general.alignment") + "general.alignment".len() + 4;
    let (path, err) = open_err(
        &dir,
        "align24.gguf",
        &patch(&written, at, &24u32.to_le_bytes()),
    );
    assert_mentions(&err, &path, "general.alignment is not a power of two");
}
