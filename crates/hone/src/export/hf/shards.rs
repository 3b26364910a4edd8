//! Safetensors weight files split as transformers' `save_pretrained` splits them: tensors in the
//! order given, a new shard whenever the next tensor would push the current one past the size
//! limit; one shard is `model.safetensors`, several are `model-00001-of-0000N.safetensors` with
//! `model.safetensors.index.json` mapping each tensor to its file.
//!
//! Each full shard is written to disk at once (under a temporary name, since N is known only at
//! the end), so at most one shard's bytes are held in memory.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use safetensors::tensor::TensorView;
use serde_json::json;

use super::SaveDtype;
use crate::io::json;

pub(super) const SINGLE_FILE: &str = "model.safetensors";
pub(super) const INDEX_FILE: &str = "model.safetensors.index.json";

/// One encoded tensor waiting for its shard.
struct Pending {
    name: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

pub(super) struct ShardWriter {
    dir: PathBuf,
    dtype: SaveDtype,
    max_bytes: u64,
    pending: Vec<Pending>,
    pending_bytes: u64,
    /// The tensor names of each shard written so far, in shard order.
    written: Vec<Vec<String>>,
    total_size: u64,
    total_parameters: u64,
}

impl ShardWriter {
    /// Shards of `dtype` tensors in `dir`, each at most `max_bytes` of tensor data unless a single
    /// tensor is larger.
    pub(super) fn new(dir: &Path, dtype: SaveDtype, max_bytes: u64) -> Self {
        ShardWriter {
            dir: dir.to_path_buf(),
            dtype,
            max_bytes,
            pending: Vec::new(),
            pending_bytes: 0,
            written: Vec::new(),
            total_size: 0,
            total_parameters: 0,
        }
    }

    /// Adds a tensor already encoded as the writer's dtype.
    pub(super) fn push(&mut self, name: String, shape: Vec<usize>, bytes: Vec<u8>) -> Result<()> {
        let n = bytes.len() as u64;
        if !self.pending.is_empty() && self.pending_bytes + n > self.max_bytes {
            self.flush()?;
        }
        self.total_size += n;
        self.total_parameters += shape.iter().product::<usize>() as u64;
        self.pending_bytes += n;
        self.pending.push(Pending { name, shape, bytes });
        Ok(())
    }

    /// Bytes of tensor data added so far (the index's `total_size`).
    pub(super) fn total_size(&self) -> u64 {
        self.total_size
    }

    fn temp_name(k: usize) -> String {
        format!("shard-{k}.partial")
    }

    fn flush(&mut self) -> Result<()> {
        let path = self.dir.join(Self::temp_name(self.written.len()));
        let views = self
            .pending
            .iter()
            .map(|t| {
                TensorView::new(self.dtype.safetensors(), t.shape.clone(), &t.bytes)
                    .map(|view| (t.name.clone(), view))
                    .map_err(|e| anyhow!("tensor {}: {e}", t.name))
            })
            .collect::<Result<Vec<_>>>()?;
        // transformers (through safetensors.torch) records the framework the tensors came from.
        let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(metadata), &path)
            .map_err(|e| anyhow!("{}: cannot write: {e}", path.display()))?;
        let names = self.pending.drain(..).map(|t| t.name).collect();
        self.written.push(names);
        self.pending_bytes = 0;
        Ok(())
    }

    /// Writes the last shard, gives every shard its final name and writes the index when there
    /// are several.
    pub(super) fn finish(mut self) -> Result<()> {
        if !self.pending.is_empty() || self.written.is_empty() {
            self.flush()?;
        }
        let n = self.written.len();
        if n == 1 {
            return self.rename(0, SINGLE_FILE);
        }
        let mut weight_map = BTreeMap::new();
        for (k, names) in std::mem::take(&mut self.written).into_iter().enumerate() {
            let file = format!("model-{:05}-of-{n:05}.safetensors", k + 1);
            self.rename(k, &file)?;
            for name in names {
                weight_map.insert(name, file.clone());
            }
        }
        let index = json!({
            "metadata": {"total_parameters": self.total_parameters, "total_size": self.total_size},
            "weight_map": weight_map,
        });
        let path = self.dir.join(INDEX_FILE);
        fs::write(&path, json::sorted_pretty(&index)? + "\n")
            .with_context(|| format!("{}: cannot write", path.display()))
    }

    fn rename(&self, k: usize, file: &str) -> Result<()> {
        let (from, to) = (self.dir.join(Self::temp_name(k)), self.dir.join(file));
        fs::rename(&from, &to).with_context(|| format!("cannot rename {}", from.display()))
    }
}
