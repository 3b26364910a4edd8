//! What a comparison says about each model it ran: a label to tell it by, and for an adapter the
//! settings it was trained with (from `adapter_config.json` and Hone's `training_args.yaml`) and
//! the data it was trained on (Hone's `dataset_record.json`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::data::record::DATASET_RECORD;
use crate::train::config::{find_run_file, find_training_args};

/// The `adapter_config.json` keys a report shows: PEFT's method, rank, scaling, targets and
/// variants, and the base model the adapter was made for.
const KEY_SETTINGS: &[&str] = &[
    "peft_type",
    "base_model_name_or_path",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "use_rslora",
    "use_dora",
];

/// An adapter's directory and the settings it was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterSettings {
    pub dir: PathBuf,
    /// [`KEY_SETTINGS`] present in `adapter_config.json`, in that order, as display text; then a
    /// `data` row per dataset file of the run's record.
    pub config: Vec<(String, String)>,
    /// `training_args.yaml` from the adapter directory or its parent (a checkpoint's run), verbatim.
    pub training_args: Option<(PathBuf, String)>,
}

impl AdapterSettings {
    /// Reads `dir/adapter_config.json` (an error naming the file when it is missing or not a JSON
    /// object) and the nearest `training_args.yaml`.
    pub fn read(dir: &Path) -> Result<AdapterSettings> {
        let path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let config: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        let object = config
            .as_object()
            .with_context(|| format!("{}: expected a JSON object", path.display()))?;
        let mut config: Vec<(String, String)> = KEY_SETTINGS
            .iter()
            .filter_map(|&key| Some((key.to_owned(), display_value(object.get(key)?))))
            .collect();
        config.extend(dataset_files(dir)?);
        Ok(AdapterSettings {
            dir: dir.to_owned(),
            config,
            training_args: training_args(dir)?,
        })
    }
}

/// A JSON value as a reader wants to see it: strings bare, lists of strings comma-separated.
fn display_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(Value::is_string) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// The files of the run's `dataset_record.json` (in `dir` or its parent, as `training_args.yaml`),
/// one `("data", "path (dataset): 5 of 6 rows, 1234 bytes, sha256 …")` row each.
fn dataset_files(dir: &Path) -> Result<Vec<(String, String)>> {
    let Some(path) = find_run_file(dir, DATASET_RECORD) else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let record: Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let files = record["files"]
        .as_array()
        .with_context(|| format!("{}: files: expected a list", path.display()))?;
    Ok(files
        .iter()
        .map(|f| {
            let text = |key: &str| display_value(&f[key]);
            let line = format!(
                "{} ({}): {} of {} rows, {} bytes, sha256 {}",
                text("path"),
                text("role"),
                text("rows_used"),
                text("rows"),
                text("bytes"),
                text("sha256"),
            );
            ("data".to_owned(), line)
        })
        .collect())
}

/// The run's `training_args.yaml` ([`find_training_args`]) and its text.
fn training_args(dir: &Path) -> Result<Option<(PathBuf, String)>> {
    find_training_args(dir)
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            Ok((path, text))
        })
        .transpose()
}

/// The label of each model: `base`, then each adapter directory's name. A name already taken is
/// prefixed with its parent directory's (`run-a/checkpoint-100`), and numbered if still taken.
pub fn model_labels(adapters: &[PathBuf]) -> Vec<String> {
    let mut labels = vec!["base".to_owned()];
    for dir in adapters {
        // Resolved, so that `.` or `run/checkpoint-5/..` are named by the directory they are.
        let dir = &dir.canonicalize().unwrap_or_else(|_| dir.clone());
        let name = file_name(dir).unwrap_or_else(|| dir.display().to_string());
        let qualified = match dir.parent().and_then(file_name) {
            Some(parent) => format!("{parent}/{name}"),
            None => name.clone(),
        };
        let label = [name, qualified.clone()]
            .into_iter()
            .chain((2..).map(|n| format!("{qualified} ({n})")))
            .find(|candidate| !labels.contains(candidate))
            .expect("the numbered candidates never run out");
        labels.push(label);
    }
    labels
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name().map(|n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::config::TRAINING_ARGS;

    #[test]
    fn labels_are_directory_names_disambiguated() {
        let dirs = [
            "out/lora",
            "a/checkpoint-5",
            "b/checkpoint-5/",
            "b/checkpoint-5",
            "base",
        ];
        let dirs: Vec<PathBuf> = dirs.iter().map(PathBuf::from).collect();
        assert_eq!(
            model_labels(&dirs),
            [
                "base",
                "lora",
                "checkpoint-5",
                "b/checkpoint-5",
                "b/checkpoint-5 (2)",
                "base (2)",
            ]
        );
    }

    #[test]
    fn adapter_settings_keep_the_key_fields_and_the_run_config() {
        let tmp = tempfile::tempdir().unwrap();
        let checkpoint = tmp.path().join("checkpoint-10");
        std::fs::create_dir(&checkpoint).unwrap();
        let config = r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
            "target_modules": ["q_proj", "v_proj"], "use_rslora": false, "bias": "none"}"#;
        std::fs::write(checkpoint.join("adapter_config.json"), config).unwrap();
        std::fs::write(tmp.path().join(TRAINING_ARGS), "lora_rank: 8\n").unwrap();
        let settings = AdapterSettings::read(&checkpoint).unwrap();
        let pairs: Vec<(&str, &str)> = settings
            .config
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("peft_type", "LORA"),
                ("r", "8"),
                ("lora_alpha", "16"),
                ("lora_dropout", "0.0"),
                ("target_modules", "q_proj, v_proj"),
                ("use_rslora", "false"),
            ]
        );
        assert_eq!(
            settings.training_args,
            Some((tmp.path().join(TRAINING_ARGS), "lora_rank: 8\n".to_owned()))
        );
    }

    #[test]
    fn a_directory_without_adapter_config_is_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = AdapterSettings::read(tmp.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: cannot read",
                tmp.path().join("adapter_config.json").display()
            )
        );
    }

    /// A checkpoint's settings list the run's data files from the record in its parent.
    #[test]
    fn a_checkpoint_shows_its_runs_data_files() {
        let run = tempfile::tempdir().unwrap();
        let checkpoint = run.path().join("checkpoint-10");
        std::fs::create_dir(&checkpoint).unwrap();
        let config = r#"{"peft_type": "LORA", "r": 8}"#;
        std::fs::write(checkpoint.join("adapter_config.json"), config).unwrap();
        let record = serde_json::json!({
            "files": [{"path": "data/a.jsonl", "role": "dataset", "sha256": "ab12",
                       "bytes": 300, "rows": 6, "rows_used": 5}],
            "train_rows": 4,
            "eval_rows": 1,
        });
        std::fs::write(run.path().join(DATASET_RECORD), record.to_string()).unwrap();
        let settings = AdapterSettings::read(&checkpoint).unwrap();
        let want = "data/a.jsonl (dataset): 5 of 6 rows, 300 bytes, sha256 ab12";
        assert_eq!(
            settings.config,
            [
                ("peft_type".to_owned(), "LORA".to_owned()),
                ("r".to_owned(), "8".to_owned()),
                ("data".to_owned(), want.to_owned()),
            ]
        );

        std::fs::write(run.path().join(DATASET_RECORD), "{").unwrap();
        let err = AdapterSettings::read(&checkpoint).unwrap_err();
        assert!(format!("{err:#}").contains("dataset_record.json: not valid JSON"));
    }
}
