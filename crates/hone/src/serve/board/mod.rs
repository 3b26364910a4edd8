//! `hone board`: a local web page to watch, compare and look into fine-tuning runs. It serves one
//! page app (its HTML, script and style embedded in the binary: no CDN, works offline) and a
//! small JSON + server-sent-events API over the run directories under `--runs`, on the same
//! axum stack as `hone serve`.
//!
//! Safe by default: loopback only unless a token is set, requests for other host names refused
//! (a web page cannot reach the board through DNS rebinding), and every path confined to the
//! `--runs` folders.

mod actions;
mod alerts;
mod arena;
mod compare;
mod follow;
mod launch;
mod routes;
mod runs;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};

use super::{Server, ServerHandle};
use crate::train::checkpoint::TRAINER_LOG_NAME;
use follow::LogFollower;
use runs::{RunDir, RunSummary};

/// Where the board looks and listens.
#[derive(Debug, Clone)]
pub struct BoardOptions {
    /// Folders holding run directories (searched a few levels deep).
    pub roots: Vec<PathBuf>,
    pub host: String,
    pub port: u16,
    /// Needed by every request when set (a bearer token, or once in `?token=` which sets a
    /// cookie); required to listen beyond loopback.
    pub token: Option<String>,
}

impl BoardOptions {
    /// The address to bind, after refusing what would be unsafe or cannot work.
    pub fn check(&self) -> Result<SocketAddr> {
        let addr = super::listen::bind_address(
            &self.host,
            self.port,
            self.token.is_some(),
            "a token (--token TOKEN or HONE_BOARD_TOKEN); without one anyone on the network \
             could read the runs",
        )?;
        if self.roots.is_empty() {
            bail!("--runs: give at least one folder of runs");
        }
        for root in &self.roots {
            if !root.is_dir() {
                bail!("--runs {}: not a folder", root.display());
            }
        }
        Ok(addr)
    }
}

/// What the routes share: the folders, and one follower per run log, so that however many pages
/// watch a run its log is read once.
pub(crate) struct Board {
    roots: Vec<PathBuf>,
    token: Option<String>,
    loopback: bool,
    logs: Mutex<HashMap<PathBuf, Arc<Mutex<LogFollower>>>>,
    launches: launch::Launches,
    /// The model the arena asks, when the board was given one.
    server: Option<ServerHandle>,
    /// Ratings are appended one at a time.
    arena_files: Mutex<()>,
}

impl Board {
    fn follower(&self, run: &Path) -> Arc<Mutex<LogFollower>> {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        logs.entry(run.to_path_buf())
            .or_insert_with(|| Arc::new(Mutex::new(LogFollower::new(run.join(TRAINER_LOG_NAME)))))
            .clone()
    }

    /// `run` summarized after reading what its log gained.
    fn summary(&self, run: &RunDir) -> RunSummary {
        let follower = self.follower(&run.path);
        let mut log = follower.lock().unwrap_or_else(|e| e.into_inner());
        // A log that cannot be read now is summarized from what was read before.
        let _ = log.refresh();
        runs::summarize(run, &log)
    }

    /// The id a run started from the board gets: it goes into the first folder.
    fn launched_id(&self, output_dir: &Path) -> String {
        let prefix = (self.roots.len() > 1).then_some("0");
        runs::id_under(&self.roots[0], prefix, output_dir)
    }

    fn runs(&self) -> Vec<RunSummary> {
        runs::discover(&self.roots)
            .iter()
            .map(|run| self.summary(run))
            .collect()
    }
}

/// Serves until Ctrl-C (or SIGTERM); `on_listening` is told the bound address first. With a
/// `server` (a model), its OpenAI routes are served too, for the arena.
pub fn board(
    options: BoardOptions,
    server: Option<Server>,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<()> {
    let addr = options.check()?;
    let board = Arc::new(Board {
        roots: options.roots,
        token: options.token,
        loopback: addr.ip().is_loopback(),
        logs: Mutex::default(),
        launches: launch::Launches::default(),
        server: server.as_ref().map(Server::handle),
        arena_files: Mutex::default(),
    });
    let openai = server.as_ref().map(Server::router);
    super::listen::run_http(addr, routes::router(board, openai), on_listening)?;
    server.map_or(Ok(()), Server::join)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_loopback_needs_a_token_and_folders_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = BoardOptions {
            roots: vec![dir.path().to_path_buf()],
            host: "0.0.0.0".into(),
            port: 0,
            token: None,
        };
        let err = options.check().unwrap_err().to_string();
        assert!(err.contains("needs a token"), "{err}");
        options.token = Some("t".into());
        assert!(options.check().is_ok());
        options.roots.push(dir.path().join("missing"));
        let err = options.check().unwrap_err().to_string();
        assert!(err.ends_with("missing: not a folder"), "{err}");
    }
}
