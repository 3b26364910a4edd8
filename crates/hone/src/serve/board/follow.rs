//! Following a run's `trainer_log.jsonl` as it grows. Each read starts at the byte where the last
//! one stopped and takes only whole lines, so a long run's log is read once however long it is
//! watched (LLaMA-Board re-reads the whole file every 2 s); a file that shrinks or is replaced
//! (the run started over) is read again from its start.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::alerts::{Alert, AlertWatch};

/// One log line: its SSE id, its step, and the JSON the page gets.
pub struct LogPoint {
    /// The step, or `step.k` for the k-th further line at the same step (an evaluation logged
    /// after the training line), so a replay from any id loses nothing.
    pub id: String,
    pub step: u64,
    /// `{"record": {...}, "alerts": [...]}`, serialized once.
    pub data: String,
    pub record: Value,
    pub alerts: Vec<Alert>,
}

pub struct LogFollower {
    path: PathBuf,
    offset: u64,
    /// The file this offset belongs to; another one in its place is read from the start.
    identity: Option<FileIdentity>,
    /// Bytes after the last newline: a line still being written.
    partial: Vec<u8>,
    points: Vec<LogPoint>,
    watch: AlertWatch,
    line_number: usize,
    /// Bumped whenever the points are thrown away and read again.
    pub generation: u64,
}

impl LogFollower {
    pub fn new(path: PathBuf) -> LogFollower {
        LogFollower {
            path,
            offset: 0,
            identity: None,
            partial: Vec::new(),
            points: Vec::new(),
            watch: AlertWatch::default(),
            line_number: 0,
            generation: 0,
        }
    }

    pub fn points(&self) -> &[LogPoint] {
        &self.points
    }

    /// Reads what was appended since the last call. A missing file is an empty log.
    pub fn refresh(&mut self) -> Result<()> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| format!("{}: cannot open", self.path.display()))
            }
        };
        let meta = file.metadata()?;
        let identity = FileIdentity::of(&meta);
        if meta.len() < self.offset || self.identity.is_some_and(|known| known != identity) {
            self.restart();
        }
        self.identity = Some(identity);
        if meta.len() == self.offset {
            return Ok(());
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let mut fresh = Vec::new();
        file.take(meta.len() - self.offset)
            .read_to_end(&mut fresh)
            .with_context(|| format!("{}: cannot read", self.path.display()))?;
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let whole: Vec<u8> = self.partial.drain(..=end).collect();
        for line in whole.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            self.line_number += 1;
            self.push_line(&String::from_utf8_lossy(line));
        }
        Ok(())
    }

    fn restart(&mut self) {
        *self = LogFollower {
            generation: self.generation + 1,
            ..LogFollower::new(std::mem::take(&mut self.path))
        };
    }

    fn push_line(&mut self, line: &str) {
        let record = parse_line(line);
        let step = record
            .as_ref()
            .and_then(|r| r.get("current_steps"))
            .and_then(Value::as_u64);
        let (record, step, alerts) = match (record, step) {
            (Some(record), Some(step)) => {
                let alerts = self.watch.observe(step, &record);
                (record, step, alerts)
            }
            _ => {
                let step = self.points.last().map_or(0, |p| p.step);
                let alert = Alert {
                    kind: "unreadable",
                    step,
                    message: format!(
                        "{} line {}: not a log record with current_steps",
                        self.path.display(),
                        self.line_number
                    ),
                };
                (Value::Null, step, vec![alert])
            }
        };
        let repeats = self
            .points
            .iter()
            .rev()
            .take_while(|p| p.step == step)
            .count();
        let id = match repeats {
            0 => step.to_string(),
            k => format!("{step}.{k}"),
        };
        let data = json!({"step": step, "record": record, "alerts": alerts}).to_string();
        self.points.push(LogPoint {
            id,
            step,
            data,
            record,
            alerts,
        });
    }

    /// The index of the first point after SSE id `last` (all of them when `last` is not an id
    /// of this log: a client from before a restart, or none).
    pub fn after(&self, last: Option<&str>) -> usize {
        let Some(last) = last.and_then(EventId::parse) else {
            return 0;
        };
        self.points
            .iter()
            .position(|p| EventId::parse(&p.id).is_some_and(|id| id > last))
            .unwrap_or(self.points.len())
    }
}

/// `step` or `step.k`, ordered as the log is.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EventId(u64, u64);

impl EventId {
    fn parse(text: &str) -> Option<EventId> {
        let (step, k) = text.split_once('.').unwrap_or((text, "0"));
        Some(EventId(step.parse().ok()?, k.parse().ok()?))
    }
}

/// Which file a path names now (its inode on Unix; its creation time elsewhere).
#[derive(Clone, Copy, PartialEq, Eq)]
struct FileIdentity(u64);

impl FileIdentity {
    fn of(meta: &std::fs::Metadata) -> FileIdentity {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileIdentity(meta.ino())
        }
        #[cfg(not(unix))]
        {
            let created = meta.created().ok();
            let nanos = created
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as u64);
            FileIdentity(nanos)
        }
    }
}

/// A log line as JSON. Python's `json.dumps` (LLaMA-Factory) writes a non-finite loss as a bare
/// `NaN` or `Infinity`, which is not JSON: such tokens become the strings "NaN", "Infinity" and
/// "-Infinity", which the alerts and the page read as non-finite numbers.
pub fn parse_line(line: &str) -> Option<Value> {
    serde_json::from_str(line)
        .or_else(|_| serde_json::from_str(&quote_non_finite(line)))
        .ok()
        .filter(Value::is_object)
}

fn quote_non_finite(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 8);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            let token = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|t| rest.starts_with(t));
            if let Some(token) = token {
                out.push('"');
                out.push_str(token);
                out.push('"');
                rest = &rest[token.len()..];
                continue;
            }
        }
        match c {
            '"' if !escaped => in_string = !in_string,
            _ => {}
        }
        escaped = in_string && c == '\\' && !escaped;
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &std::path::Path, text: &str) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    fn ids(follower: &LogFollower) -> Vec<&str> {
        follower.points().iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn only_whole_new_lines_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trainer_log.jsonl");
        let mut follower = LogFollower::new(path.clone());
        follower.refresh().unwrap();
        assert!(follower.points().is_empty());
        append(
            &path,
            "{\"current_steps\": 1, \"loss\": 2.5}\n{\"current_st",
        );
        follower.refresh().unwrap();
        assert_eq!(ids(&follower), ["1"]);
        append(
            &path,
            "eps\": 2, \"loss\": 2.4}\n{\"current_steps\": 2, \"eval_loss\": 2.6}\n",
        );
        follower.refresh().unwrap();
        assert_eq!(ids(&follower), ["1", "2", "2.1"]);
        assert_eq!(follower.points()[1].record["loss"], 2.4);
        assert_eq!(follower.after(Some("2")), 2);
        assert_eq!(follower.after(Some("2.1")), 3);
        assert_eq!(follower.after(None), 0);
        assert_eq!(follower.generation, 0);
    }

    #[test]
    fn a_shorter_file_is_read_again_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trainer_log.jsonl");
        append(&path, "{\"current_steps\": 1}\n{\"current_steps\": 2}\n");
        let mut follower = LogFollower::new(path.clone());
        follower.refresh().unwrap();
        std::fs::write(&path, "{\"current_steps\": 1, \"loss\": 9}\n").unwrap();
        follower.refresh().unwrap();
        assert_eq!(ids(&follower), ["1"]);
        assert_eq!(follower.points()[0].record["loss"], 9);
        assert_eq!(follower.generation, 1);
    }

    #[test]
    fn python_non_finite_numbers_become_strings_and_alerts() {
        let record = parse_line(
            r#"{"current_steps": 5, "loss": NaN, "note": "NaN in text", "lr": -Infinity}"#,
        )
        .unwrap();
        assert_eq!(record["loss"], "NaN");
        assert_eq!(record["note"], "NaN in text");
        assert_eq!(record["lr"], "-Infinity");
        assert_eq!(parse_line("not json"), None);
        assert_eq!(parse_line("[1]"), None);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trainer_log.jsonl");
        append(&path, "{\"current_steps\": 5, \"loss\": NaN}\ngarbage\n");
        let mut follower = LogFollower::new(path);
        follower.refresh().unwrap();
        let kinds: Vec<_> = follower
            .points()
            .iter()
            .flat_map(|p| p.alerts.iter().map(|a| a.kind))
            .collect();
        assert_eq!(kinds, ["non_finite", "unreadable"]);
        assert!(follower.points()[1].alerts[0]
            .message
            .ends_with("trainer_log.jsonl line 2: not a log record with current_steps"));
    }
}
