//! `hone sweep`: an automatic search for a run's PEFT configuration (the guide's AutoPEFT): a
//! base run config, a search space (methods and their own keys, learning rate, dropout, …) from
//! which trials are drawn, and successive halving on the eval loss. Every trial is a normal run
//! directory; all trials train to the first rung's steps, the best `1/eta` of them continue
//! (resumed from their checkpoint, so their learning-rate schedule is the full run's) to `eta`
//! times as many, and so on until the last rung, `max_steps`. The result is a ranked table.
//!
//! Budgets: `max_steps` bounds every trial; `minutes`, when given, stops promoting trials once
//! the sweep has run that long (the table then ranks what finished).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use serde::{Deserialize, Serialize};

use super::config::SftConfig;
use super::lora::parse_trainable_parameters;
use super::sft::{self, Event, RunOptions};

/// Each searched key's candidate values.
pub type Space = BTreeMap<String, Vec<Scalar>>;

/// A sweep file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    /// The run config every trial starts from (relative paths: from the sweep file's folder).
    pub base: PathBuf,
    /// Where the trials' run directories, `sweep.json` and `sweep.md` go.
    pub output_dir: PathBuf,
    /// Keys every trial sets, `key: value`.
    #[serde(default)]
    pub overrides: BTreeMap<String, Scalar>,
    /// Keys searched in every trial, each with its candidate values.
    #[serde(default)]
    pub space: Space,
    /// `finetuning_type`s searched, each with the candidate values of its own keys (e.g.
    /// `lora: {lora_rank: [8, 16]}`); none: the base config's method.
    #[serde(default)]
    pub methods: BTreeMap<String, Space>,
    /// How many configurations to draw (all of them when the space has no more).
    pub trials: usize,
    /// The steps the last rung trains to.
    pub max_steps: u64,
    /// Each rung keeps the best `1/eta` of the trials and trains them `eta` times longer.
    #[serde(default = "three")]
    pub eta: u64,
    /// Stop promoting trials after this many minutes.
    #[serde(default)]
    pub minutes: Option<f64>,
    /// Seeds the draw of the trials.
    #[serde(default)]
    pub seed: u64,
    /// The report of the best trials against the base model (`hone compare`).
    #[serde(default)]
    pub compare: Option<CompareSpec>,
}

fn three() -> u64 {
    3
}

/// What `hone sweep` compares at the end.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompareSpec {
    /// Prompts with references (as `hone compare --prompts`; relative to the sweep file).
    pub prompts: PathBuf,
    /// How many of the best trials.
    #[serde(default = "three_usize")]
    pub best: usize,
    #[serde(default = "default_new_tokens")]
    pub max_new_tokens: usize,
}

fn three_usize() -> usize {
    3
}

fn default_new_tokens() -> usize {
    64
}

/// A value of a config key, as YAML writes it.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Int(i) => write!(f, "{i}"),
            // Debug keeps a decimal point (`0.0005`), which the config's YAML reads as a float.
            Scalar::Float(x) => write!(f, "{x:?}"),
            Scalar::Text(s) => write!(f, "{s}"),
        }
    }
}

/// One drawn configuration and how far it got.
#[derive(Clone, Debug, Serialize)]
pub struct Trial {
    /// `trial-03`: its run directory's name.
    pub name: String,
    /// Its keys, method first (`finetuning_type`), as `key=value` overrides of the base.
    pub keys: BTreeMap<String, String>,
    /// `eval_loss` at each rung it reached, by step.
    pub evals: Vec<(u64, f64)>,
    pub trainable_params: Option<usize>,
    /// Seconds of training, all rungs.
    pub seconds: f64,
    /// Why it stopped, when it failed.
    pub error: Option<String>,
    pub dir: PathBuf,
}

impl Trial {
    /// Its last rung's step and eval loss.
    pub fn last(&self) -> Option<(u64, f64)> {
        self.evals.last().copied()
    }
}

/// The outcome: the trials best first (the furthest rung, then the lowest eval loss there; failed
/// ones last) and the rungs' steps.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub rungs: Vec<u64>,
    pub trials: Vec<Trial>,
    pub seconds: f64,
    pub stopped_by_time: bool,
}

impl SweepConfig {
    /// Reads a sweep file; relative paths in it become relative to its folder. Errors name the
    /// file.
    pub fn load(path: &Path) -> Result<SweepConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        let mut config: SweepConfig =
            serde_yaml_ng::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        resolve(&mut config.base);
        if let Some(c) = &mut config.compare {
            resolve(&mut c.prompts);
        }
        config
            .check()
            .with_context(|| format!("{}", path.display()))?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        ensure!(self.trials >= 1, "trials: must be at least 1");
        ensure!(self.eta >= 2, "eta: must be at least 2");
        ensure!(self.max_steps >= 1, "max_steps: must be at least 1");
        for (key, values) in self.space.iter().chain(self.methods.values().flatten()) {
            ensure!(!values.is_empty(), "{key}: give at least one value");
        }
        if let Some(key) = self.space.keys().find(|k| *k == "finetuning_type") {
            bail!("space: {key}: list the methods under `methods:` instead");
        }
        Ok(())
    }

    /// The rungs' steps: `max_steps / eta^k, …, max_steps` with `k` the halvings the trials
    /// allow (`eta^k ≤ trials`) and each rung at least one step; the first rung's steps divide
    /// every other's, so the runs evaluate exactly there.
    pub fn rungs(&self, trials: usize) -> Vec<u64> {
        let mut halvings = 0u32;
        while self.eta.pow(halvings + 1) <= trials as u64
            && self.max_steps / self.eta.pow(halvings + 1) >= 1
        {
            halvings += 1;
        }
        let first = self.max_steps / self.eta.pow(halvings);
        (0..=halvings).map(|i| first * self.eta.pow(i)).collect()
    }

    /// Draws the trials: every combination of the method's keys and the shared ones, shuffled by
    /// `seed`, the first `trials` kept.
    pub fn draw(&self) -> Vec<BTreeMap<String, String>> {
        let none = BTreeMap::new();
        let methods: Vec<(Option<&String>, &Space)> = match self.methods.is_empty() {
            true => vec![(None, &none)],
            false => self
                .methods
                .iter()
                .map(|(m, keys)| (Some(m), keys))
                .collect(),
        };
        let mut all = Vec::new();
        for (method, own) in methods {
            let mut keys = self.space.clone();
            keys.extend(own.clone());
            for combination in product(&keys) {
                let mut trial = combination;
                if let Some(m) = method {
                    trial.insert("finetuning_type".into(), m.clone());
                }
                all.push(trial);
            }
        }
        all.shuffle(&mut StdRng::seed_from_u64(self.seed));
        all.truncate(self.trials);
        all
    }
}

/// Every assignment of one value to each key.
fn product(keys: &Space) -> Vec<BTreeMap<String, String>> {
    let mut out = vec![BTreeMap::new()];
    for (key, values) in keys {
        out = out
            .into_iter()
            .flat_map(|partial| {
                values.iter().map(move |v| {
                    let mut next = partial.clone();
                    next.insert(key.clone(), v.to_string());
                    next
                })
            })
            .collect();
    }
    out
}

/// What the sweep tells its caller as it goes.
pub enum SweepEvent<'a> {
    Rung {
        index: usize,
        steps: u64,
        trials: usize,
    },
    /// A trial reached a rung (or failed, `eval_loss` None).
    Trial {
        trial: &'a Trial,
        steps: u64,
        eval_loss: Option<f64>,
    },
    Note(&'a str),
}

/// Runs the sweep.
pub fn run(config: &SweepConfig, on: &mut dyn FnMut(SweepEvent)) -> Result<Outcome> {
    let start = Instant::now();
    let draws = config.draw();
    let rungs = config.rungs(draws.len());
    let last = *rungs.last().expect("at least one rung");
    if last != config.max_steps {
        let note = format!(
            "the last rung is step {last}: max_steps {} rounded down to a multiple of the first rung's {} steps",
            config.max_steps, rungs[0]
        );
        on(SweepEvent::Note(&note));
    }
    let mut trials: Vec<Trial> = draws
        .into_iter()
        .enumerate()
        .map(|(i, keys)| {
            let name = format!("trial-{:02}", i + 1);
            Trial {
                dir: config.output_dir.join(&name),
                name,
                keys,
                evals: Vec::new(),
                trainable_params: None,
                seconds: 0.0,
                error: None,
            }
        })
        .collect();
    let mut alive: Vec<usize> = (0..trials.len()).collect();
    let mut stopped_by_time = false;
    for (index, &steps) in rungs.iter().enumerate() {
        on(SweepEvent::Rung {
            index,
            steps,
            trials: alive.len(),
        });
        for &t in &alive {
            let trial = &mut trials[t];
            let reached = train_to(config, trial, (steps, rungs[0], last));
            let eval_loss = match reached {
                Ok(loss) => {
                    trial.evals.push((steps, loss));
                    Some(loss)
                }
                Err(e) => {
                    trial.error = Some(format!("{e:#}"));
                    None
                }
            };
            on(SweepEvent::Trial {
                trial,
                steps,
                eval_loss,
            });
        }
        alive.retain(|&t| trials[t].error.is_none());
        if index + 1 == rungs.len() || alive.is_empty() {
            break;
        }
        let minutes = start.elapsed().as_secs_f64() / 60.0;
        if config.minutes.is_some_and(|m| minutes >= m) {
            stopped_by_time = true;
            let note =
                format!("{minutes:.1} minutes: the time budget is spent, no trial is promoted");
            on(SweepEvent::Note(&note));
            break;
        }
        alive.sort_by(|&a, &b| {
            let loss = |t: usize| trials[t].last().map_or(f64::INFINITY, |(_, l)| l);
            loss(a).total_cmp(&loss(b))
        });
        alive.truncate((alive.len() / config.eta as usize).max(1));
    }
    trials.sort_by(|a, b| rank_key(a).partial_cmp(&rank_key(b)).expect("no NaN keys"));
    Ok(Outcome {
        rungs,
        trials,
        seconds: start.elapsed().as_secs_f64(),
        stopped_by_time,
    })
}

/// Sorts the furthest rung first, then the lowest loss there; failed trials last.
fn rank_key(t: &Trial) -> (u8, i64, f64) {
    match (&t.error, t.last()) {
        (None, Some((step, loss))) if loss.is_finite() => (0, -(step as i64), loss),
        _ => (1, 0, 0.0),
    }
}

/// Trains `trial` to `steps` (resuming from its checkpoint after the first rung), its schedule
/// over `last` steps and an evaluation every `every` steps; returns the eval loss at `steps`.
fn train_to(
    config: &SweepConfig,
    trial: &mut Trial,
    (steps, every, last): (u64, u64, u64),
) -> Result<f64> {
    let mut overrides: Vec<String> = config
        .overrides
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .chain(trial.keys.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    let resuming = !trial.evals.is_empty();
    overrides.extend([
        format!("output_dir={}", trial.dir.display()),
        format!("max_steps={last}"),
        "eval_strategy=steps".into(),
        format!("eval_steps={every}"),
        format!("save_steps={last}"),
        format!("resume_from_checkpoint={resuming}"),
        format!("overwrite_output_dir={}", !resuming),
    ]);
    let run_config = SftConfig::load(&config.base, &overrides)?;
    let has_eval = run_config.data.val_size > 0.0 || run_config.data.eval_dataset.is_some();
    ensure!(
        has_eval,
        "{}: the sweep ranks trials by eval_loss: give val_size or eval_dataset",
        config.base.display()
    );
    let stop = AtomicBool::new(false);
    let options = RunOptions {
        interrupt: Some(&stop),
    };
    let mut at_rung = None;
    let mut trainable = None;
    let summary = sft::run(&run_config, &options, &mut |event| match event {
        Event::Note(text) => {
            trainable = trainable.or_else(|| parse_trainable_parameters(text));
        }
        Event::Evaluated { step, eval_loss } if step == steps => {
            at_rung = Some(eval_loss);
            if steps < last {
                stop.store(true, Ordering::SeqCst);
            }
        }
        _ => {}
    })?;
    trial.seconds += summary.seconds;
    trial.trainable_params = trial.trainable_params.or(trainable);
    match at_rung {
        Some(loss) if loss.is_finite() => Ok(loss),
        Some(loss) => bail!("eval_loss {loss} at step {steps}"),
        None if summary.early_stopped => bail!(
            "stopped early at step {} (early_stopping_steps) before step {steps}",
            summary.global_step
        ),
        None => bail!("no evaluation at step {steps}"),
    }
}

impl Outcome {
    /// The ranked table, Markdown.
    pub fn markdown(&self, config: &SweepConfig) -> String {
        let mut out = format!(
            "# Sweep over {}\n\nRungs (steps): {}; eta {}; {} trials; {:.1} minutes{}.\n\n",
            config.base.display(),
            self.rungs
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            config.eta,
            self.trials.len(),
            self.seconds / 60.0,
            if self.stopped_by_time {
                " (stopped by the time budget)"
            } else {
                ""
            },
        );
        out += "| rank | trial | method | keys | trainable params | steps | eval_loss | eval_loss by rung | seconds |\n";
        out += "|---|---|---|---|---|---|---|---|---|\n";
        for (rank, t) in self.trials.iter().enumerate() {
            let method = t
                .keys
                .get("finetuning_type")
                .map_or("(base)", String::as_str);
            let keys = t
                .keys
                .iter()
                .filter(|(k, _)| *k != "finetuning_type")
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
            let params = t.trainable_params.map_or("-".into(), |p| p.to_string());
            let (steps, loss) = match (&t.error, t.last()) {
                (Some(e), _) => ("-".to_string(), format!("failed: {}", first_line(e))),
                (None, Some((s, l))) => (s.to_string(), format!("{l:.4}")),
                (None, None) => ("-".into(), "-".into()),
            };
            let by_rung = t
                .evals
                .iter()
                .map(|(s, l)| format!("{s}: {l:.4}"))
                .collect::<Vec<_>>()
                .join(", ");
            out += &format!(
                "| {} | {} | {method} | {keys} | {params} | {steps} | {loss} | {by_rung} | {:.0} |\n",
                rank + 1,
                t.name,
                t.seconds
            );
        }
        out
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(trials: usize, max_steps: u64) -> SweepConfig {
        let yaml = format!(
            "base: x.yaml\noutput_dir: out\ntrials: {trials}\nmax_steps: {max_steps}\n\
             space:\n  learning_rate: [1.0e-4, 5.0e-4, 2.0e-3]\n\
             methods:\n  lora: {{lora_rank: [4, 8]}}\n  oft: {{}}\n"
        );
        serde_yaml_ng::from_str(&yaml).unwrap()
    }

    /// Successive halving's rungs: as many halvings as the trials allow, the first rung's
    /// steps dividing the others'.
    #[test]
    fn rungs_divide_the_budget_by_eta() {
        assert_eq!(config(9, 90).rungs(9), vec![10, 30, 90]);
        assert_eq!(config(8, 100).rungs(8), vec![33, 99]);
        assert_eq!(config(2, 60).rungs(2), vec![60]);
        assert_eq!(config(27, 10).rungs(27), vec![1, 3, 9]);
    }

    /// The draw covers each method's own keys and the shared ones, seeded, without repeats.
    #[test]
    fn trials_are_drawn_from_each_method_s_space() {
        let c = config(100, 90);
        let all = c.draw();
        // lora: 2 ranks × 3 rates; oft: 3 rates.
        assert_eq!(all.len(), 9);
        assert!(all.iter().all(|t| t.contains_key("learning_rate")));
        let lora = all
            .iter()
            .filter(|t| t["finetuning_type"] == "lora")
            .count();
        assert_eq!(lora, 6);
        assert!(all
            .iter()
            .filter(|t| t["finetuning_type"] == "oft")
            .all(|t| !t.contains_key("lora_rank")));
        let mut again = config(4, 90);
        again.seed = 0;
        assert_eq!(again.draw(), config(4, 90).draw());
        again.seed = 1;
        assert_ne!(again.draw(), config(4, 90).draw());
    }
}
