//! GgufWriter → GgufFile round trips: metadata of every value type, tensors of every type Hone
//! writes, custom alignment, and the writer's refusals and atomic replacement.

mod common;

use common::dir_entries;
use hone::io::gguf::{GgufFile, GgufValue};
use hone::io::gguf_write::GgufWriter;
use hone::quant::{dequantize, quantize, GgmlType};
use tempfile::TempDir;

fn all_value_types() -> Vec<(&'static str, GgufValue)> {
    use GgufValue::*;
    vec![
        ("t.u8", U8(250)),
        ("t.i8", I8(-7)),
        ("t.u16", U16(65000)),
        ("t.i16", I16(-30000)),
        ("t.u32", U32(4_000_000_000)),
        ("t.i32", I32(-2_000_000_000)),
        ("t.f32", F32(-0.0)),
        ("t.bool", Bool(true)),
        ("t.string", String("héllo ✓ <|im_start|>".into())),
        ("t.empty_string", String(std::string::String::new())),
        ("t.u64", U64(u64::MAX)),
        ("t.i64", I64(i64::MIN)),
        ("t.f64", F64(f64::INFINITY)),
        (
            "t.strings",
            Array(vec![String("a".into()), String("ĠHone".into())]),
        ),
        ("t.i32s", Array(vec![I32(1), I32(-2), I32(3)])),
        ("t.f32s", Array(vec![F32(1e-6), F32(1e6)])),
    ]
}

/// Deterministic values in [-1, 1) with a few larger ones, like weights.
fn weights(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let v = s as f32 / u32::MAX as f32 * 2.0 - 1.0;
            if i % 97 == 0 {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}

#[test]
fn metadata_of_every_type_round_trips_in_order() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("meta.gguf");
    let mut w = GgufWriter::new();
    for (k, v) in all_value_types() {
        w.set(k, v);
    }
    w.set("t.u8", GgufValue::U8(3)); // replaces in place, keeps the position
    w.write(&path).unwrap();

    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.metadata.len(), all_value_types().len());
    for (k, v) in all_value_types() {
        let want = if k == "t.u8" { GgufValue::U8(3) } else { v };
        assert_eq!(f.get(k), Some(&want), "{k}");
    }
    let bytes = std::fs::read(&path).unwrap();
    let positions: Vec<usize> = all_value_types()
        .iter()
        .map(|(k, _)| {
            let needle = [&(k.len() as u64).to_le_bytes()[..], k.as_bytes()].concat();
            bytes
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap()
        })
        .collect();
    assert!(
        positions.windows(2).all(|p| p[0] < p[1]),
        "insertion order: {positions:?}"
    );
}

#[test]
fn tensors_of_every_written_type_round_trip() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("tensors.gguf");
    let cases: Vec<(&str, Vec<usize>, GgmlType)> = vec![
        ("f32.1d", vec![7], GgmlType::F32),
        ("f32.4d", vec![2, 3, 1, 5], GgmlType::F32),
        ("f16", vec![3, 33], GgmlType::F16),
        ("bf16", vec![5, 2], GgmlType::BF16),
        ("q8_0", vec![4, 64], GgmlType::Q8_0),
        ("q4_0", vec![3, 32], GgmlType::Q4_0),
        ("q4_1", vec![2, 2, 96], GgmlType::Q4_1),
        ("q5_0", vec![1, 32], GgmlType::Q5_0),
        ("q5_1", vec![2, 32], GgmlType::Q5_1),
        ("q4_k", vec![3, 512], GgmlType::Q4K),
        ("q6_k", vec![2, 256], GgmlType::Q6K),
    ];
    let mut w = GgufWriter::new();
    w.set("general.architecture", GgufValue::String("llama".into()));
    for (i, (name, shape, ty)) in cases.iter().enumerate() {
        let data = weights(shape.iter().product(), i as u32);
        w.add_tensor(*name, shape, *ty, &data).unwrap();
    }
    w.write(&path).unwrap();

    let f = GgufFile::open(&path).unwrap();
    for (i, (name, shape, ty)) in cases.iter().enumerate() {
        let data = weights(shape.iter().product(), i as u32);
        let info = f.tensor_info(name).unwrap();
        assert_eq!(info.ggml_type, *ty, "{name}");
        assert_eq!(info.offset % 32, 0, "{name}: aligned");
        let (got, got_shape) = f.tensor_f32(name).unwrap();
        assert_eq!(&got_shape, shape, "{name}");
        // Exactly what quantize + dequantize give (for F32, the data itself)...
        let want = dequantize(*ty, &quantize(*ty, &data).unwrap(), data.len()).unwrap();
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}"
        );
        // ...which is close to the data. Outliers of 8 set the step of their block: half a step
        // is 8/127/2 for Q8_0 and 8/32/2 for Q6_K's 16-value sub-blocks; the 4- and 5-bit types
        // get a whole step of about 1.
        let tolerance = match ty {
            GgmlType::F32 => 0.0,
            GgmlType::F16 => 1e-3,
            GgmlType::BF16 => 8e-3,
            GgmlType::Q8_0 => 0.035,
            GgmlType::Q6K => 0.13,
            _ => 1.2,
        };
        for (a, b) in data.iter().zip(&got) {
            assert!((a - b).abs() <= tolerance, "{name}: {a} came back as {b}");
        }
    }
}

#[test]
fn custom_alignment_is_honoured() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("aligned.gguf");
    let mut w = GgufWriter::new();
    w.set("general.alignment", GgufValue::U32(256));
    w.add_tensor("a", &[3], GgmlType::F32, &[1.0, 2.0, 3.0])
        .unwrap();
    w.add_tensor("b", &[32], GgmlType::Q8_0, &weights(32, 9))
        .unwrap();
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    for t in &f.tensors {
        assert_eq!(t.offset % 256, 0, "{}", t.name);
    }
    assert_eq!(f.tensor_f32("a").unwrap(), (vec![1.0, 2.0, 3.0], vec![3]));
    assert_eq!(
        std::fs::metadata(&path).unwrap().len() % 256,
        0,
        "padded like gguf-py"
    );
}

#[test]
fn tensor_f32_errors_name_file_and_tensor() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("ints.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor("ids", &[4], GgmlType::F32, &[0.0; 4]).unwrap();
    w.write(&path).unwrap();
    let file = path.display().to_string();
    let err = format!(
        "{:#}",
        GgufFile::open(&path)
            .unwrap()
            .tensor_f32("nope")
            .unwrap_err()
    );
    assert!(
        err.contains(&file) && err.contains("no tensor named \"nope\""),
        "{err}"
    );

    // Relabel the F32 tensor as I32 (same size), a type Hone does not convert.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(3).position(|w| w == b"ids").unwrap() + 3 + 4 + 8;
    bytes[at..at + 4].copy_from_slice(&26u32.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let err = format!(
        "{:#}",
        GgufFile::open(&path)
            .unwrap()
            .tensor_f32("ids")
            .unwrap_err()
    );
    assert!(err.contains(&file) && err.contains("tensor ids"), "{err}");
    assert!(
        err.contains("dequantizing I32 tensors is not supported"),
        "{err}"
    );
}

fn add_err(w: &mut GgufWriter, name: &str, shape: &[usize], ty: GgmlType, n: usize) -> String {
    let err = w.add_tensor(name, shape, ty, &vec![0.5; n]).err();
    format!("{:#}", err.expect("add_tensor refuses"))
}

#[test]
fn writer_refuses_bad_tensors_and_metadata() {
    let mut w = GgufWriter::new();
    w.add_tensor("x", &[32], GgmlType::F32, &[0.0; 32]).unwrap();
    assert!(add_err(&mut w, "x", &[32], GgmlType::F32, 32).contains("added twice"));
    assert!(add_err(&mut w, "y", &[2, 16], GgmlType::F32, 31).contains("holds 32 values, got 31"));
    assert!(add_err(&mut w, "y", &[2, 16], GgmlType::Q4_0, 32).contains("rows of 16 values"));
    assert!(add_err(&mut w, "y", &[1; 5], GgmlType::F32, 1).contains("5 dimensions"));
    assert!(add_err(&mut w, &"n".repeat(64), &[1], GgmlType::F32, 1).contains("1 to 63 bytes"));
    assert!(add_err(&mut w, "y", &[256], GgmlType::Q3K, 256).contains("Q3_K is not supported"));

    let dir = TempDir::new().unwrap();
    let path = dir.path().join("bad.gguf");
    for (value, problem) in [
        (GgufValue::Array(vec![]), "empty array"),
        (
            GgufValue::Array(vec![GgufValue::U8(1), GgufValue::I8(1)]),
            "mixes u8 and i8",
        ),
        (
            GgufValue::Array(vec![GgufValue::Array(vec![GgufValue::U8(1)])]),
            "arrays of arrays",
        ),
    ] {
        let mut w = GgufWriter::new();
        w.set("k", value);
        let err = format!("{:#}", w.write(&path).unwrap_err());
        assert!(
            err.contains(&path.display().to_string()) && err.contains(problem),
            "{err}"
        );
        assert!(!path.exists());
    }
}

#[test]
fn write_replaces_atomically_and_cleans_up_on_failure() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("model.gguf");
    let mut w = GgufWriter::new();
    w.set("n", GgufValue::U32(1));
    w.write(&path).unwrap();
    w.set("n", GgufValue::U32(2));
    w.write(&path).unwrap(); // over an existing file
    assert_eq!(
        GgufFile::open(&path).unwrap().get("n"),
        Some(&GgufValue::U32(2))
    );
    assert_eq!(
        dir_entries(dir.path()),
        ["model.gguf"],
        "no temporary left behind"
    );

    // The rename fails when the target is a non-empty directory: error, temporary removed.
    let blocked = dir.path().join("blocked.gguf");
    std::fs::create_dir_all(blocked.join("inside")).unwrap();
    let err = format!("{:#}", w.write(&blocked).unwrap_err());
    assert!(err.contains(&blocked.display().to_string()), "{err}");
    assert_eq!(dir_entries(dir.path()), ["blocked.gguf", "model.gguf"]);

    let missing = dir.path().join("no/such/dir/x.gguf");
    let err = format!("{:#}", w.write(&missing).unwrap_err());
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("cannot create"),
        "{err}"
    );
}
