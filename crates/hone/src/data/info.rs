//! Which files a `dataset` argument names and how their rows are laid out: LLaMA-Factory's
//! `dataset_info.json` (`file_name` — a file or a folder of files — or `hf_hub_url` with
//! `subset`, `split` and `folder`; `formatting`, `columns`, `tags`), or direct paths (a data file
//! or a folder of them) whose format is told from the keys of their rows.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};

use crate::io::hub;
use crate::io::hub_dataset::{has_data_extension, SplitQuery, DATA_EXTENSIONS};

const INFO_FILE: &str = "dataset_info.json";

/// How rows are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Formatting {
    /// `instruction`, `input`, `output`, optional `system` and `history` columns.
    Alpaca,
    /// A list of turns with a role and a content field (ShareGPT `conversations` with
    /// `from`/`value`, or OpenAI `messages` with `role`/`content`), optional `system` column.
    Sharegpt,
}

/// Column names of a row (LLaMA-Factory's `columns`); each has its documented default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Columns {
    pub prompt: String,
    pub query: String,
    pub response: String,
    pub history: String,
    pub system: String,
    pub messages: String,
    /// Preference data (`ranking: true`): the preferred and the rejected response.
    pub chosen: String,
    pub rejected: String,
    /// KTO data: whether the response is desirable (a boolean).
    pub kto_tag: String,
    /// The functions the assistant may call: a JSON list (or a string holding one).
    pub tools: String,
}

/// Field names and role values inside ShareGPT turns (LLaMA-Factory's `tags`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Tags {
    pub role: String,
    pub content: String,
    pub user: String,
    pub assistant: String,
    pub observation: String,
    pub function: String,
    pub system: String,
}

/// Everything needed to turn a row into a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Format {
    pub formatting: Formatting,
    pub columns: Columns,
    pub tags: Tags,
}

impl Format {
    pub fn alpaca() -> Format {
        Format {
            formatting: Formatting::Alpaca,
            columns: Columns {
                prompt: "instruction".into(),
                query: "input".into(),
                response: "output".into(),
                history: "history".into(),
                system: "system".into(),
                messages: "conversations".into(),
                chosen: "chosen".into(),
                rejected: "rejected".into(),
                kto_tag: "kto_tag".into(),
                tools: "tools".into(),
            },
            tags: Tags {
                role: "from".into(),
                content: "value".into(),
                user: "human".into(),
                assistant: "gpt".into(),
                observation: "observation".into(),
                function: "function_call".into(),
                system: "system".into(),
            },
        }
    }

    pub fn sharegpt() -> Format {
        Format {
            formatting: Formatting::Sharegpt,
            ..Format::alpaca()
        }
    }

    /// OpenAI chat format: `messages` of `{role, content}`; tool results have role `tool`.
    pub fn openai() -> Format {
        let mut format = Format::sharegpt();
        format.columns.messages = "messages".into();
        format.tags = Tags {
            role: "role".into(),
            content: "content".into(),
            user: "user".into(),
            assistant: "assistant".into(),
            observation: "tool".into(),
            function: "function_call".into(),
            system: "system".into(),
        };
        format
    }

    /// The format a row's keys point to: `conversations` (ShareGPT), `messages` (OpenAI), or
    /// `instruction`/`output` (Alpaca).
    pub fn detect(row: &Map<String, Value>) -> Option<Format> {
        if row.contains_key("conversations") {
            Some(Format::sharegpt())
        } else if row.contains_key("messages") {
            Some(Format::openai())
        } else if row.contains_key("instruction") || row.contains_key("output") {
            Some(Format::alpaca())
        } else {
            None
        }
    }
}

/// One file to read, with its format when `dataset_info.json` gives it (else told from the rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Source {
    pub path: PathBuf,
    pub format: Option<Format>,
    /// `ranking: true` in `dataset_info.json`: rows pair a chosen and a rejected response.
    pub ranking: bool,
}

impl Source {
    /// An error when the source is preference data, which `use_` (what the caller does with
    /// rows) cannot take.
    pub fn refuse_ranking(&self, use_: &str) -> Result<()> {
        if self.ranking {
            bail!(
                "{}: ranking: a preference dataset (chosen/rejected pairs) cannot be used here: \
                 {use_}; preference data trains with stage: dpo",
                self.path.display()
            );
        }
        Ok(())
    }
}

/// The files a comma-separated `dataset` argument names: each name is looked up in
/// `dataset_dir/dataset_info.json`; a name it lacks that ends in `.json`/`.jsonl` or is an
/// existing file is read directly.
pub(super) fn resolve(dataset: &str, dataset_dir: &Path) -> Result<Vec<Source>> {
    let names: Vec<&str> = dataset
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        bail!("no dataset named (expected comma-separated names from {INFO_FILE} or paths of data files)");
    }
    let info_path = dataset_dir.join(INFO_FILE);
    let info = read_info(&info_path)?;
    let mut sources = Vec::new();
    for name in names {
        match info.as_ref().and_then(|i| i.get(name)) {
            Some(entry) => sources.extend(
                entry_sources(entry, dataset_dir)
                    .with_context(|| format!("{}: {name}", info_path.display()))?,
            ),
            None if is_direct_path(name) => sources.extend(
                local_files(Path::new(name))?
                    .into_iter()
                    .map(|path| Source {
                        path,
                        format: None,
                        ranking: false,
                    }),
            ),
            None => return Err(unknown_name(name, &info_path, info.as_ref())),
        }
    }
    Ok(sources)
}

/// `.parquet, .json, …, or .txt`.
fn data_extensions() -> String {
    let dotted: Vec<String> = DATA_EXTENSIONS.iter().map(|e| format!(".{e}")).collect();
    let (last, rest) = dotted.split_last().expect("data extensions");
    format!("{} or {last}", rest.join(", "))
}

fn is_direct_path(name: &str) -> bool {
    let path = Path::new(name);
    has_data_extension(path) || path.exists()
}

/// `path` itself, or the data files directly in it when it is a folder (one type of file, as
/// LLaMA-Factory requires), sorted.
fn local_files(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = fs::read_dir(path)
        .with_context(|| format!("{}: cannot read the folder", path.display()))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .filter(|p| has_data_extension(p))
        .collect();
    files.sort();
    let kinds: std::collections::BTreeSet<_> = files.iter().filter_map(|p| p.extension()).collect();
    if files.is_empty() {
        bail!(
            "{}: a folder without data files ({})",
            path.display(),
            DATA_EXTENSIONS.join(", ")
        );
    }
    if kinds.len() > 1 {
        bail!(
            "{}: a folder of data files of one type only (found several)",
            path.display()
        );
    }
    Ok(files)
}

fn unknown_name(name: &str, info_path: &Path, info: Option<&Map<String, Value>>) -> anyhow::Error {
    match info {
        Some(info) => {
            let known: Vec<&str> = info.keys().map(String::as_str).collect();
            // LLaMA-Factory's own file names ~110 datasets: the nearest few, not all of them.
            let nearest = crate::io::names::nearest(name, &known, crate::io::names::SUGGESTIONS);
            anyhow!(
                "unknown dataset {name:?}: not one of the {} names in {}{}; a direct path must \
                 be an existing folder or end in {}",
                known.len(),
                info_path.display(),
                if nearest.is_empty() {
                    String::new()
                } else {
                    format!(" (nearest: {})", nearest.join(", "))
                },
                data_extensions()
            )
        }
        None => anyhow!(
            "unknown dataset {name:?}: there is no {} to look it up in, and it is not a folder or \
             a file ending in {}",
            info_path.display(),
            data_extensions()
        ),
    }
}

/// `dataset_info.json` as a map of dataset names to entries, or None when there is no such file.
fn read_info(path: &Path) -> Result<Option<Map<String, Value>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text =
        fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => bail!("{}: expected an object of dataset entries", path.display()),
        Err(e) => bail!("{}:{}: not valid JSON: {e}", path.display(), e.line()),
    }
}

/// The files of one `dataset_info.json` entry: `hf_hub_url` (LLaMA-Factory's default hub) when
/// present, else `file_name`.
fn entry_sources(entry: &Value, dataset_dir: &Path) -> Result<Vec<Source>> {
    let entry = entry.as_object().context("expected an object")?;
    let files = match entry.get("hf_hub_url") {
        Some(id) => hub_files(entry, id.as_str().context("hf_hub_url: expected a string")?)?,
        None => {
            for (remote, what) in [
                ("ms_hub_url", "ModelScope"),
                ("om_hub_url", "Modelers"),
                ("script_url", "a loading script"),
                ("cloud_file_name", "cloud storage"),
            ] {
                if entry.contains_key(remote) {
                    bail!(
                        "{remote}: datasets from {what} are not supported: download the files \
                         and name them with file_name"
                    );
                }
            }
            let file_name = entry
                .get("file_name")
                .context("file_name: missing")?
                .as_str()
                .context("file_name: expected a string")?;
            local_files(&dataset_dir.join(file_name))?
        }
    };
    let (format, ranking) = entry_format(entry)?;
    Ok(files
        .into_iter()
        .map(|path| Source {
            path,
            format: Some(format.clone()),
            ranking,
        })
        .collect())
}

/// A Hub dataset's files for the entry's `split` (default `train`), `subset` and `folder`.
fn hub_files(entry: &Map<String, Value>, id: &str) -> Result<Vec<PathBuf>> {
    let text = |key: &str| -> Result<Option<&str>> {
        entry
            .get(key)
            .map(|v| {
                v.as_str()
                    .with_context(|| format!("{key}: expected a string"))
            })
            .transpose()
    };
    let query = SplitQuery {
        subset: text("subset")?,
        folder: text("folder")?,
        split: text("split")?.unwrap_or("train"),
    };
    crate::io::hub_dataset::dataset_files(
        id,
        query,
        &hub::cache_from_env(),
        hub::offline_from_env(),
    )
    .with_context(|| format!("hf_hub_url: {id}"))
}

/// The entry's layout (`formatting`, `columns`, `tags`) and whether it is preference data.
fn entry_format(entry: &Map<String, Value>) -> Result<(Format, bool)> {
    let ranking = match entry.get("ranking") {
        None => false,
        Some(value) => value.as_bool().context("ranking: expected true or false")?,
    };
    let mut format = match entry.get("formatting").map(|v| v.as_str()) {
        None | Some(Some("alpaca")) => Format::alpaca(),
        Some(Some("sharegpt")) => Format::sharegpt(),
        Some(Some("openai")) => Format::openai(),
        Some(other) => bail!(
            "formatting: {} is not one of alpaca, sharegpt, openai",
            other.map_or_else(|| entry["formatting"].to_string(), |s| format!("{s:?}"))
        ),
    };
    if let Some(columns) = entry.get("columns") {
        apply_columns(&mut format.columns, columns).context("columns")?;
    }
    if let Some(tags) = entry.get("tags") {
        apply_tags(&mut format.tags, tags).context("tags")?;
    }
    Ok((format, ranking))
}

/// Column keys LLaMA-Factory knows that serve other modalities.
const UNSUPPORTED_COLUMNS: &[&str] = &["images", "videos", "audios"];

fn apply_columns(columns: &mut Columns, value: &Value) -> Result<()> {
    let mut slots = [
        ("prompt", &mut columns.prompt),
        ("query", &mut columns.query),
        ("response", &mut columns.response),
        ("history", &mut columns.history),
        ("system", &mut columns.system),
        ("messages", &mut columns.messages),
        ("chosen", &mut columns.chosen),
        ("rejected", &mut columns.rejected),
        ("kto_tag", &mut columns.kto_tag),
        ("tools", &mut columns.tools),
    ];
    rename(&mut slots, value, UNSUPPORTED_COLUMNS, "column")
}

fn apply_tags(tags: &mut Tags, value: &Value) -> Result<()> {
    let mut slots = [
        ("role_tag", &mut tags.role),
        ("content_tag", &mut tags.content),
        ("user_tag", &mut tags.user),
        ("assistant_tag", &mut tags.assistant),
        ("observation_tag", &mut tags.observation),
        ("function_tag", &mut tags.function),
        ("system_tag", &mut tags.system),
    ];
    rename(&mut slots, value, &[], "tag")
}

/// Sets each named slot from an object of `key: name` strings; `what` names the kind of key.
fn rename(
    slots: &mut [(&str, &mut String)],
    value: &Value,
    unsupported: &[&str],
    what: &str,
) -> Result<()> {
    for (key, name) in string_map(value)? {
        if unsupported.contains(&key.as_str()) {
            bail!("{key}: this {what} is not supported (Hone trains on text only)");
        }
        let Some((_, slot)) = slots.iter_mut().find(|(k, _)| *k == key) else {
            let known: Vec<&str> = slots.iter().map(|(k, _)| *k).collect();
            bail!("{key}: unknown {what} key (expected {})", known.join(", "));
        };
        **slot = name;
    }
    Ok(())
}

/// A JSON object whose values are all strings, in key order.
fn string_map(value: &Value) -> Result<BTreeMap<String, String>> {
    let object = value.as_object().context("expected an object")?;
    object
        .iter()
        .map(|(k, v)| match v.as_str() {
            Some(s) => Ok((k.clone(), s.to_owned())),
            None => bail!("{k}: expected a string, found {v}"),
        })
        .collect()
}
