//! The adapters a server holds beside its base model, by name: loaded at start from
//! `--adapter NAME=DIR` (a PEFT adapter directory, or a `hone train` output directory with its
//! `checkpoint-N` directories), and at run time through `POST /v1/adapters` from inside one
//! directory given at start. A request takes an `Arc` of its adapter, so unloading never pulls
//! an adapter from under a request that started with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context, Result};

use crate::adapters::read_adapter;
use crate::model::value_head::ValueHead;
use crate::model::{Llama, LoraSet};

/// An adapter ready to apply to rows of a batch.
pub struct ServedAdapter {
    pub name: String,
    pub path: PathBuf,
    pub set: LoraSet,
    /// A reward model's value head (`value_head.safetensors` beside the adapter).
    pub value_head: Option<ValueHead>,
    /// Unix seconds when it was loaded (`created` in `/v1/models`).
    pub created: u64,
}

/// Reads the adapter in `dir` and checks it against the model: nothing is registered unless the
/// whole adapter is valid.
pub fn load(model: &Llama, name: &str, dir: &Path) -> Result<ServedAdapter> {
    let adapter = read_adapter(dir)?;
    let set = model
        .lora_set(&adapter)
        .with_context(|| format!("{}: does not fit the served model", dir.display()))?;
    Ok(ServedAdapter {
        name: name.to_string(),
        path: dir.to_path_buf(),
        set,
        value_head: ValueHead::load(dir, model.config().hidden_size)?,
        created: super::unix_now(),
    })
}

/// The adapters of `--adapter NAME=DIR`: DIR itself, and when DIR is a training run's output
/// directory, each `checkpoint-N` inside it as `NAME/checkpoint-N`.
pub fn load_named(model: &Llama, name: &str, dir: &Path) -> Result<Vec<ServedAdapter>> {
    let mut loaded = Vec::new();
    if dir.join("adapter_config.json").is_file() {
        loaded.push(load(model, name, dir)?);
    }
    let mut checkpoints: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot read the directory", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let step = e
                .file_name()
                .to_str()?
                .strip_prefix("checkpoint-")?
                .parse()
                .ok()?;
            let path = e.path();
            path.join("adapter_config.json")
                .is_file()
                .then_some((step, path))
        })
        .collect();
    checkpoints.sort();
    for (step, path) in checkpoints {
        loaded.push(load(model, &format!("{name}/checkpoint-{step}"), &path)?);
    }
    if loaded.is_empty() {
        bail!(
            "{}: no adapter here (no adapter_config.json, and no checkpoint-N directory with one)",
            dir.display()
        );
    }
    Ok(loaded)
}

/// The adapters by name.
#[derive(Default)]
pub struct Registry {
    adapters: RwLock<BTreeMap<String, Arc<ServedAdapter>>>,
}

impl Registry {
    pub fn get(&self, name: &str) -> Option<Arc<ServedAdapter>> {
        self.read().get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<ServedAdapter>> {
        self.read().values().cloned().collect()
    }

    /// Adds `adapter`; false (nothing changed) when its name is taken.
    pub fn insert(&self, adapter: ServedAdapter) -> bool {
        let mut adapters = self.adapters.write().unwrap_or_else(|e| e.into_inner());
        if adapters.contains_key(&adapter.name) {
            return false;
        }
        adapters.insert(adapter.name.clone(), Arc::new(adapter));
        true
    }

    /// Removes the adapter; requests that hold it keep it until they finish.
    pub fn remove(&self, name: &str) -> Option<Arc<ServedAdapter>> {
        let mut adapters = self.adapters.write().unwrap_or_else(|e| e.into_inner());
        adapters.remove(name)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<ServedAdapter>>> {
        self.adapters.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// `path` (absolute, or relative to `root`) resolved inside `root`; an error when it leads
/// outside it (`..`, a symlink, an absolute path elsewhere) or does not exist.
pub fn confine(root: &Path, path: &str) -> Result<PathBuf> {
    let root = root
        .canonicalize()
        .with_context(|| format!("{}: the adapter directory is gone", root.display()))?;
    let resolved = root
        .join(path)
        .canonicalize()
        .with_context(|| format!("{path}: no such adapter directory"))?;
    if !resolved.starts_with(&root) {
        bail!("{path}: outside the adapter directory this server was started with");
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_confined_to_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("adapters");
        std::fs::create_dir_all(root.join("a")).unwrap();
        std::fs::create_dir_all(tmp.path().join("outside")).unwrap();
        assert_eq!(
            confine(&root, "a").unwrap(),
            root.join("a").canonicalize().unwrap()
        );
        assert!(confine(&root, "../outside").is_err());
        let outside = tmp.path().join("outside");
        assert!(confine(&root, outside.to_str().unwrap()).is_err());
        assert!(confine(&root, "missing").is_err());
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
            assert!(confine(&root, "link").is_err());
        }
    }
}
