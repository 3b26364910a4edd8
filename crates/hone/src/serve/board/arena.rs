//! The arena: a prompt answered side by side by the base model and one or two adapters or
//! checkpoints of the runs (through the board's own `/v1/chat/completions`), shown in a hidden
//! order until rated. Each rating goes to `arena/ratings.jsonl` in the first `--runs` folder (the
//! guide's checklist per answer: relevance, professionalism, consistency, creativity, 1 to 5);
//! a preferred answer also makes LLaMA-Factory preference pairs (`arena_dpo.jsonl`, with a
//! `dataset_info.json` naming it `arena_dpo`), so `stage: dpo` trains on them as they are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::runs::{self, RunDir};
use crate::io::atomic;
use crate::train::checkpoint::{list_checkpoints, unix_now};

/// The folder of the arena's files, in the first `--runs` folder.
pub const ARENA_DIR: &str = "arena";
const RATINGS_FILE: &str = "ratings.jsonl";
const PAIRS_FILE: &str = "arena_dpo.jsonl";
/// The pairs' name in the folder's `dataset_info.json`.
pub const PAIRS_DATASET: &str = "arena_dpo";
/// The guide's checklist for judging answers.
pub const CRITERIA: [&str; 4] = ["relevance", "professionalism", "consistency", "creativity"];

/// A model the arena can ask: the base, a run's final adapter, or one of its checkpoints.
#[derive(Debug, PartialEq, Serialize)]
pub struct Candidate {
    /// Its `model` in chat requests: the base's name, a run id, or `RUN/checkpoint-N`.
    pub name: String,
    pub run: Option<String>,
    pub step: Option<u64>,
}

fn is_adapter(dir: &Path) -> bool {
    dir.join("adapter_config.json").is_file()
}

/// The base, then each run's adapter and the adapters of its checkpoints.
pub fn candidates(base: &str, runs: &[RunDir]) -> Vec<Candidate> {
    let mut list = vec![Candidate {
        name: base.to_string(),
        run: None,
        step: None,
    }];
    for run in runs {
        if is_adapter(&run.path) {
            list.push(Candidate {
                name: run.id.clone(),
                run: Some(run.id.clone()),
                step: None,
            });
        }
        for checkpoint in list_checkpoints(&run.path).unwrap_or_default() {
            if is_adapter(&checkpoint.path) {
                list.push(Candidate {
                    name: format!("{}/checkpoint-{}", run.id, checkpoint.step),
                    run: Some(run.id.clone()),
                    step: Some(checkpoint.step),
                });
            }
        }
    }
    list
}

/// The adapter directory a candidate name stands for, confined to the runs under `roots`.
pub fn adapter_dir(roots: &[PathBuf], name: &str) -> Result<PathBuf> {
    let checkpoint = name
        .rsplit_once("/checkpoint-")
        .filter(|(_, step)| !step.is_empty() && step.bytes().all(|b| b.is_ascii_digit()));
    let dir = match checkpoint {
        Some((run, step)) => runs::resolve(roots, run)?.join(format!("checkpoint-{step}")),
        None => runs::resolve(roots, name)?,
    };
    ensure!(is_adapter(&dir), "{name}: no adapter there");
    Ok(dir)
}

/// One answer as rated.
#[derive(Debug, Deserialize, Serialize)]
pub struct RatedAnswer {
    /// The candidate that wrote it.
    pub model: String,
    pub text: String,
    /// [`CRITERIA`] from 1 to 5.
    pub scores: BTreeMap<String, u8>,
}

/// What the page sends once the user has rated.
#[derive(Debug, Deserialize)]
pub struct Rating {
    #[serde(default)]
    pub system: Option<String>,
    pub prompt: String,
    pub answers: Vec<RatedAnswer>,
    /// The index of the preferred answer; none for a tie.
    pub preferred: Option<usize>,
}

impl Rating {
    fn check(&self) -> Result<()> {
        ensure!(!self.prompt.trim().is_empty(), "prompt: empty");
        ensure!(
            (2..=3).contains(&self.answers.len()),
            "answers: two or three"
        );
        for (i, answer) in self.answers.iter().enumerate() {
            for (key, &score) in &answer.scores {
                if !CRITERIA.contains(&key.as_str()) {
                    bail!(
                        "answers[{i}].scores: {key}: not one of {}",
                        CRITERIA.join(", ")
                    );
                }
                ensure!(
                    (1..=5).contains(&score),
                    "answers[{i}].scores.{key}: 1 to 5"
                );
            }
        }
        if let Some(p) = self.preferred {
            ensure!(p < self.answers.len(), "preferred: no answer {p}");
        }
        Ok(())
    }

    /// LLaMA-Factory's Alpaca preference rows: the preferred answer against each other one.
    fn pairs(&self) -> Vec<Value> {
        let Some(p) = self.preferred else {
            return Vec::new();
        };
        let chosen = &self.answers[p].text;
        (0..self.answers.len())
            .filter(|&i| i != p && self.answers[i].text != *chosen)
            .map(|i| {
                let mut row = json!({
                    "instruction": self.prompt,
                    "input": "",
                    "chosen": chosen,
                    "rejected": self.answers[i].text,
                });
                if let Some(system) = self.system.as_ref().filter(|s| !s.is_empty()) {
                    row["system"] = json!(system);
                }
                row
            })
            .collect()
    }
}

/// Appends `rating` to the arena's files in `root/arena`; returns how many preference pairs it
/// made.
pub fn record(root: &Path, rating: &Rating) -> Result<usize> {
    rating.check()?;
    let dir = root.join(ARENA_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let info = dir.join("dataset_info.json");
    if !info.exists() {
        let columns = json!({"prompt": "instruction", "query": "input", "chosen": "chosen",
            "rejected": "rejected", "system": "system"});
        let entry = json!({"file_name": PAIRS_FILE, "ranking": true, "columns": columns});
        atomic::write_json(&info, &json!({ PAIRS_DATASET: entry }))?;
    }
    let preferred = rating.preferred.map(|p| rating.answers[p].model.clone());
    let line = json!({
        "time": unix_now(),
        "system": rating.system,
        "prompt": rating.prompt,
        "answers": rating.answers,
        "preferred": preferred,
    });
    atomic::append_json_lines(&dir.join(RATINGS_FILE), &[line])?;
    let pairs = rating.pairs();
    atomic::append_json_lines(&dir.join(PAIRS_FILE), &pairs)?;
    Ok(pairs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(model: &str, text: &str, relevance: u8) -> RatedAnswer {
        RatedAnswer {
            model: model.into(),
            text: text.into(),
            scores: BTreeMap::from([("relevance".to_string(), relevance)]),
        }
    }

    #[test]
    fn candidates_are_the_base_then_adapters_and_their_checkpoints() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("lora");
        for dir in [run.clone(), run.join("checkpoint-5")] {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("adapter_config.json"), "{}").unwrap();
        }
        std::fs::write(run.join("checkpoint-5/trainer_state.json"), "{}").unwrap();
        std::fs::write(run.join("trainer_log.jsonl"), "").unwrap();
        let roots = [root.path().to_path_buf()];
        let names: Vec<String> = candidates("base", &runs::discover(&roots))
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["base", "lora", "lora/checkpoint-5"]);
        assert_eq!(
            adapter_dir(&roots, "lora/checkpoint-5").unwrap(),
            run.join("checkpoint-5")
        );
        assert!(adapter_dir(&roots, "lora/checkpoint-6").is_err());
        assert!(adapter_dir(&roots, "../lora").is_err());
    }

    #[test]
    fn a_rating_makes_preference_rows_for_dpo() {
        let root = tempfile::tempdir().unwrap();
        let rating = Rating {
            system: Some("Be brief.".into()),
            prompt: "Who are you?".into(),
            answers: vec![
                answer("base", "SmolLM.", 2),
                answer("lora", "Kestrel.", 5),
                answer("lora/checkpoint-5", "Kes.", 4),
            ],
            preferred: Some(1),
        };
        assert_eq!(record(root.path(), &rating).unwrap(), 2);
        let arena = root.path().join(ARENA_DIR);
        let pairs = std::fs::read_to_string(arena.join(PAIRS_FILE)).unwrap();
        let first: Value = serde_json::from_str(pairs.lines().next().unwrap()).unwrap();
        assert_eq!(
            first,
            json!({"instruction": "Who are you?", "input": "", "chosen": "Kestrel.",
                   "rejected": "SmolLM.", "system": "Be brief."})
        );
        let info: Value = serde_json::from_str(
            &std::fs::read_to_string(arena.join("dataset_info.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(info[PAIRS_DATASET]["ranking"], true);
        let ratings = std::fs::read_to_string(arena.join(RATINGS_FILE)).unwrap();
        let line: Value = serde_json::from_str(ratings.trim()).unwrap();
        assert_eq!(line["preferred"], "lora");
        assert_eq!(line["answers"][0]["scores"]["relevance"], 2);

        let tie = Rating {
            preferred: None,
            ..rating
        };
        assert_eq!(record(root.path(), &tie).unwrap(), 0);
        let bad = Rating {
            system: None,
            prompt: "q".into(),
            answers: vec![answer("a", "x", 9), answer("b", "y", 1)],
            preferred: None,
        };
        assert!(record(root.path(), &bad)
            .unwrap_err()
            .to_string()
            .contains("1 to 5"));
    }
}
