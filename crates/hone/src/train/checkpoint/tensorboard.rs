//! TensorBoard event files (`report_to: tensorboard`), as transformers' `TensorBoardCallback`
//! writes them through PyTorch's `SummaryWriter`: one file in
//! `logging_dir` (default `output_dir/runs/{%b%d_%H-%M-%S}_{host}`, the time in UTC), named
//! `events.out.tfevents.{unix time}.{host}.{pid}.0`; each logged entry's numbers as scalars at the
//! global step, tagged as `rewrite_logs` tags them (`eval_loss` → `eval/loss`, `loss` →
//! `train/loss`).
//!
//! The format is TFRecord framing (length, masked CRC-32C of the length, the bytes, masked
//! CRC-32C of the bytes) around `Event` protocol buffers. Written by hand: three small messages
//! (`Event`, `Summary`, `Summary.Value`) do not justify a protobuf code generator and its build
//! step, and the tests compare the bytes with TensorBoard's own writer.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::chat::format_utc;

/// An open event file.
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// Creates the event file in `logging_dir` (or `output_dir/runs/…` when None) and writes its
    /// version record.
    pub fn create(output_dir: &Path, logging_dir: Option<&Path>) -> Result<EventWriter> {
        let now = unix_now();
        let host = hostname();
        let dir = match logging_dir {
            Some(dir) => dir.to_path_buf(),
            None => {
                let time = format_utc(now as i64, "%b%d_%H-%M-%S");
                output_dir.join("runs").join(format!("{time}_{host}"))
            }
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let name = format!(
            "events.out.tfevents.{}.{host}.{}.0",
            now as u64,
            std::process::id()
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("{}: cannot create", path.display()))?;
        let mut writer = EventWriter { path, file };
        writer.write(&version_event(now))?;
        Ok(writer)
    }

    /// The event file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `scalars` (tag, value) at `step`, now, and flushes.
    pub fn scalars(&mut self, step: u64, scalars: &[(String, f64)]) -> Result<()> {
        let now = unix_now();
        for (tag, value) in scalars {
            self.write(&scalar_event(now, step, tag, *value as f32))?;
        }
        self.file
            .flush()
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }

    fn write(&mut self, event: &[u8]) -> Result<()> {
        self.file
            .write_all(&record(event))
            .with_context(|| format!("{}: cannot write", self.path.display()))
    }
}

/// A logged entry's numbers under transformers' `rewrite_logs` tags.
pub fn rewrite_logs(entry: &serde_json::Map<String, serde_json::Value>) -> Vec<(String, f64)> {
    entry
        .iter()
        .filter_map(|(key, value)| {
            let value = value.as_f64()?;
            let tag = match (key.strip_prefix("eval_"), key.strip_prefix("test_")) {
                (Some(rest), _) => format!("eval/{rest}"),
                (_, Some(rest)) => format!("test/{rest}"),
                _ => format!("train/{key}"),
            };
            Some((tag, value))
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The machine's name, as Python's `socket.gethostname()`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// TFRecord framing: length, its masked CRC, the data, its masked CRC.
fn record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// TFRecord's CRC-32C, rotated and offset so that a CRC of data holding CRCs stays strong.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `Event { wall_time = 1; file_version = 3 }`: the first record of every file.
fn version_event(wall_time: f64) -> Vec<u8> {
    let mut event = Vec::new();
    double_field(&mut event, 1, wall_time);
    bytes_field(&mut event, 3, b"brain.Event:2");
    event
}

/// `Event { wall_time = 1; step = 2; summary = 5 { value = 1 { tag = 1; simple_value = 2 } } }`.
fn scalar_event(wall_time: f64, step: u64, tag: &str, value: f32) -> Vec<u8> {
    let mut summary_value = Vec::new();
    bytes_field(&mut summary_value, 1, tag.as_bytes());
    // In a oneof: written even at 0.0 (the step, a plain proto3 field, is left out at 0).
    summary_value.push(2 << 3 | 5);
    summary_value.extend_from_slice(&value.to_le_bytes());
    let mut summary = Vec::new();
    bytes_field(&mut summary, 1, &summary_value);
    let mut event = Vec::new();
    double_field(&mut event, 1, wall_time);
    if step != 0 {
        event.push(2 << 3);
        varint(&mut event, step);
    }
    bytes_field(&mut event, 5, &summary);
    event
}

fn double_field(out: &mut Vec<u8>, field: u8, value: f64) {
    out.push(field << 3 | 1);
    out.extend_from_slice(&value.to_le_bytes());
}

fn bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/tensorboard")
            .join(name)
    }

    /// The records TensorBoard's own `EventFileWriter` wrote for the same events
    /// (scripts/golden/tensorboard_events.py): byte for byte.
    #[test]
    fn records_equal_tensorboards_writer() {
        let golden = std::fs::read(fixture("scalars.tfevents")).unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("scalars.json")).unwrap())
                .unwrap();
        let mut ours = record(&version_event(meta["wall_time"].as_f64().unwrap()));
        for event in meta["scalars"].as_array().unwrap() {
            let tag = event["tag"].as_str().unwrap();
            let step = event["step"].as_u64().unwrap();
            let value = event["value"].as_f64().unwrap() as f32;
            let wall_time = event["wall_time"].as_f64().unwrap();
            ours.extend(record(&scalar_event(wall_time, step, tag, value)));
        }
        assert_eq!(ours, golden);
    }

    #[test]
    fn logs_are_tagged_as_transformers_tags_them() {
        let entry = serde_json::json!({"loss": 1.5, "grad_norm": 0.25, "eval_loss": 2.0,
            "eval_rewards/accuracies": 0.5, "epoch": 1.0, "note": "text"});
        let tags: Vec<String> = rewrite_logs(entry.as_object().unwrap())
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(
            tags,
            [
                "train/loss",
                "train/grad_norm",
                "eval/loss",
                "eval/rewards/accuracies",
                "train/epoch"
            ]
        );
    }

    #[test]
    fn a_file_is_created_where_transformers_puts_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path(), None).unwrap();
        writer.scalars(3, &[("train/loss".into(), 1.0)]).unwrap();
        let path = writer.path().to_path_buf();
        let run = path.parent().unwrap();
        assert_eq!(run.parent().unwrap(), dir.path().join("runs"));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        assert!(
            name.ends_with(&format!(".{}.0", std::process::id())),
            "{name}"
        );
        let bytes = std::fs::read(&path).unwrap();
        // The version record (13-byte string) then one scalar record.
        assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()), 24);
    }
}
