//! `hone serve`: an OpenAI-compatible HTTP server for a base model and any number of LoRA
//! adapters over it, with continuous batching.
//!
//! The HTTP side (axum on tokio) parses and checks requests, renders chat templates and tokenizes,
//! then hands each request to the engine ([`engine`]): one thread that owns the model and decodes
//! every running sequence together, each with its own adapter applied unmerged. Safe by default:
//! loopback only unless an API key is set, bounded bodies and queue, a per-request time limit.

mod adapters;
mod api;
pub mod board;
mod engine;
mod error;
mod listen;
mod metrics;
mod routes;
mod score;
mod tools;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

pub use adapters::{load_named as load_adapters, ServedAdapter};
pub use routes::Limits;

use crate::chat::ChatTemplate;
use crate::model::value_head::ValueHead;
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

/// `system_fingerprint` in every answer: the build that produced it.
const FINGERPRINT: &str = concat!("hone-", env!("CARGO_PKG_VERSION"));

/// Where and how to listen.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    /// The base model's name in `model` fields and `/v1/models`.
    pub served_name: String,
    pub limits: Limits,
}

impl ServeOptions {
    /// Refuses a non-loopback address without an API key: anyone on the network could use it.
    pub fn check(&self) -> Result<SocketAddr> {
        let addr = listen::bind_address(
            &self.host,
            self.port,
            self.limits.api_key.is_some(),
            "an API key (--api-key KEY or HONE_API_KEY); without one anyone on the network could \
             use the server",
        )?;
        if self.limits.max_batch == 0 {
            bail!("--max-concurrency must be at least 1");
        }
        if self.limits.max_context.is_some_and(|n| n < 2) {
            bail!("--max-context must leave room for a prompt and a token: at least 2");
        }
        Ok(addr)
    }
}

/// A served model seen from other routes (`hone board`'s arena).
#[derive(Clone)]
pub struct ServerHandle(Arc<routes::AppState>);

impl ServerHandle {
    /// The base model's name in requests.
    pub fn base_name(&self) -> &str {
        &self.0.base_name
    }

    /// Whether the model has a chat template (chat completions are refused without one).
    pub fn chat_template_error(&self) -> Option<&str> {
        self.0.template.as_ref().err().map(String::as_str)
    }

    /// Serves the adapter in `dir` as `name` from now on, unless that name is served already
    /// (then nothing changes); loading checks the whole adapter against the model first.
    pub fn ensure_adapter(&self, name: &str, dir: &std::path::Path) -> Result<()> {
        if self.0.adapters.get(name).is_some() {
            return Ok(());
        }
        let adapter = adapters::load(&self.0.model, name, dir)?;
        // Another request may have loaded it meanwhile: either copy serves.
        self.0.adapters.insert(adapter);
        Ok(())
    }
}

/// The model and what goes with it.
pub struct Served {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    /// The chat template, or why there is none.
    pub template: Result<ChatTemplate, String>,
    pub adapters: Vec<ServedAdapter>,
    /// The base model's value head when it is a reward model (`value_head.safetensors` beside it).
    pub value_head: Option<ValueHead>,
}

/// The most memory the key/value caches can take: every slot's sequence at the full context.
pub fn kv_cache_bound_bytes(model: &Llama, limits: &Limits) -> usize {
    let cfg = model.config();
    let per_token = cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 4;
    limits.max_batch * limits.context(cfg.max_position_embeddings) * per_token
}

/// Serves until Ctrl-C (or SIGTERM); `on_listening` is told the bound address first.
pub fn serve(
    options: ServeOptions,
    served: Served,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<()> {
    let addr = options.check()?;
    let server = Server::start(&options, served)?;
    listen::run_http(addr, server.router(), on_listening)?;
    server.join()
}

/// A model being served: the state its routes share, and the decoding thread behind them.
/// `hone serve` listens with its routes alone; `hone board` adds them to its own.
pub struct Server {
    state: Arc<routes::AppState>,
    engine_thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Registers the adapters and starts the decoding thread.
    pub fn start(options: &ServeOptions, served: Served) -> Result<Server> {
        let model = Arc::new(served.model);
        let tokenizer = Arc::new(served.tokenizer);
        let metrics = Arc::new(metrics::Metrics::default());
        let (jobs, receiver) = tokio::sync::mpsc::unbounded_channel();
        let engine = engine::Engine {
            model: model.clone(),
            tokenizer: tokenizer.clone(),
            metrics: metrics.clone(),
            max_batch: options.limits.max_batch,
            jobs: receiver,
        };
        let registry = adapters::Registry::default();
        for adapter in served.adapters {
            let name = adapter.name.clone();
            if name == options.served_name || !registry.insert(adapter) {
                bail!("--adapter {name}: the name is already taken");
            }
        }
        let state = Arc::new(routes::AppState {
            base_name: options.served_name.clone(),
            model,
            tokenizer,
            template: served.template,
            adapters: registry,
            value_head: served.value_head,
            metrics,
            jobs,
            limits: options.limits.clone(),
            created: unix_now(),
        });
        let engine_thread = std::thread::Builder::new()
            .name("hone-engine".into())
            .spawn(move || crate::kernels::pool::run_in_pool(|| engine.run()))
            .context("cannot start the decoding thread")?;
        Ok(Server {
            state,
            engine_thread,
        })
    }

    /// OpenAI's routes (`/v1/…`, `/health`, `/metrics`) over this server's state.
    pub fn router(&self) -> axum::Router {
        routes::router(self.state.clone())
    }

    /// What other routes need of this server: its base name and its adapters.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle(self.state.clone())
    }

    /// Waits for the decoding thread, which ends once every route holding the state is gone.
    pub fn join(self) -> Result<()> {
        let Server {
            state,
            engine_thread,
        } = self;
        drop(state);
        engine_thread
            .join()
            .map_err(|_| anyhow::anyhow!("the decoding thread panicked"))
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
