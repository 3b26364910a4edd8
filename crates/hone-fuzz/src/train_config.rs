//! YAML train configs (LLaMA-Factory's keys), with `key=value` overrides as the command line gives
//! them: loaded, checked, then written back out and loaded again (a run saves its resolved config
//! and `--resume` reads it).

use hone::train::config::SftConfig;

use crate::{parts, scratch};

pub fn train_config(data: &[u8]) {
    let [yaml, overrides] = parts(data, 2)[..] else {
        unreachable!("parts gives two")
    };
    let overrides: Vec<String> = String::from_utf8_lossy(overrides)
        .lines()
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect();
    let dir = scratch::fresh_dir("train-config");
    let path = scratch::write(&dir, "train.yaml", yaml);
    let Ok(config) = SftConfig::load(&path, &overrides) else {
        return;
    };
    let _ = config.base_quantization();
    let saved = scratch::write(&dir, "training_args.yaml", config.to_yaml().as_bytes());
    let _ = SftConfig::read_saved(&saved);
}
