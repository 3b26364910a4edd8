//! GGUF reader: header, metadata and tensor directory of a llama.cpp model file (versions 2 and 3).
//!
//! The file is memory-mapped; tensors are read lazily by name. Every length and offset read from the
//! header is checked against the file size, so a truncated or lying file is an error, never a panic.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;

use crate::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value, as typed in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// Any integer type as u64 (negative values give None).
    pub fn as_u64(&self) -> Option<u64> {
        use GgufValue::*;
        match *self {
            U8(v) => Some(v as u64),
            U16(v) => Some(v as u64),
            U32(v) => Some(v as u64),
            U64(v) => Some(v),
            I8(v) => u64::try_from(v).ok(),
            I16(v) => u64::try_from(v).ok(),
            I32(v) => u64::try_from(v).ok(),
            I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer or float type as i64 (floats must be whole).
    pub fn as_i64(&self) -> Option<i64> {
        use GgufValue::*;
        match *self {
            I8(v) => Some(v as i64),
            I16(v) => Some(v as i64),
            I32(v) => Some(v as i64),
            I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Any numeric type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        use GgufValue::*;
        match *self {
            F32(v) => Some(v as f64),
            F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The type name used in error messages.
    pub fn type_name(&self) -> &'static str {
        use GgufValue::*;
        match self {
            U8(_) => "u8",
            I8(_) => "i8",
            U16(_) => "u16",
            I16(_) => "i16",
            U32(_) => "u32",
            I32(_) => "i32",
            F32(_) => "f32",
            Bool(_) => "bool",
            String(_) => "string",
            Array(_) => "array",
            U64(_) => "u64",
            I64(_) => "i64",
            F64(_) => "f64",
        }
    }
}

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
    mmap: Mmap,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        // SAFETY: the map is read-only; a file truncated underneath us is the user's doing, as with
        // every mmap-based loader (llama.cpp, safetensors).
        let mmap = unsafe { Mmap::map(&file) }
            .with_context(|| format!("{}: cannot map", path.display()))?;
        let (version, metadata, tensors) =
            parse(&mmap).with_context(|| format!("{}: not a valid GGUF file", path.display()))?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            mmap,
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
        let key = r.string().with_context(|| format!("metadata entry {i}: key"))?;
        let ty = r.u32()?;
        let value = r.value(ty).with_context(|| format!("metadata {key:?}"))?;
        metadata.insert(key, value);
    }
    let mut infos = Vec::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = r.string().with_context(|| format!("tensor entry {i}: name"))?;
        let info = r.tensor_info(name)?;
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
        info.offset = info
            .offset
            .checked_add(data_start)
            .context("tensor offset overflows")?;
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
            bail!("string length at byte {} exceeds the file size", self.pos - 8);
        };
        let raw = self.take(len)?;
        // GGUF strings are UTF-8; some converters wrote invalid bytes in vocabularies, keep them.
        Ok(String::from_utf8_lossy(raw).into_owned())
    }

    fn value(&mut self, ty: u32) -> Result<GgufValue> {
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
                let item_ty = self.u32()?;
                let n = self.u64()?;
                if n > (self.bytes.len() - self.pos) as u64 {
                    bail!("array of {n} items exceeds the file size");
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(item_ty)?);
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
        let dims = (0..n_dims).map(|_| self.u64()).collect::<Result<Vec<_>>>()?;
        let ggml_type = GgmlType::from_id(self.u32()?).with_context(|| format!("tensor {name}"))?;
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

impl GgufFile {
    /// TEMPORARY until the quant branch lands.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>)> {
        let info = self.tensor_info(name).context("absent")?;
        let b = self.tensor_bytes(info);
        let v = b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        Ok((v, info.shape()))
    }
}
