//! Hugging Face Hub ids (`org/name`): resolved through the standard HF cache, downloading when online.
//!
//! Follows the Python tools' conventions so their cache is shared: `HF_HOME` (cache under
//! `$HF_HOME/hub`), `HF_HUB_CACHE`, and `HF_HUB_OFFLINE=1` (cache only, never the network).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::{Api, ApiBuilder};
use hf_hub::{Cache, Repo};

/// Files a model directory may have beside its weights; absent ones are skipped.
const OPTIONAL_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
    "special_tokens_map.json",
];

/// Model files a user names by path; a missing `models/x.gguf` must say "no such file", not go to the Hub.
const FILE_EXTENSIONS: [&str; 6] = [".gguf", ".safetensors", ".bin", ".pt", ".pth", ".json"];

/// Does `spec` look like a Hub model id rather than a local path?
pub fn is_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    let lower = spec.to_ascii_lowercase();
    parts.len() == 2
        && !FILE_EXTENSIONS.iter().any(|ext| lower.ends_with(ext))
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// The cache the Python tools use, from the environment.
pub fn cache_from_env() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => Cache::new(PathBuf::from(dir)),
        None => Cache::from_env(),
    }
}

pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"))
}

/// Make the model `id` available as a local snapshot directory and return it.
pub fn resolve(id: &str, cache: &Cache, offline: bool) -> Result<PathBuf> {
    let config = if offline {
        cached(id, cache, "config.json")?
    } else {
        download(id, cache, "config.json")?
    };
    let dir = config
        .parent()
        .context("cache path has no parent")?
        .to_path_buf();
    if offline {
        return Ok(dir);
    }
    for name in OPTIONAL_FILES {
        // Optional files: absence on the Hub is not an error.
        let _ = download(id, cache, name);
    }
    let index = "model.safetensors.index.json";
    match download(id, cache, index) {
        Ok(path) => {
            for shard in
                super::safetensors::checkpoint_files(path.parent().unwrap_or(Path::new(".")))?
            {
                let name = shard
                    .file_name()
                    .and_then(|n| n.to_str())
                    .context("bad shard name")?;
                download(id, cache, name)?;
            }
        }
        Err(_) => {
            download(id, cache, "model.safetensors")?;
        }
    }
    Ok(dir)
}

fn cached(id: &str, cache: &Cache, file: &str) -> Result<PathBuf> {
    match cache.repo(Repo::model(id.to_string())).get(file) {
        Some(p) => Ok(p),
        None => bail!(
            "{id}: not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set (looked for {file}); \
             download it while online or pass a local directory",
            cache.path().display()
        ),
    }
}

/// The Hub client, downloading into `cache` with a progress bar.
pub(crate) fn client(cache: &Cache) -> Result<Api> {
    ApiBuilder::from_cache(cache.clone())
        .with_progress(true)
        .build()
        .context("cannot start the Hugging Face Hub client")
}

fn download(id: &str, cache: &Cache, file: &str) -> Result<PathBuf> {
    client(cache)?
        .model(id.to_string())
        .get(file)
        .with_context(|| {
            format!(
                "{id}: cannot fetch {file} from the Hugging Face Hub (cache: {})",
                cache.path().display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_told_from_paths() {
        assert!(is_hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"));
        assert!(!is_hub_id("./models/x"));
        assert!(!is_hub_id("models/x.gguf"));
        assert!(!is_hub_id("models/X.GGUF"));
        assert!(!is_hub_id("models/x.gguf/extra"));
        assert!(!is_hub_id("/abs/path"));
        assert!(!is_hub_id("name"));
    }

    #[test]
    fn offline_resolution_uses_the_cache_and_names_it_when_absent() {
        let root = std::env::temp_dir().join(format!("hone-hub-{}", std::process::id()));
        let snap = root.join("models--org--tiny/snapshots/abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(root.join("models--org--tiny/refs")).unwrap();
        std::fs::write(root.join("models--org--tiny/refs/main"), "abc123").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let cache = Cache::new(root.clone());
        assert_eq!(resolve("org/tiny", &cache, true).unwrap(), snap);
        let err = resolve("org/absent", &cache, true).unwrap_err().to_string();
        assert!(
            err.contains("org/absent") && err.contains(&root.display().to_string()),
            "{err}"
        );
        std::fs::remove_dir_all(root).unwrap();
    }
}
