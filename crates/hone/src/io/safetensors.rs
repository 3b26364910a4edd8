//! Reading HF checkpoint weights: single or sharded safetensors, converted to f32 candle tensors.
//!
//! Pickled checkpoints (`pytorch_model.bin`, `*.pt`, `*.pth`) are refused: unpickling runs arbitrary
//! code, which a fine-tuning tool that users point at downloaded files must never do.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";
const PICKLED: [&str; 4] = [
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "model.pt",
    "model.pth",
];

/// The safetensors files of a checkpoint directory, in load order.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if index.exists() {
        return shard_files(&index);
    }
    let single = dir.join(SINGLE_FILE);
    if single.exists() {
        return Ok(vec![single]);
    }
    if let Some(p) = PICKLED.iter().map(|n| dir.join(n)).find(|p| p.exists()) {
        bail!(
            "{}: pickled PyTorch weights are refused (loading them can execute arbitrary code). Convert them to \
             safetensors first, e.g. `python -c \"from transformers import AutoModelForCausalLM as M; \
             M.from_pretrained('{}').save_pretrained('OUT_DIR', safe_serialization=True)\"`",
            p.display(),
            dir.display()
        );
    }
    bail!(
        "{}: no {SINGLE_FILE} or {INDEX_FILE} in this model directory",
        dir.display()
    )
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index)
        .with_context(|| format!("{}: cannot read", index.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", index.display()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .with_context(|| format!("{}: no `weight_map` object", index.display()))?;
    let mut files: Vec<String> = map
        .values()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .with_context(|| {
            format!(
                "{}: `weight_map` values must be file names",
                index.display()
            )
        })?;
    files.sort();
    files.dedup();
    let dir = index.parent().unwrap_or(Path::new("."));
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Load every tensor of the given safetensors files as f32 on `device`, keyed by name.
pub fn load_f32(files: &[PathBuf], device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for path in files {
        let tensors = load_file_f32(path, device)?;
        for (name, t) in tensors {
            if out.insert(name.clone(), t).is_some() {
                bail!(
                    "{}: tensor {name} also appears in another shard",
                    path.display()
                );
            }
        }
    }
    Ok(out)
}

fn load_file_f32(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let (mmap, tensors) = map_file(path)?;
    let mut out = BTreeMap::new();
    for t in tensors {
        let f32 = t.to_f32(&mmap, device)?;
        out.insert(t.name, f32);
    }
    Ok(out)
}

/// A tensor of a memory-mapped safetensors file: where its bytes are, and what they are.
pub struct MappedTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Byte range within the file.
    pub range: Range<usize>,
    file: PathBuf,
}

impl MappedTensor {
    /// The tensor converted to f32 (exact for every dtype Hone reads).
    pub fn to_f32(&self, map: &Mmap, device: &Device) -> Result<Tensor> {
        Tensor::from_raw_buffer(&map[self.range.clone()], self.dtype, &self.shape, device)
            .and_then(|t| t.to_dtype(DType::F32))
            .with_context(|| format!("{}: tensor {}", self.file.display(), self.name))
    }
}

/// Maps a safetensors file and lists its tensors, checking each dtype is one Hone reads.
pub fn map_file(path: &Path) -> Result<(Arc<Mmap>, Vec<MappedTensor>)> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    // SAFETY: read-only map of a file we do not modify.
    let mmap =
        unsafe { Mmap::map(&file) }.with_context(|| format!("{}: cannot map", path.display()))?;
    let st = SafeTensors::deserialize(&mmap)
        .map_err(|e| anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => bail!(
                "{}: tensor {name} has dtype {other:?}; Hone reads F32, F16 and BF16 weights",
                path.display()
            ),
        };
        let start = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
        tensors.push(MappedTensor {
            name,
            dtype,
            shape: view.shape().to_vec(),
            range: start..start + view.data().len(),
            file: path.to_path_buf(),
        });
    }
    drop(st);
    Ok((Arc::new(mmap), tensors))
}

/// A named f32 tensor to write: name, shape, values.
pub type F32Tensor<'a> = (String, Vec<usize>, &'a [f32]);

/// Writes f32 tensors to a safetensors file, atomically (temporary file, then rename).
pub fn write_f32(
    path: &Path,
    tensors: &[F32Tensor],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let data = serialize_f32(tensors, metadata).with_context(|| path.display().to_string())?;
    crate::io::atomic::write_file(path, |out| Ok(std::io::Write::write_all(out, &data)?))
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// The bytes of a safetensors file holding f32 tensors.
pub fn serialize_f32(tensors: &[F32Tensor], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, values)| values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), data)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| anyhow::anyhow!("tensor {name}: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Every tensor of one safetensors file as f32 values, keyed by name.
pub fn read_f32_values(path: &Path) -> Result<HashMap<String, Vec<f32>>> {
    load_file_f32(path, &Device::Cpu)?
        .into_iter()
        .map(|(name, t)| Ok((name, t.flatten_all()?.to_vec1::<f32>()?)))
        .collect()
}
