//! Hugging Face Hub dataset repositories (`hf_hub_url` in LLaMA-Factory's `dataset_info.json`):
//! which of a repository's files make a split, found in the standard HF cache (shared with the
//! Python tools: `HF_HOME`, `HF_HUB_CACHE`; `HF_HUB_OFFLINE=1` never goes online) or downloaded
//! into it.
//!
//! The files of a split are chosen as `datasets` chooses them. A dataset card (`README.md`)
//! whose YAML front matter declares `configs` gives each config's `data_files` per split as path
//! patterns (`data/train-*`); the config is `subset`, else the one marked `default`, else the
//! only one. Without configs: data files (parquet, JSON, JSON Lines, CSV, Arrow, text) under
//! `folder` (LLaMA-Factory's `folder`, `datasets`' `data_dir`) and under `subset/` when the
//! repository has such a folder (the Hub's own parquet conversion lays configs out so); among
//! them, those whose path names the split (`train`/`training`, `validation`/`valid`/`val`/`dev`,
//! `test`/`testing`/`eval`/`evaluation`, as a word of the path:
//! `data/train-00000-of-00001.parquet`); when no file names any split, every file is `train`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hf_hub::{Cache, Repo, RepoType};

/// File types `datasets` reads by extension (LLaMA-Factory's `FILEEXT2TYPE`).
pub const DATA_EXTENSIONS: [&str; 6] = ["parquet", "json", "jsonl", "csv", "arrow", "txt"];

/// The words that name each split in file paths.
const SPLIT_WORDS: [(&str, &[&str]); 3] = [
    ("train", &["train", "training"]),
    ("validation", &["validation", "valid", "val", "dev"]),
    ("test", &["test", "testing", "eval", "evaluation"]),
];

/// Where a split's files are.
#[derive(Debug, Clone, Copy)]
pub struct SplitQuery<'a> {
    pub subset: Option<&'a str>,
    pub folder: Option<&'a str>,
    pub split: &'a str,
}

/// The local paths of dataset repository `id`'s files for `query`, from the cache when offline,
/// else downloaded (into the cache) as needed.
pub fn dataset_files(
    id: &str,
    query: SplitQuery,
    cache: &Cache,
    offline: bool,
) -> Result<Vec<PathBuf>> {
    if offline {
        let snapshot = cached_snapshot(id, cache)?;
        let files = files_under(&snapshot);
        let card = std::fs::read_to_string(snapshot.join(CARD)).ok();
        let chosen =
            choose(&files, card.as_deref(), query).with_context(|| format!("{id} (cached)"))?;
        return Ok(chosen.iter().map(|f| snapshot.join(f)).collect());
    }
    let repo = super::hub::client(cache)?.dataset(id.to_string());
    let info = repo
        .info()
        .with_context(|| format!("{id}: cannot list the dataset on the Hugging Face Hub"))?;
    let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let card = files
        .iter()
        .any(|f| f == CARD)
        .then(|| repo.get(CARD).ok())
        .flatten()
        .and_then(|path| std::fs::read_to_string(path).ok());
    choose(&files, card.as_deref(), query)
        .with_context(|| id.to_string())?
        .iter()
        .map(|f| {
            repo.get(f)
                .with_context(|| format!("{id}: cannot fetch {f} from the Hugging Face Hub"))
        })
        .collect()
}

/// The snapshot directory of the cached `main` revision of dataset `id`.
fn cached_snapshot(id: &str, cache: &Cache) -> Result<PathBuf> {
    let repo = cache
        .path()
        .join(Repo::new(id.to_string(), RepoType::Dataset).folder_name());
    let commit = std::fs::read_to_string(repo.join("refs").join("main")).ok();
    match commit.map(|c| repo.join("snapshots").join(c.trim())) {
        Some(snapshot) if snapshot.is_dir() => Ok(snapshot),
        _ => bail!(
            "{id}: dataset not in the Hugging Face cache at {} and HF_HUB_OFFLINE is set; \
             download it while online (or with `huggingface-cli download --repo-type dataset \
             {id}`), or use local files (file_name)",
            cache.path().display()
        ),
    }
}

/// Every file under `dir`, as `/`-separated paths relative to it, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                let parts: Vec<String> = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                files.push(parts.join("/"));
            }
        }
    }
    files.sort();
    files
}

/// The dataset card, whose front matter may declare the configs.
const CARD: &str = "README.md";

/// The files of `query`'s split among a repository's `files`, by its card's `configs` when it
/// declares them, else by the files' paths (see the module's comment).
pub fn choose(files: &[String], card: Option<&str>, query: SplitQuery) -> Result<Vec<String>> {
    match card.map(card_configs).transpose()?.flatten() {
        Some(configs) => choose_by_config(files, &configs, query),
        None => choose_by_path(files, query),
    }
}

/// One entry of a card's `configs`: its name, whether it is the default, and per split the path
/// patterns of its files.
#[derive(Debug, PartialEq)]
struct CardConfig {
    name: String,
    default: bool,
    data_dir: Option<String>,
    splits: Vec<(String, Vec<String>)>,
}

/// The `configs` of a dataset card's YAML front matter; None when it declares none.
fn card_configs(card: &str) -> Result<Option<Vec<CardConfig>>> {
    let Some(rest) = card.strip_prefix("---") else {
        return Ok(None);
    };
    let Some((front, _)) = rest.split_once("\n---") else {
        return Ok(None);
    };
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(front).context("README.md: front matter is not YAML")?;
    let Some(configs) = yaml.get("configs").and_then(|c| c.as_sequence()) else {
        return Ok(None);
    };
    let text = |v: &serde_yaml_ng::Value| v.as_str().map(str::to_string);
    let patterns = |v: &serde_yaml_ng::Value| -> Vec<String> {
        match v.as_sequence() {
            Some(list) => list.iter().filter_map(text).collect(),
            None => text(v).into_iter().collect(),
        }
    };
    let parsed = configs
        .iter()
        .map(|config| {
            let name = config
                .get("config_name")
                .and_then(text)
                .unwrap_or_else(|| "default".into());
            let files = config.get("data_files");
            let splits = match files {
                // `data_files: [{split, path}, …]`
                Some(serde_yaml_ng::Value::Sequence(list))
                    if list.iter().all(|e| e.is_mapping()) =>
                {
                    list.iter()
                        .filter_map(|e| Some((text(e.get("split")?)?, patterns(e.get("path")?))))
                        .collect()
                }
                // `data_files: {train: …, test: …}`
                Some(serde_yaml_ng::Value::Mapping(map)) => map
                    .iter()
                    .filter_map(|(split, path)| Some((text(split)?, patterns(path))))
                    .collect(),
                // `data_files: pattern` or a list of them: all train.
                Some(other) => vec![("train".to_string(), patterns(other))],
                None => Vec::new(),
            };
            CardConfig {
                name,
                default: config
                    .get("default")
                    .and_then(|d| d.as_bool())
                    .unwrap_or(false),
                data_dir: config.get("data_dir").and_then(text),
                splits,
            }
        })
        .collect();
    Ok(Some(parsed))
}

/// The files of `query`'s split in the card's config that `query.subset` names (or the default).
fn choose_by_config(
    files: &[String],
    configs: &[CardConfig],
    query: SplitQuery,
) -> Result<Vec<String>> {
    let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
    let config = match query.subset {
        Some(subset) => configs.iter().find(|c| c.name == subset).with_context(|| {
            format!(
                "subset: {subset:?} is not one of the card's configs ({})",
                names.join(", ")
            )
        })?,
        None => configs
            .iter()
            .find(|c| c.default)
            .or_else(|| configs.iter().find(|c| c.name == "default"))
            .or(match configs {
                [only] => Some(only),
                _ => None,
            })
            .with_context(|| {
                format!(
                    "subset: name one of the card's configs ({})",
                    names.join(", ")
                )
            })?,
    };
    let Some((_, patterns)) = config.splits.iter().find(|(split, _)| split == query.split) else {
        let splits: Vec<&str> = config.splits.iter().map(|(s, _)| s.as_str()).collect();
        bail!(
            "split: {:?} is not one of config {}'s splits ({})",
            query.split,
            config.name,
            splits.join(", ")
        );
    };
    let base = query
        .folder
        .or(config.data_dir.as_deref())
        .map(|d| d.trim_matches('/'));
    let mut globs = globset::GlobSetBuilder::new();
    for pattern in patterns {
        let full = match base {
            Some(base) if !base.is_empty() => format!("{base}/{pattern}"),
            _ => pattern.clone(),
        };
        let glob = globset::GlobBuilder::new(&full)
            .literal_separator(true)
            .build()
            .with_context(|| format!("data_files: {full}: not a path pattern"))?;
        globs.add(glob);
    }
    let globs = globs.build().context("data_files")?;
    let chosen: Vec<String> = files
        .iter()
        .filter(|f| globs.is_match(f))
        .cloned()
        .collect();
    if chosen.is_empty() {
        bail!(
            "config {} split {}: no file matches {}",
            config.name,
            query.split,
            patterns.join(", ")
        );
    }
    Ok(chosen)
}

/// The files of `query`'s split by the words of their paths (a repository without configs).
fn choose_by_path(files: &[String], query: SplitQuery) -> Result<Vec<String>> {
    let mut data: Vec<&String> = files
        .iter()
        .filter(|f| is_data_file(f))
        .filter(|f| query.folder.is_none_or(|dir| under(f, dir)))
        .collect();
    if let Some(subset) = query.subset {
        if data.iter().any(|f| under(f, subset)) {
            data.retain(|f| under(f, subset));
        }
    }
    if data.is_empty() {
        bail!(
            "no data files ({}){}",
            DATA_EXTENSIONS.join(", "),
            query
                .folder
                .map_or(String::new(), |d| format!(" under {d}/"))
        );
    }
    let named_split = |f: &str| SPLIT_WORDS.iter().find(|(_, words)| has_word(f, words));
    let chosen: Vec<String> = match data.iter().any(|f| named_split(f).is_some()) {
        true => data
            .iter()
            .filter(|f| named_split(f).is_some_and(|(split, _)| *split == query.split))
            .map(|f| f.to_string())
            .collect(),
        false if query.split == "train" => data.iter().map(|f| f.to_string()).collect(),
        false => Vec::new(),
    };
    if chosen.is_empty() {
        let listed: Vec<&str> = data.iter().take(8).map(|f| f.as_str()).collect();
        bail!(
            "split: no files for split {:?} among {}",
            query.split,
            listed.join(", ")
        );
    }
    Ok(chosen)
}

/// Whether `path`'s extension is one of [`DATA_EXTENSIONS`], in any case.
pub fn has_data_extension(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        DATA_EXTENSIONS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str())
    })
}

fn is_data_file(path: &str) -> bool {
    !path.split('/').any(|part| part.starts_with('.')) && has_data_extension(Path::new(path))
}

fn under(path: &str, dir: &str) -> bool {
    let dir = dir.trim_matches('/');
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Whether one of the path's words (split at anything not a letter) is in `words`.
fn has_word(path: &str, words: &[&str]) -> bool {
    let without_extension = path.rsplit_once('.').map_or(path, |(stem, _)| stem);
    without_extension
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|word| words.contains(&word.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(files: &[&str]) -> Vec<String> {
        files.iter().map(|f| f.to_string()).collect()
    }

    fn split<'a>(split: &'a str) -> SplitQuery<'a> {
        SplitQuery {
            subset: None,
            folder: None,
            split,
        }
    }

    #[test]
    fn files_are_chosen_by_the_split_their_path_names() {
        let files = names(&[
            ".gitattributes",
            "README.md",
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet",
            "data/validation-00000-of-00001.parquet",
            "data/test.jsonl",
        ]);
        assert_eq!(
            choose(&files, None, split("train")).unwrap(),
            [
                "data/train-00000-of-00002.parquet",
                "data/train-00001-of-00002.parquet"
            ]
        );
        assert_eq!(
            choose(&files, None, split("validation")).unwrap(),
            ["data/validation-00000-of-00001.parquet"]
        );
        assert_eq!(
            choose(&files, None, split("test")).unwrap(),
            ["data/test.jsonl"]
        );
        let err = choose(&files, None, split("dev")).unwrap_err().to_string();
        assert!(
            err.starts_with("split: no files for split \"dev\""),
            "{err}"
        );
    }

    #[test]
    fn without_split_names_every_file_is_train_and_subsets_and_folders_narrow() {
        let files = names(&["alpaca_data_en.json", "zh/alpaca_zh.json", "notes.md"]);
        assert_eq!(
            choose(&files, None, split("train")).unwrap(),
            ["alpaca_data_en.json", "zh/alpaca_zh.json"]
        );
        let zh = SplitQuery {
            subset: Some("zh"),
            ..split("train")
        };
        assert_eq!(choose(&files, None, zh).unwrap(), ["zh/alpaca_zh.json"]);
        let folder = SplitQuery {
            folder: Some("zh"),
            ..split("train")
        };
        assert_eq!(choose(&files, None, folder).unwrap(), ["zh/alpaca_zh.json"]);
        assert!(choose(&files, None, split("test")).is_err());
        // A subset the repository has no folder for is a config `datasets` defines elsewhere:
        // every file is kept.
        let other = SplitQuery {
            subset: Some("default"),
            ..split("train")
        };
        assert_eq!(choose(&files, None, other).unwrap().len(), 2);
    }

    #[test]
    fn a_cards_configs_name_each_splits_files() {
        let card = "---\nlicense: mit\nconfigs:\n- config_name: en\n  default: true\n  data_files:\n  \
                    - split: train\n    path: en/part-*.parquet\n  - split: test\n    path: [en/eval.jsonl]\n\
                    - config_name: zh\n  data_files: zh/*.json\n---\n# Card\n";
        let files = names(&[
            "README.md",
            "en/part-0.parquet",
            "en/part-1.parquet",
            "en/sub/part-2.parquet",
            "en/eval.jsonl",
            "zh/a.json",
        ]);
        let en = choose(&files, Some(card), split("train")).unwrap();
        assert_eq!(en, ["en/part-0.parquet", "en/part-1.parquet"]);
        assert_eq!(
            choose(&files, Some(card), split("test")).unwrap(),
            ["en/eval.jsonl"]
        );
        let zh = SplitQuery {
            subset: Some("zh"),
            ..split("train")
        };
        assert_eq!(choose(&files, Some(card), zh).unwrap(), ["zh/a.json"]);
        let fr = SplitQuery {
            subset: Some("fr"),
            ..split("train")
        };
        let err = choose(&files, Some(card), fr).unwrap_err().to_string();
        assert_eq!(
            err,
            "subset: \"fr\" is not one of the card's configs (en, zh)"
        );
        let err = choose(&files, Some(card), zh_test())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "split: \"test\" is not one of config zh's splits (train)"
        );
        // A card without configs leaves the choice to the paths.
        let plain = choose(&files, Some("# Card\n"), split("test")).unwrap();
        assert_eq!(plain, ["en/eval.jsonl"]);
    }

    fn zh_test() -> SplitQuery<'static> {
        SplitQuery {
            subset: Some("zh"),
            ..split("test")
        }
    }

    #[test]
    fn offline_files_come_from_the_cache_snapshot_or_an_error_names_the_cache() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("datasets--org--data");
        let snapshot = repo.join("snapshots/abc123");
        std::fs::create_dir_all(snapshot.join("data")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123").unwrap();
        std::fs::write(snapshot.join("data/train-00000-of-00001.parquet"), "").unwrap();
        let cache = Cache::new(root.path().to_path_buf());
        let files = dataset_files("org/data", split("train"), &cache, true).unwrap();
        assert_eq!(files, [snapshot.join("data/train-00000-of-00001.parquet")]);
        let err = dataset_files("org/absent", split("train"), &cache, true).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("org/absent") && text.contains(&root.path().display().to_string()));
    }
}
