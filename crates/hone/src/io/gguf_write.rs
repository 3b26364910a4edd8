//! GGUF writer (version 3): metadata and f32 tensors in, one llama.cpp-readable file out.
//!
//! The layout is gguf-py's `GGUFWriter`: header, metadata in insertion order, tensor directory,
//! then each tensor's data starting on a multiple of `general.alignment` (32 unless set), padded
//! with zeros. Tensors are quantized when added. The file is written under a temporary name
//! beside the target and renamed into place, so a failed write never leaves a partial file there.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::atomic;
use super::gguf::GgufValue;
use crate::quant::{quantize, GgmlType};

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
const DEFAULT_ALIGNMENT: usize = 32;
/// llama.cpp's GGML_MAX_NAME: tensor names must be shorter (the terminating NUL takes a byte).
const MAX_NAME: usize = 64;

/// A GGUF file being assembled in memory.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<Tensor>,
}

struct Tensor {
    name: String,
    /// ggml order (innermost first), as the file stores them.
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a metadata entry. Entries are written in the order first set; setting a key again
    /// replaces its value in place.
    pub fn set(&mut self, key: impl Into<String>, value: GgufValue) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor of row-major `shape` (as PyTorch writes it), quantized to `ty`.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        ty: GgmlType,
        data: &[f32],
    ) -> Result<&mut Self> {
        let name = name.into();
        ensure!(
            !name.is_empty() && name.len() < MAX_NAME,
            "tensor name {name:?} must be 1 to {} bytes long",
            MAX_NAME - 1
        );
        ensure!(
            !self.tensors.iter().any(|t| t.name == name),
            "tensor {name} added twice"
        );
        ensure!(
            (1..=4).contains(&shape.len()),
            "tensor {name}: shape {shape:?} has {} dimensions (ggml allows 1 to 4)",
            shape.len()
        );
        let n: usize = shape.iter().product();
        ensure!(
            n == data.len(),
            "tensor {name}: shape {shape:?} holds {n} values, got {}",
            data.len()
        );
        let row = shape[shape.len() - 1];
        ensure!(
            row.is_multiple_of(ty.block_size()),
            "tensor {name}: rows of {row} values cannot be stored as {} (blocks of {})",
            ty.name(),
            ty.block_size()
        );
        let data = quantize(ty, data).with_context(|| format!("tensor {name}"))?;
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        self.tensors.push(Tensor {
            name,
            dims,
            ty,
            data,
        });
        Ok(self)
    }

    /// Writes the file atomically: to a temporary file beside `path`, then renamed over it.
    pub fn write(&self, path: &Path) -> Result<()> {
        let written = self
            .header()
            .and_then(|header| atomic::write_file(path, |out| self.write_body(out, &header)));
        written.with_context(|| format!("{}: cannot write GGUF", path.display()))
    }

    fn write_body(&self, out: &mut impl Write, header: &[u8]) -> Result<()> {
        let alignment = self.alignment()?;
        let zeros = vec![0u8; alignment];
        out.write_all(header)?;
        out.write_all(&zeros[..padding(header.len(), alignment)])?;
        for t in &self.tensors {
            out.write_all(&t.data)?;
            out.write_all(&zeros[..padding(t.data.len(), alignment)])?;
        }
        Ok(())
    }

    /// `general.alignment` if set (GGUF stores it as u32), else 32.
    fn alignment(&self) -> Result<usize> {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, GgufValue::U32(a))) if a.is_power_of_two() => Ok(*a as usize),
            Some((_, v)) => bail!("general.alignment must be a u32 power of two, got {v:?}"),
        }
    }

    /// Everything before the first tensor's data: header, metadata, tensor directory.
    fn header(&self) -> Result<Vec<u8>> {
        let alignment = self.alignment()?;
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut b, key);
            b.extend_from_slice(&value.type_id().to_le_bytes());
            put_value(&mut b, value).with_context(|| format!("metadata {key:?}"))?;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_string(&mut b, &t.name);
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            let id = t
                .ty
                .id()
                .with_context(|| format!("tensor {}: {} has no GGUF type", t.name, t.ty.name()))?;
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
            offset += (t.data.len() + padding(t.data.len(), alignment)) as u64;
        }
        Ok(b)
    }
}

/// Zero bytes after `len` bytes to reach the next multiple of `alignment`.
fn padding(len: usize, alignment: usize) -> usize {
    len.next_multiple_of(alignment) - len
}

fn put_string(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_value(b: &mut Vec<u8>, value: &GgufValue) -> Result<()> {
    use GgufValue::*;
    match value {
        U8(v) => b.push(*v),
        I8(v) => b.extend_from_slice(&v.to_le_bytes()),
        U16(v) => b.extend_from_slice(&v.to_le_bytes()),
        I16(v) => b.extend_from_slice(&v.to_le_bytes()),
        U32(v) => b.extend_from_slice(&v.to_le_bytes()),
        I32(v) => b.extend_from_slice(&v.to_le_bytes()),
        F32(v) => b.extend_from_slice(&v.to_le_bytes()),
        Bool(v) => b.push(*v as u8),
        String(s) => put_string(b, s),
        U64(v) => b.extend_from_slice(&v.to_le_bytes()),
        I64(v) => b.extend_from_slice(&v.to_le_bytes()),
        F64(v) => b.extend_from_slice(&v.to_le_bytes()),
        Array(items) => {
            // The item type is written once, so an empty array has none to write (gguf-py
            // refuses them too) and mixed arrays cannot be represented.
            let Some(first) = items.first() else {
                bail!("an empty array has no item type and cannot be written");
            };
            if let Array(_) = first {
                bail!("arrays of arrays cannot be written (llama.cpp does not read them)");
            }
            let ty = first.type_id();
            if let Some(other) = items.iter().find(|v| v.type_id() != ty) {
                bail!(
                    "array mixes {} and {} items (GGUF arrays hold one type)",
                    first.type_name(),
                    other.type_name()
                );
            }
            b.extend_from_slice(&ty.to_le_bytes());
            b.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(b, item)?;
            }
        }
    }
    Ok(())
}
