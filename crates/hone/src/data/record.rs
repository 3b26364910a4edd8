//! What a run trained on, recorded beside its config, as the guide asks ("record every
//! hyperparameter and data change"): each dataset file's SHA-256, size, rows read and rows used,
//! written to the output directory as `dataset_record.json` when the run starts.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The record's file name in a run's output directory.
pub const DATASET_RECORD: &str = "dataset_record.json";

/// One dataset file as a run read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUse {
    pub path: PathBuf,
    /// The config key that named it: `dataset` (training, and the `val_size` split of it) or
    /// `eval_dataset`.
    pub role: &'static str,
    /// Rows in the file, usable or not.
    pub rows: usize,
    /// Rows the run took: those that converted, up to `max_samples`.
    pub used: usize,
}

/// Lowers `used` so that the files, in order, give at most `max` rows (`max_samples` keeps the
/// first rows of the concatenated files).
pub fn keep_first(files: &mut [FileUse], max: usize) {
    let mut left = max;
    for file in files {
        file.used = file.used.min(left);
        left -= file.used;
    }
}

/// The record as JSON: `{"files": [{"path", "role", "sha256", "bytes", "rows", "rows_used"}],
/// "train_rows", "eval_rows"}` (rows of the encoded training and validation sets).
pub fn record(files: &[FileUse], train_rows: usize, eval_rows: usize) -> Result<Value> {
    let files = files
        .iter()
        .map(|f| {
            let (sha256, bytes) = sha256_file(&f.path)?;
            Ok(json!({
                "path": f.path.display().to_string(),
                "role": f.role,
                "sha256": sha256,
                "bytes": bytes,
                "rows": f.rows,
                "rows_used": f.used,
            }))
        })
        .collect::<Result<Vec<Value>>>()?;
    Ok(json!({"files": files, "train_rows": train_rows, "eval_rows": eval_rows}))
}

/// The file's SHA-256 (lowercase hex, as `sha256sum` prints it) and its size in bytes.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((hex, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_matches_the_standard_test_vector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc.txt");
        std::fs::write(&path, "abc").unwrap();
        let (hex, bytes) = sha256_file(&path).unwrap();
        // FIPS 180-2's example "abc".
        assert_eq!(
            hex,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(bytes, 3);
        let err = sha256_file(&dir.path().join("missing.json")).unwrap_err();
        assert!(format!("{err:#}").contains("missing.json: cannot open"));
    }

    #[test]
    fn max_samples_takes_the_first_rows_of_the_files_in_order() {
        let file = |used| FileUse {
            path: PathBuf::from("f.json"),
            role: "dataset",
            rows: 10,
            used,
        };
        let mut files = vec![file(8), file(10), file(4)];
        keep_first(&mut files, 12);
        let used: Vec<usize> = files.iter().map(|f| f.used).collect();
        assert_eq!(used, [8, 4, 0]);
    }
}
