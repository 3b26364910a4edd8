//! The MODEL argument: a Hugging Face directory, a `.gguf` file, or a Hub id, told apart here.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{gguf, hub};

#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A directory with `config.json` and safetensors weights.
    HfDir(PathBuf),
    /// A llama.cpp GGUF file.
    Gguf(PathBuf),
}

impl ModelSource {
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::HfDir(p) | ModelSource::Gguf(p) => p,
        }
    }
}

/// Resolve what the user typed after `--model`.
pub fn resolve(spec: &str) -> Result<ModelSource> {
    let path = Path::new(spec);
    if path.is_dir() {
        return resolve_dir(path);
    }
    if path.is_file() {
        return resolve_file(path);
    }
    if hub::is_hub_id(spec) {
        let dir = hub::resolve(spec, &hub::cache_from_env(), hub::offline_from_env())?;
        return Ok(ModelSource::HfDir(dir));
    }
    bail!("{spec}: no such file or directory (and not a Hugging Face Hub id of the form org/name)")
}

fn resolve_dir(dir: &Path) -> Result<ModelSource> {
    if dir.join("config.json").is_file() {
        return Ok(ModelSource::HfDir(dir.to_path_buf()));
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match ggufs.as_slice() {
        [one] => Ok(ModelSource::Gguf(one.clone())),
        [] => bail!(
            "{}: no config.json (HF model) and no .gguf file in this directory",
            dir.display()
        ),
        many => bail!(
            "{}: {} .gguf files and no config.json; pass the file you mean",
            dir.display(),
            many.len()
        ),
    }
}

fn resolve_file(path: &Path) -> Result<ModelSource> {
    let mut head = [0u8; 4];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .with_context(|| format!("{}: cannot read", path.display()))?;
    if gguf::has_magic(&head[..n]) {
        return Ok(ModelSource::Gguf(path.to_path_buf()));
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "bin" | "pt" | "pth" | "ckpt" | "pkl" => bail!(
            "{}: pickled PyTorch weights are refused (loading them can execute arbitrary code); convert the \
             model to safetensors with transformers' save_pretrained(..., safe_serialization=True)",
            path.display()
        ),
        "gguf" => bail!("{}: not a valid GGUF file: bad magic (expected \"GGUF\")", path.display()),
        "safetensors" | "json" => bail!(
            "{}: pass the model directory (with config.json), not one of its files",
            path.display()
        ),
        _ => bail!("{}: neither a GGUF file nor a model directory", path.display()),
    }
}
