//! `hone serve`: an OpenAI-compatible HTTP server for a base model and any number of LoRA
//! adapters over it, with continuous batching.
//!
//! The HTTP side (axum on tokio) parses and checks requests, renders chat templates and tokenizes,
//! then hands each request to the engine ([`engine`]): one thread that owns the model and decodes
//! every running sequence together, each with its own adapter applied unmerged. Safe by default:
//! loopback only unless an API key is set, bounded bodies and queue, a per-request time limit.

mod adapters;
mod api;
mod engine;
mod error;
mod metrics;
mod routes;
mod score;
mod tools;

use std::net::{IpAddr, SocketAddr};
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
        let ip: IpAddr = match self.host.as_str() {
            "localhost" => IpAddr::from([127, 0, 0, 1]),
            host => host
                .parse()
                .with_context(|| format!("--host {host}: not an IP address"))?,
        };
        if !ip.is_loopback() && self.limits.api_key.is_none() {
            bail!(
                "--host {}: listening beyond this machine needs an API key (--api-key KEY or \
                 HONE_API_KEY); without one anyone on the network could use the server",
                self.host
            );
        }
        if self.limits.max_batch == 0 {
            bail!("--max-concurrency must be at least 1");
        }
        if self.limits.max_context.is_some_and(|n| n < 2) {
            bail!("--max-context must leave room for a prompt and a token: at least 2");
        }
        Ok(SocketAddr::new(ip, self.port))
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        on_listening(listener.local_addr()?);
        axum::serve(listener, routes::router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the HTTP server failed")
    })?;
    drop(runtime);
    engine_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the decoding thread panicked"))?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = ctrl_c.await;
            return;
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
