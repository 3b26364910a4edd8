//! Whether a model's weights fit in memory, decided from the file's tensor table before any weight
//! is read: an allocation that fails half-way aborts the process (Rust's allocator cannot report
//! it), and without a limit the kernel's OOM killer ends it instead — both with no useful message.

use std::collections::HashMap;

use anyhow::{bail, Result};

use super::config::{text_model_name, Architecture, ModelConfig};
use super::load::Precision;
use crate::io::gguf::GgufFile;
use crate::io::safetensors;
use crate::io::source::ModelSource;
use crate::quant::GgmlType;

/// Fails, saying what is needed and what is available, when the weights would not fit.
pub fn check_fits(source: &ModelSource, precision: Precision) -> Result<()> {
    let needed = weight_bytes(source, precision)?;
    match available_bytes().and_then(|a| refusal(needed, a, precision)) {
        Some(why) => bail!("{}: {why}", source.path().display()),
        None => Ok(()),
    }
}

/// Why `needed` bytes of weights held with `precision` cannot load in `available`; None if they fit.
fn refusal(needed: u64, available: u64, precision: Precision) -> Option<String> {
    if needed <= available {
        return None;
    }
    let (held, hint) = match precision {
        Precision::Exact => (
            " as f32 (--exact)",
            "; without --exact the weights stay in their stored type",
        ),
        Precision::Stored => ("", "; a smaller quantization of the model would fit"),
    };
    Some(format!(
        "the weights need {} of memory{held}, only {} is available{hint}",
        gib(needed),
        gib(available)
    ))
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Bytes the weights take once loaded with `precision`.
fn weight_bytes(source: &ModelSource, precision: Precision) -> Result<u64> {
    let stored = |ty: GgmlType, dims: usize, elements: u64, bytes: u64| match precision {
        Precision::Stored if dims == 2 && ty != GgmlType::F32 => bytes,
        _ => elements * 4,
    };
    Ok(match source {
        ModelSource::Gguf(path) => GgufFile::open(path)?
            .tensors
            .iter()
            .map(|t| stored(t.ggml_type, t.dims.len(), t.n_elements(), t.n_bytes))
            .sum(),
        ModelSource::HfDir(dir) => {
            let mut total = 0;
            for path in safetensors::checkpoint_files(dir)? {
                for t in safetensors::map_file(&path)?.1 {
                    if text_model_name(&t.name).is_none() {
                        continue;
                    }
                    let ty = held_type(t.dtype);
                    let elements = t.shape.iter().product::<usize>() as u64;
                    total += stored(ty, t.shape.len(), elements, t.range.len() as u64);
                }
            }
            total
        }
    })
}

/// Each tensor's stored type and size in bytes, by HF name, read from the file's tensor table
/// (no weight is read). Tensors Hone does not use are left out.
pub fn stored_tensors(source: &ModelSource) -> Result<HashMap<String, (GgmlType, u64)>> {
    let mut out = HashMap::new();
    match source {
        ModelSource::Gguf(path) => {
            let gguf = GgufFile::open(path)?;
            let arch = gguf.get("general.architecture").and_then(|v| v.as_str());
            let arch = arch
                .and_then(|a| {
                    let fused_qkv = gguf.tensor_info("blk.0.attn_qkv.weight").is_some();
                    Architecture::from_gguf_arch(a, fused_qkv)
                })
                .unwrap_or(Architecture::Llama);
            for t in gguf.tensors {
                if let Some(name) = super::weights::hf_name(&t.name, arch) {
                    out.insert(name, (t.ggml_type, t.n_bytes));
                }
            }
        }
        ModelSource::HfDir(dir) => {
            let cfg = ModelConfig::from_hf_file(&dir.join("config.json"))?;
            for path in safetensors::checkpoint_files(dir)? {
                for t in safetensors::map_file(&path)?.1 {
                    // A multimodal checkpoint's vision parts are not loaded.
                    let Some(name) = super::weights::checkpoint_name(&cfg, &t.name) else {
                        continue;
                    };
                    let ty = held_type(t.dtype);
                    out.insert(name, (ty, t.range.len() as u64));
                }
            }
        }
    }
    Ok(out)
}

/// The type a safetensors tensor is held in: f16 and bf16 as stored, anything else as f32.
fn held_type(dtype: candle_core::DType) -> GgmlType {
    match dtype {
        candle_core::DType::F16 => GgmlType::F16,
        candle_core::DType::BF16 => GgmlType::BF16,
        _ => GgmlType::F32,
    }
}

/// Memory this process can still take: the least of the system's available memory, the cgroup's
/// remaining allowance and the address-space limit (`ulimit -v`) left. None where none is known.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let system = meminfo
        .as_deref()
        .and_then(|m| kib_field(m, "MemAvailable:"));
    let cgroup = cgroup_remaining();
    let address_space = address_space_remaining();
    [system, cgroup, address_space].into_iter().flatten().min()
}

/// `field` of a `/proc` file in kB, as bytes.
fn kib_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// cgroup v2: `memory.max − memory.current` of this process's group ("max" is no limit).
fn cgroup_remaining() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = std::path::Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let max: u64 = read("memory.max")?.trim().parse().ok()?;
    let current: u64 = read("memory.current")?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

/// `RLIMIT_AS` less the address space already in use (`VmSize`).
fn address_space_remaining() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    let soft: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let used = kib_field(&status, "VmSize:")?;
    Some(soft.saturating_sub(used))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields() {
        let text = "MemTotal:       24000000 kB\nMemAvailable:    1000 kB\n";
        assert_eq!(kib_field(text, "MemAvailable:"), Some(1000 * 1024));
        assert_eq!(kib_field(text, "Missing:"), None);
    }

    #[test]
    fn weights_that_do_not_fit_are_refused_with_both_sizes() {
        // A Llama-2-7B shape as f32 (6.88e9 parameters) on a 24 GB machine.
        let why = refusal(27_515_699_200, 23 << 30, Precision::Exact).unwrap();
        assert_eq!(
            why,
            "the weights need 25.6 GiB of memory as f32 (--exact), only 23.0 GiB is available; \
             without --exact the weights stay in their stored type"
        );
        assert!(refusal(3_924_001_376, 23 << 30, Precision::Stored).is_none());
        assert!(refusal(5 << 30, 4 << 30, Precision::Stored)
            .unwrap()
            .contains("smaller quantization"));
    }

    #[test]
    fn this_machine_reports_some_memory() {
        assert!(available_bytes().is_some_and(|b| b > 0));
    }
}
