//! Runs started from the board: a config (YAML with LLaMA-Factory's keys, as `hone train` reads
//! it) is checked, shown with its memory plan and its first rows as the model will see them, and
//! started as a `hone train` child process writing into the first `--runs` folder. The board
//! holds the child, so a page reload loses nothing; Stop sends it Ctrl-C's signal, which saves a
//! checkpoint and exits as at a terminal.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::io::atomic;
use crate::train::config::SftConfig;
use crate::train::sft::plan::memory_plan;
use crate::train::sft::preview::preview;

/// Where launch configs and the children's output go, inside the first `--runs` folder (hidden:
/// not a run itself).
const LAUNCH_DIR: &str = ".hone-board";
/// Rows of the first dataset shown before a start.
const PREVIEW_ROWS: usize = 3;
/// The end of a child's output kept for the page.
const LOG_TAIL_BYTES: u64 = 4096;

/// A config the page sent, checked: where it is written and where its run will go.
pub struct Checked {
    pub config: SftConfig,
    pub config_path: PathBuf,
    pub output_dir: PathBuf,
}

/// Checks `yaml` as the config of a run named `name` under `root`: the name one plain folder
/// name, the YAML valid for `hone train` (errors name the key and line), `output_dir` set to
/// `root/name` whatever the YAML says.
pub fn check(root: &Path, name: &str, yaml: &str) -> Result<Checked> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() || name.len() > 100 || name.starts_with('.') || !plain {
        bail!("name: use letters, digits, '-', '_' and '.' (not first), at most 100");
    }
    let dir = root.join(LAUNCH_DIR);
    fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let config_path = dir.join(format!("{name}.yaml"));
    atomic::write_text(&config_path, yaml)?;
    let output_dir = root.join(name);
    let output = format!("output_dir={}", output_dir.display());
    let config = SftConfig::load(&config_path, &[output])?;
    Ok(Checked {
        config,
        config_path,
        output_dir,
    })
}

/// What the page shows before Start: the resolved config, the memory plan and the data preview.
pub fn review(checked: &Checked) -> Result<Value> {
    let plan = memory_plan(&checked.config)?;
    let data = preview(&checked.config, PREVIEW_ROWS)?;
    let samples: Vec<Value> = data
        .samples
        .iter()
        .map(|s| {
            let pieces: Vec<Value> = s
                .pieces
                .iter()
                .map(|p| json!({"text": p.text, "trained": p.trained}))
                .collect();
            json!({"origin": s.origin, "pieces": pieces})
        })
        .collect();
    Ok(json!({
        "yaml": checked.config.to_yaml(),
        "output_dir": checked.output_dir,
        "exists": checked.output_dir.exists(),
        "plan": {"table": plan.table(), "fits": plan.fits(), "json": plan.to_json()},
        "data": {"stats": data.stats_text(), "samples": samples},
    }))
}

/// A `hone train` child started by this board.
struct Launch {
    /// Its run's id on the board.
    run_id: String,
    child: Child,
    output: PathBuf,
    exit: Option<i32>,
}

#[derive(Default)]
pub struct Launches {
    items: Mutex<Vec<Launch>>,
}

impl Launches {
    /// Starts `hone train` (this same executable) on `checked`, its output to a log file beside
    /// the config; `run_id` is how the board will name the run.
    pub fn start(&self, checked: &Checked, run_id: String) -> Result<()> {
        if checked.output_dir.exists() {
            bail!(
                "{}: exists already: pick another name",
                checked.output_dir.display()
            );
        }
        let output = checked.config_path.with_extension("log");
        let log = File::create(&output)
            .with_context(|| format!("{}: cannot create", output.display()))?;
        let exe = std::env::current_exe().context("cannot find the hone executable")?;
        let child = Command::new(exe)
            .arg("train")
            .arg(&checked.config_path)
            .arg(format!("output_dir={}", checked.output_dir.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start hone train")?;
        self.lock().push(Launch {
            run_id,
            child,
            output,
            exit: None,
        });
        Ok(())
    }

    /// Asks the run's child to stop as Ctrl-C would: a checkpoint after the current step, then
    /// exit. Only runs this board started can be stopped from it.
    pub fn stop(&self, run_id: &str) -> Result<()> {
        let mut items = self.lock();
        let launch = items
            .iter_mut()
            .rev()
            .find(|l| l.run_id == run_id)
            .context("this board did not start that run: stop it where it runs (Ctrl-C)")?;
        if launch.exited().is_some() {
            bail!("the run has ended already");
        }
        interrupt(&mut launch.child)
    }

    /// Every child: its run, whether it runs, its exit code, and the end of its output.
    pub fn list(&self) -> Vec<Value> {
        self.lock()
            .iter_mut()
            .map(|l| {
                let exit = l.exited();
                json!({
                    "run": l.run_id,
                    "running": exit.is_none(),
                    "exit_code": exit,
                    "output": tail(&l.output),
                })
            })
            .collect()
    }

    /// Whether this board started `run_id` and it still runs.
    pub fn running(&self, run_id: &str) -> bool {
        self.lock()
            .iter_mut()
            .any(|l| l.run_id == run_id && l.exited().is_none())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Launch>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Launch {
    /// The exit code once the child has ended (it is reaped then); -1 for a signal.
    fn exited(&mut self) -> Option<i32> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status.code().unwrap_or(-1));
            }
        }
        self.exit
    }
}

#[cfg(unix)]
fn interrupt(child: &mut Child) -> Result<()> {
    let pid = libc::pid_t::try_from(child.id()).context("a process id out of range")?;
    // SAFETY: sends SIGINT to our own child, which is not yet reaped (so the pid is still it).
    if unsafe { libc::kill(pid, libc::SIGINT) } != 0 {
        bail!("cannot signal the run: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Without Unix signals there is no Ctrl-C to send: the child is ended (its last checkpoint stays).
#[cfg(not(unix))]
fn interrupt(child: &mut Child) -> Result<()> {
    child.kill().context("cannot stop the run")
}

/// The last few KiB of a file, from a line start.
fn tail(path: &Path) -> String {
    let read = || -> std::io::Result<(u64, Vec<u8>)> {
        let mut file = File::open(path)?;
        let start = file.metadata()?.len().saturating_sub(LOG_TAIL_BYTES);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok((start, bytes))
    };
    let Ok((start, bytes)) = read() else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&bytes);
    match (start, text.split_once('\n')) {
        (0, _) | (_, None) => text.into_owned(),
        (_, Some((_, rest))) => rest.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_folder_names_and_errors_name_the_key() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["", "../x", "a/b", ".hidden", "a b"] {
            let err = check(root.path(), bad, "stage: sft\n").err().unwrap();
            assert!(err.to_string().starts_with("name: "), "{bad}: {err}");
        }
        let err = check(root.path(), "run1", "stage: sft\nlearning_rate: fast\n")
            .err()
            .unwrap();
        let text = format!("{err:#}");
        assert!(text.contains("run1.yaml:2: learning_rate"), "{text}");
    }
}
