//! GGUF reader: header, metadata and tensor directory of a llama.cpp model file (versions 2 and 3).
//!
//! The file is memory-mapped; tensors are read lazily by name. Every length and offset read from the
//! header is checked against the file size, so a truncated or lying file is an error, never a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use memmap2::{Mmap, MmapOptions};

pub use super::gguf_value::GgufValue;
use crate::quant::{self, GgmlType};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Real files nest arrays at most once or twice; the limit only stops hostile input.
const MAX_ARRAY_DEPTH: usize = 8;

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute offset of the tensor's first byte in the file.
    pub offset: u64,
    /// Size of the tensor's data in bytes.
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    /// Row-major shape as PyTorch and safetensors write it (ggml's dims reversed).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    mmap: Arc<Mmap>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, MmapOptions::new())
    }

    /// [`Self::open`] for running the model in place: every page of the file is mapped up front
    /// (`MAP_POPULATE`, as llama.cpp maps weights), one pass instead of a page fault per 4 KiB on
    /// the first tokens.
    pub fn open_populated(path: &Path) -> Result<Self> {
        let mut options = MmapOptions::new();
        options.populate();
        Self::open_with(path, options)
    }

    fn open_with(path: &Path, options: MmapOptions) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: the map is read-only; a file truncated underneath us is the user's doing, as with
        // every mmap-based loader (llama.cpp, safetensors).
        let mmap = unsafe { options.map(&file) }
            .with_context(|| format!("{}: cannot map", path.display()))?;
        let (version, metadata, tensors) =
            parse(&mmap).with_context(|| format!("{}: not a valid GGUF file", path.display()))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            mmap: Arc::new(mmap),
        })
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (bounds were checked when the file was opened).
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> &[u8] {
        &self.mmap[info.offset as usize..(info.offset + info.n_bytes) as usize]
    }

    /// The file's memory map, for weights used in place.
    pub fn map(&self) -> Arc<Mmap> {
        Arc::clone(&self.mmap)
    }

    /// A tensor dequantized to f32, with its row-major shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self
            .tensor_info(name)
            .with_context(|| format!("{}: no tensor named {name:?}", self.path.display()))?;
        let data = quant::dequantize(
            info.ggml_type,
            self.tensor_bytes(info),
            info.n_elements() as usize,
        )
        .with_context(|| format!("{}: tensor {name}", self.path.display()))?;
        Ok((data, info.shape()))
    }
}

/// Does this file start with the GGUF magic? Used to tell GGUF from other formats by content.
pub fn has_magic(bytes: &[u8]) -> bool {
    bytes.len() >= 4 && &bytes[..4] == MAGIC
}

type Parsed = (u32, BTreeMap<String, GgufValue>, Vec<GgufTensorInfo>);

fn parse(bytes: &[u8]) -> Result<Parsed> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4).ok() != Some(MAGIC.as_slice()) {
        bail!("bad magic (expected \"GGUF\")");
    }
    let version = r.u32()?;
    if version != 2 && version != 3 {
        bail!("unsupported GGUF version {version} (Hone reads versions 2 and 3)");
    }
    let n_tensors = r.u64()?;
    let n_kv = r.u64()?;
    // Every entry takes at least 8 bytes, so a count larger than that is a lying header.
    if n_tensors > bytes.len() as u64 / 8 || n_kv > bytes.len() as u64 / 8 {
        bail!("header claims {n_tensors} tensors and {n_kv} metadata entries, more than the file can hold");
    }
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = r
            .string()
            .with_context(|| format!("metadata entry {i}: key"))?;
        let ty = r.u32()?;
        let value = r
            .value(ty, 0)
            .with_context(|| format!("metadata {key:?}"))?;
        if metadata.insert(key.clone(), value).is_some() {
            bail!("metadata key {key:?} appears twice");
        }
    }
    let mut infos: Vec<GgufTensorInfo> = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let info = r
            .string()
            .and_then(|name| r.tensor_info(name))
            .with_context(|| format!("tensor entry {i}"))?;
        if infos.iter().any(|t| t.name == info.name) {
            bail!("tensor {} appears twice", info.name);
        }
        infos.push(info);
    }
    let alignment = match metadata.get("general.alignment") {
        Some(v) => v
            .as_u64()
            .filter(|a| a.is_power_of_two())
            .context("general.alignment is not a power of two")?,
        None => DEFAULT_ALIGNMENT,
    };
    let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
    for info in &mut infos {
        if !info.offset.is_multiple_of(alignment) {
            bail!(
                "tensor {}: data offset {} is not a multiple of the alignment {alignment}",
                info.name,
                info.offset
            );
        }
        info.offset = info
            .offset
            .checked_add(data_start)
            .with_context(|| format!("tensor {}: data offset overflows", info.name))?;
        let end = info.offset.checked_add(info.n_bytes);
        if end.is_none_or(|e| e > bytes.len() as u64) {
            bail!(
                "tensor {} ({} bytes at offset {}) runs past the end of the file ({} bytes): truncated or corrupt",
                info.name,
                info.n_bytes,
                info.offset,
                bytes.len()
            );
        }
    }
    Ok((version, metadata, infos))
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            bail!(
                "unexpected end of file at byte {} (wanted {n} more bytes): truncated or corrupt header",
                self.pos
            );
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        let len = usize::try_from(len).ok().filter(|&l| l <= self.bytes.len());
        let Some(len) = len else {
            bail!(
                "string length at byte {} exceeds the file size",
                self.pos - 8
            );
        };
        let raw = self.take(len)?;
        // GGUF strings are UTF-8; some converters wrote invalid bytes in vocabularies, keep them.
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    /// A value of type `ty`; `depth` counts enclosing arrays, limited so that a file of nested
    /// array headers cannot exhaust the stack.
    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue> {
        use GgufValue::*;
        Ok(match ty {
            0 => U8(self.array::<1>()?[0]),
            1 => I8(self.array::<1>()?[0] as i8),
            2 => U16(u16::from_le_bytes(self.array()?)),
            3 => I16(i16::from_le_bytes(self.array()?)),
            4 => U32(self.u32()?),
            5 => I32(i32::from_le_bytes(self.array()?)),
            6 => F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Bool(false),
                1 => Bool(true),
                b => bail!("bool value {b} is neither 0 nor 1"),
            },
            8 => String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    bail!("arrays nested more than {MAX_ARRAY_DEPTH} deep");
                }
                let item_ty = self.u32()?;
                let n = self.u64()?;
                if n > (self.bytes.len() - self.pos) as u64 {
                    bail!("array of {n} items exceeds the file size");
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                Array(items)
            }
            10 => U64(self.u64()?),
            11 => I64(i64::from_le_bytes(self.array()?)),
            12 => F64(f64::from_le_bytes(self.array()?)),
            _ => bail!("unknown metadata value type {ty}"),
        })
    }

    fn tensor_info(&mut self, name: String) -> Result<GgufTensorInfo> {
        let n_dims = self.u32()?;
        if n_dims == 0 || n_dims > 4 {
            bail!("tensor {name}: {n_dims} dimensions (ggml allows 1 to 4)");
        }
        let dims = (0..n_dims)
            .map(|_| self.u64())
            .collect::<Result<Vec<_>>>()?;
        let ggml_type = GgmlType::from_id(self.u32()?).with_context(|| format!("tensor {name}"))?;
        // ggml quantizes rows independently, so each row must be whole blocks.
        if !dims[0].is_multiple_of(ggml_type.block_size() as u64) {
            bail!(
                "tensor {name}: rows of {} values are not whole {} blocks ({} values each)",
                dims[0],
                ggml_type.name(),
                ggml_type.block_size()
            );
        }
        let offset = self.u64()?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .with_context(|| format!("tensor {name}: element count overflows"))?;
        let n_bytes = ggml_type
            .bytes_for(n_elements)
            .with_context(|| format!("tensor {name}"))?;
        Ok(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        })
    }
}
