//! The runs under the board's `--runs` folders: which directories are runs (output directories
//! of `hone train` or LLaMA-Factory), what each one is (method, model, data, from its
//! `training_args.yaml`), and how it stands (status, steps, losses, wall time, from its log).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};

use super::follow::LogFollower;
use crate::train::checkpoint::{
    list_checkpoints, RunState, RunStatus, RUN_STATUS_NAME, TRAINER_LOG_NAME,
};
use crate::train::config::TRAINING_ARGS;

/// How deep under a `--runs` folder runs are looked for.
const MAX_DEPTH: usize = 4;
/// A run with neither `run_status.json` nor results whose log changed this recently is taken to
/// be running (LLaMA-Factory's runs say nothing else).
const LIVE_LOG_SECONDS: u64 = 120;

/// A directory is a run when it holds one of these.
const RUN_MARKERS: [&str; 3] = [TRAINER_LOG_NAME, TRAINING_ARGS, RUN_STATUS_NAME];

/// A run directory and its id in the board's URLs: its path under its `--runs` folder, after that
/// folder's index when there are several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    pub id: String,
    pub path: PathBuf,
}

pub fn is_run_dir(dir: &Path) -> bool {
    RUN_MARKERS.iter().any(|name| dir.join(name).is_file())
}

/// Every run under `roots`, ordered by id. A run's own subdirectories (its checkpoints) are not
/// searched.
pub fn discover(roots: &[PathBuf]) -> Vec<RunDir> {
    let mut runs = Vec::new();
    for (index, root) in roots.iter().enumerate() {
        let prefix = (roots.len() > 1).then(|| index.to_string());
        walk(root, root, prefix.as_deref(), 0, &mut runs);
    }
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    runs
}

/// The id of `path` under `root`: its relative path with `/`, after `prefix` when given.
pub fn id_under(root: &Path, prefix: Option<&str>, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let mut parts: Vec<String> = prefix.into_iter().map(str::to_string).collect();
    parts.extend(
        relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    match parts.is_empty() {
        true => ".".to_string(),
        false => parts.join("/"),
    }
}

fn walk(root: &Path, dir: &Path, prefix: Option<&str>, depth: usize, runs: &mut Vec<RunDir>) {
    if is_run_dir(dir) {
        runs.push(RunDir {
            id: id_under(root, prefix, dir),
            path: dir.to_path_buf(),
        });
        return;
    }
    if depth == MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut children: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    children.sort();
    for child in children {
        walk(root, &child, prefix, depth + 1, runs);
    }
}

/// The run directory that `id` names, confined to `roots` (see [`confined`]).
pub fn resolve(roots: &[PathBuf], id: &str) -> Result<PathBuf> {
    match confined(roots, id) {
        Ok(path) if is_run_dir(&path) => Ok(path),
        _ => bail!("{id}: no such run"),
    }
}

/// The path that `id` names under `roots` ([`id_under`] inverted), refused unless it stays
/// inside its folder: no `..`, no absolute parts, no link out of it.
pub fn confined(roots: &[PathBuf], id: &str) -> Result<PathBuf> {
    let (root, relative) = match roots {
        [root] => (root, id),
        _ => {
            let (index, rest) = id.split_once('/').unwrap_or((id, "."));
            let root = index.parse::<usize>().ok().and_then(|i| roots.get(i));
            (root.context("no such run folder")?, rest)
        }
    };
    let relative = Path::new(relative);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        bail!("{id}: not a run id");
    }
    let path = root.join(relative);
    let inside = match (path.canonicalize(), root.canonicalize()) {
        (Ok(path), Ok(root)) => path.starts_with(root),
        _ => false,
    };
    if !inside {
        bail!("{id}: not found");
    }
    Ok(path)
}

/// A run as the runs table shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RunSummary {
    pub id: String,
    /// running, finished, interrupted or failed.
    pub status: &'static str,
    /// Why it failed, or "stopped early".
    pub message: Option<String>,
    /// `stage/finetuning_type`, e.g. `sft/lora`.
    pub method: String,
    pub model: Option<String>,
    pub dataset: Option<String>,
    pub step: u64,
    pub total_steps: u64,
    pub last_loss: Option<f64>,
    pub best_eval_loss: Option<f64>,
    pub wall_seconds: Option<f64>,
    /// When it started, Unix seconds (`run_status.json`, else the log's first write).
    pub started: Option<f64>,
    pub checkpoints: Vec<u64>,
    pub alerts: usize,
}

/// Summarizes `run` from its files and its followed log.
pub fn summarize(run: &RunDir, log: &LogFollower) -> RunSummary {
    let config = read_config(&run.path).unwrap_or_default();
    let text = |key: &str| config.get(key).map(display_value);
    let records = log.points().iter().map(|p| &p.record);
    let last_train = records.clone().rfind(|r| r.get("loss").is_some());
    let best_eval_loss = records
        .clone()
        .filter_map(|r| r.get("eval_loss").and_then(Value::as_f64))
        .min_by(f64::total_cmp);
    let last = records.clone().next_back();
    let results = read_results(&run.path);
    let status = RunStatus::load(&run.path).ok().flatten();
    let (state, message) = state_of(&run.path, status.as_ref(), || !results.is_empty());
    let wall_seconds = results
        .get("train_runtime")
        .and_then(Value::as_f64)
        .or_else(|| {
            last.and_then(|r| r["elapsed_time"].as_str())
                .and_then(seconds_of_hms)
        });
    RunSummary {
        id: run.id.clone(),
        status: state,
        message,
        method: format!(
            "{}/{}",
            text("stage").unwrap_or_else(|| "sft".into()),
            text("finetuning_type").unwrap_or_else(|| "lora".into())
        ),
        model: text("model_name_or_path"),
        dataset: text("dataset"),
        step: last.and_then(|r| r["current_steps"].as_u64()).unwrap_or(0),
        total_steps: last.and_then(|r| r["total_steps"].as_u64()).unwrap_or(0),
        last_loss: last_train.and_then(|r| r["loss"].as_f64()),
        best_eval_loss,
        wall_seconds,
        started: started(&run.path, status.as_ref()),
        checkpoints: list_checkpoints(&run.path)
            .unwrap_or_default()
            .iter()
            .map(|c| c.step)
            .collect(),
        alerts: log.points().iter().map(|p| p.alerts.len()).sum(),
    }
}

/// The run's status name and message: from `run_status.json`, else from its files.
pub fn run_state(dir: &Path) -> (&'static str, Option<String>) {
    let status = RunStatus::load(dir).ok().flatten();
    state_of(dir, status.as_ref(), || !read_results(dir).is_empty())
}

/// [`run_state`] from the run's `status` when it has one; `finished` (whether it has results) is
/// asked only when it has none.
fn state_of(
    dir: &Path,
    status: Option<&RunStatus>,
    finished: impl FnOnce() -> bool,
) -> (&'static str, Option<String>) {
    match status {
        Some(status) => (state_name(status.current()), status.message.clone()),
        None => (state_name(state_from_files(dir, finished())), None),
    }
}

fn state_name(state: RunState) -> &'static str {
    match state {
        RunState::Running => "running",
        RunState::Finished => "finished",
        RunState::Interrupted => "interrupted",
        RunState::Failed => "failed",
    }
}

/// A run without `run_status.json`: finished once it has results, running while its log is
/// fresh, interrupted otherwise.
fn state_from_files(dir: &Path, finished: bool) -> RunState {
    if finished {
        return RunState::Finished;
    }
    let age = fs::metadata(dir.join(TRAINER_LOG_NAME))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    match age {
        Some(age) if age.as_secs() < LIVE_LOG_SECONDS => RunState::Running,
        _ => RunState::Interrupted,
    }
}

/// When the run started: its `status`, else its log's first write.
fn started(dir: &Path, status: Option<&RunStatus>) -> Option<f64> {
    if let Some(status) = status {
        return Some(status.started);
    }
    let meta = fs::metadata(dir.join(TRAINER_LOG_NAME)).ok()?;
    let time = meta.created().or_else(|_| meta.modified()).ok()?;
    let since = time.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(since.as_secs_f64())
}

/// `training_args.yaml` as flat keys (nested mappings joined with dots); empty when the run
/// has none.
pub fn read_config(dir: &Path) -> Result<BTreeMap<String, Value>> {
    let path = dir.join(TRAINING_ARGS);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).with_context(|| format!("{}: not YAML", path.display()))?;
    let value = serde_json::to_value(yaml)
        .with_context(|| format!("{}: not a mapping of plain values", path.display()))?;
    let mut flat = BTreeMap::new();
    flatten("", &value, &mut flat);
    Ok(flat)
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                let key = match prefix {
                    "" => key.clone(),
                    _ => format!("{prefix}.{key}"),
                };
                flatten(&key, value, out);
            }
        }
        _ if !prefix.is_empty() => {
            out.insert(prefix.to_string(), value.clone());
        }
        _ => {}
    }
}

/// A config value as the YAML shows it (strings without quotes, `null` for none).
pub fn display_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The run's final numbers: `all_results.json` (train and eval) and `predict_results.json`.
pub fn read_results(dir: &Path) -> Map<String, Value> {
    let mut results = Map::new();
    for name in ["all_results.json", "predict_results.json"] {
        let parsed = fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|text| serde_json::from_str::<Map<String, Value>>(&text).ok());
        results.extend(parsed.unwrap_or_default());
    }
    results
}

/// "H:MM:SS" or "N day(s), H:MM:SS" (Python's timedelta, as the log writes elapsed time).
pub fn seconds_of_hms(text: &str) -> Option<f64> {
    let (days, clock) = match text.split_once(", ") {
        Some((days, clock)) => (days.split_whitespace().next()?.parse::<u64>().ok()?, clock),
        None => (0, text),
    };
    let parts: Vec<u64> = clock
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match parts[..] {
        [h, m, s] => Some((days * 86_400 + h * 3600 + m * 60 + s) as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn runs_are_found_under_each_folder_and_confined_to_it() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        touch(&a.path().join("x/lora/trainer_log.jsonl"), "");
        touch(
            &a.path().join("x/lora/checkpoint-2/trainer_state.json"),
            "{}",
        );
        touch(&a.path().join("y/training_args.yaml"), "stage: sft\n");
        touch(&a.path().join("notes/readme.txt"), "");
        touch(&b.path().join("run_status.json"), "{}");
        let roots = vec![a.path().to_path_buf(), b.path().to_path_buf()];
        let ids: Vec<String> = discover(&roots).into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["0/x/lora", "0/y", "1"]);
        assert_eq!(
            resolve(&roots, "0/x/lora").unwrap(),
            a.path().join("x/lora")
        );
        assert_eq!(resolve(&roots, "1").unwrap(), b.path().join("."));
        for bad in ["0/../x", "0/notes", "0//etc", "2/y", "0/x"] {
            assert!(resolve(&roots, bad).is_err(), "{bad}");
        }
        let one = vec![a.path().to_path_buf()];
        assert_eq!(discover(&one)[0].id, "x/lora");
        assert!(resolve(&one, "x/lora/../../y").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_link_out_of_the_folder_is_no_run() {
        let a = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        touch(&outside.path().join("trainer_log.jsonl"), "");
        std::os::unix::fs::symlink(outside.path(), a.path().join("away")).unwrap();
        assert!(resolve(&[a.path().to_path_buf()], "away").is_err());
    }

    #[test]
    fn a_summary_reads_the_config_log_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir {
            id: "r".into(),
            path: dir.path().to_path_buf(),
        };
        touch(
            &dir.path().join(TRAINING_ARGS),
            "### model\nmodel_name_or_path: m.gguf\n### method\nstage: dpo\nfinetuning_type: full\n\
             ### dataset\ndataset: a,b\n",
        );
        touch(
            &dir.path().join(TRAINER_LOG_NAME),
            "{\"current_steps\": 1, \"total_steps\": 4, \"loss\": 2.0, \"elapsed_time\": \"0:00:05\"}\n\
             {\"current_steps\": 2, \"total_steps\": 4, \"loss\": 1.5, \"elapsed_time\": \"0:01:05\"}\n\
             {\"current_steps\": 2, \"total_steps\": 4, \"eval_loss\": 1.7, \"elapsed_time\": \"0:01:07\"}\n",
        );
        let status = RunStatus::begin(dir.path()).unwrap();
        let mut log = LogFollower::new(dir.path().join(TRAINER_LOG_NAME));
        log.refresh().unwrap();
        let s = summarize(&run, &log);
        assert_eq!(s.status, "running");
        assert_eq!(s.method, "dpo/full");
        assert_eq!(s.model.as_deref(), Some("m.gguf"));
        assert_eq!(s.dataset.as_deref(), Some("a,b"));
        assert_eq!((s.step, s.total_steps), (2, 4));
        assert_eq!(s.last_loss, Some(1.5));
        assert_eq!(s.best_eval_loss, Some(1.7));
        assert_eq!(s.wall_seconds, Some(67.0));
        status
            .end(dir.path(), RunState::Failed, Some("loss is NaN".into()))
            .unwrap();
        let s = summarize(&run, &log);
        assert_eq!(
            (s.status, s.message.as_deref()),
            ("failed", Some("loss is NaN"))
        );
    }

    #[test]
    fn a_run_without_a_status_file_is_judged_by_its_files() {
        let dir = tempfile::tempdir().unwrap();
        touch(&dir.path().join(TRAINER_LOG_NAME), "");
        assert_eq!(
            state_from_files(dir.path(), !read_results(dir.path()).is_empty()),
            RunState::Running
        );
        touch(
            &dir.path().join("all_results.json"),
            "{\"train_loss\": 1.25}",
        );
        let results = read_results(dir.path());
        assert_eq!(results["train_loss"], 1.25);
        assert_eq!(
            state_from_files(dir.path(), !results.is_empty()),
            RunState::Finished
        );
    }

    #[test]
    fn elapsed_times_read_back_as_seconds() {
        assert_eq!(seconds_of_hms("0:00:07"), Some(7.0));
        assert_eq!(seconds_of_hms("1:02:03"), Some(3723.0));
        assert_eq!(seconds_of_hms("2 days, 0:00:01"), Some(172_801.0));
        assert_eq!(seconds_of_hms("soon"), None);
    }
}
