//! Two or more runs side by side: the config keys whose values differ (the rest counted), the
//! final numbers, and the `hone compare` reports that cover any of the runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::runs::display_value;

/// One config key that differs: each run's value (`None` where the run does not set it).
#[derive(Debug, PartialEq, Serialize)]
pub struct KeyDiff {
    pub key: String,
    pub values: Vec<Option<String>>,
}

/// The keys whose values are not all the same, in key order; and how many keys agree.
pub fn config_diff(configs: &[BTreeMap<String, Value>]) -> (Vec<KeyDiff>, usize) {
    let keys: BTreeSet<&String> = configs.iter().flat_map(|c| c.keys()).collect();
    let mut same = 0;
    let mut diffs = Vec::new();
    for key in keys {
        let values: Vec<Option<String>> = configs
            .iter()
            .map(|c| c.get(key).map(display_value))
            .collect();
        if values.windows(2).all(|w| w[0] == w[1]) {
            same += 1;
        } else {
            diffs.push(KeyDiff {
                key: key.clone(),
                values,
            });
        }
    }
    (diffs, same)
}

/// A `hone compare` report found under the board's folders, and which runs it covers.
#[derive(Debug, PartialEq, Serialize)]
pub struct Report {
    /// The HTML report (the Markdown one beside it names the adapters).
    pub html: PathBuf,
    /// Indices of the compared runs whose adapter (or one of its checkpoints) it compares.
    pub runs: Vec<usize>,
}

/// How deep under a folder reports are looked for.
const REPORT_DEPTH: usize = 4;

/// The reports under `roots` that compare an adapter of any of `runs` (canonical run paths).
pub fn find_reports(roots: &[PathBuf], runs: &[PathBuf]) -> Vec<Report> {
    let mut markdown = Vec::new();
    for root in roots {
        collect_markdown(root, 0, &mut markdown);
    }
    markdown
        .into_iter()
        .filter_map(|md| {
            let html = md.with_extension("html");
            let text = fs::read_to_string(&md).ok()?;
            let adapters = report_adapters(&text, md.parent()?);
            let covered: Vec<usize> = runs
                .iter()
                .enumerate()
                .filter(|(_, run)| adapters.iter().any(|a| a.starts_with(run)))
                .map(|(i, _)| i)
                .collect();
            (html.is_file() && !covered.is_empty()).then_some(Report {
                html,
                runs: covered,
            })
        })
        .collect()
}

fn collect_markdown(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() && depth < REPORT_DEPTH {
            collect_markdown(&path, depth + 1, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// The adapter directories a `hone compare` Markdown report names in its `### label (adapter
/// DIR)` headings (Markdown-escaped), canonical; a relative one is taken from where the report
/// is, then from the board's working directory.
fn report_adapters(markdown: &str, report_dir: &Path) -> Vec<PathBuf> {
    markdown
        .lines()
        .filter(|line| line.starts_with("### "))
        .filter_map(|line| line.split_once(" (adapter ")?.1.rsplit_once(')'))
        .filter_map(|(dir, _)| {
            let dir = unescape_markdown(dir);
            let dir = Path::new(&dir);
            [report_dir.join(dir), dir.to_path_buf()]
                .into_iter()
                .find_map(|p| p.canonicalize().ok())
        })
        .collect()
}

/// Undoes the backslash escapes of `eval::compare::markdown::inline`.
fn unescape_markdown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn only_differing_keys_are_listed() {
        let a = config(&[
            ("lora_rank", json!(8)),
            ("learning_rate", json!(1e-4)),
            ("stage", json!("sft")),
        ]);
        let b = config(&[
            ("lora_rank", json!(16)),
            ("learning_rate", json!(1e-4)),
            ("stage", json!("sft")),
        ]);
        let c = config(&[("lora_rank", json!(8)), ("stage", json!("sft"))]);
        let (diff, same) = config_diff(&[a, b, c]);
        assert_eq!(same, 1);
        let keys: Vec<&str> = diff.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys, ["learning_rate", "lora_rank"]);
        assert_eq!(
            diff[0].values,
            [Some("0.0001".into()), Some("0.0001".into()), None]
        );
        assert_eq!(
            diff[1].values,
            [Some("8".into()), Some("16".into()), Some("8".into())]
        );
    }

    #[test]
    fn a_report_is_linked_to_the_runs_whose_adapters_it_names() {
        let root = tempfile::tempdir().unwrap();
        let run_a = root.path().join("run_a");
        let run_b = root.path().join("b");
        fs::create_dir_all(run_a.join("checkpoint-4")).unwrap();
        fs::create_dir_all(&run_b).unwrap();
        fs::create_dir_all(root.path().join("reports")).unwrap();
        let md = "# Comparison\n\n### adapter\\_1 (adapter ../run\\_a/checkpoint-4)\n\nrank 8\n";
        fs::write(root.path().join("reports/cmp.md"), md).unwrap();
        fs::write(root.path().join("reports/cmp.html"), "<html>").unwrap();
        fs::write(root.path().join("reports/other.md"), "# notes\n").unwrap();
        let runs = [run_b.canonicalize().unwrap(), run_a.canonicalize().unwrap()];
        let reports = find_reports(&[root.path().to_path_buf()], &runs);
        assert_eq!(
            reports,
            [Report {
                html: root.path().join("reports/cmp.html"),
                runs: vec![1],
            }]
        );
    }
}
