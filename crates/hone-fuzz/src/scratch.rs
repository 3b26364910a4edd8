//! Where targets write their input as files, and the tiny model they load and run.
//!
//! One directory per process, kept for its life: libFuzzer runs millions of inputs in one
//! process, each overwriting the last one's files. Hub access is made cache-only, with an empty
//! cache, before anything runs: an input naming a Hub id must fail at once, never go online.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The process's scratch directory (in memory under /dev/shm where there is one).
fn root() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| {
        let parent = Path::new("/dev/shm");
        let dir = if parent.is_dir() {
            tempfile::Builder::new()
                .prefix("hone-fuzz")
                .tempdir_in(parent)
        } else {
            tempfile::Builder::new().prefix("hone-fuzz").tempdir()
        }
        .expect("a scratch directory");
        std::env::set_var("HF_HUB_OFFLINE", "1");
        std::env::set_var("HF_HUB_CACHE", dir.path().join("hub"));
        dir
    })
    .path()
}

/// `root/name`, emptied of what an earlier input left there.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = root().join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("clearing a scratch directory");
    }
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Writes `bytes` as `dir/name` and returns its path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("writing a scratch file");
    path
}

/// The repository's `relative` path (fixtures the targets build on).
pub fn repository(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

/// A directory holding the tiny random model `fixtures/models/llama-tied` (vocabulary 96) with
/// the character-level tokenizer and chat template of `fuzz/tiny-tokenizer`, minus the files in
/// `leave_out`; written once per name.
pub fn tiny_model(name: &str, leave_out: &[&str]) -> PathBuf {
    let dir = root().join(name);
    if dir.exists() {
        return dir;
    }
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let model = repository("fixtures/models/llama-tied");
    let tokenizer = repository("fuzz/tiny-tokenizer");
    let files = [
        (&model, "config.json"),
        (&model, "generation_config.json"),
        (&model, "model.safetensors"),
        (&tokenizer, "tokenizer.json"),
        (&tokenizer, "tokenizer_config.json"),
    ];
    for (from, file) in files {
        if !leave_out.contains(&file) {
            std::fs::copy(from.join(file), dir.join(file)).expect("copying the tiny model");
        }
    }
    dir
}
