//! `hone serve`: the OpenAI-compatible server (the `hone::serve` library module does the work).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use candle_core::Device;
use hone::model::value_head::ValueHead;
use hone::serve::{Limits, ServeOptions, Served};

use super::{chat_template, PrecisionArgs};

#[derive(clap::Args)]
pub struct Args {
    /// HF model directory, .gguf file, or Hub id (org/name).
    #[arg(long)]
    pub model: String,
    /// A LoRA adapter to serve as model NAME: a PEFT adapter directory, or a `hone train` output
    /// directory (its checkpoint-N directories are served as NAME/checkpoint-N). Repeatable.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    pub adapters: Vec<String>,
    /// The base model's name in requests and /v1/models (default: --model as given).
    #[arg(long)]
    pub served_name: Option<String>,
    /// Address to listen on; anything but loopback needs --api-key.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on every route but /health.
    #[arg(long, env = "HONE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Sequences decoded together in one batch.
    #[arg(long, default_value_t = 8)]
    pub max_concurrency: usize,
    /// Requests that may wait for a slot; beyond that, 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Seconds a request may take before it is stopped (504).
    #[arg(long, default_value_t = 600.0)]
    pub request_timeout: f64,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Tokens one sequence may hold, prompt and completion (default: the model's context); with
    /// --max-concurrency it bounds the key/value cache's memory.
    #[arg(long)]
    pub max_context: Option<usize>,
    /// Allow loading adapters at run time (POST /v1/adapters) from inside this directory.
    #[arg(long)]
    pub adapter_dir: Option<PathBuf>,
    /// Allow browsers on this origin to call the API (CORS; off by default).
    #[arg(long)]
    pub cors_origin: Option<String>,
    /// Jinja chat template file, for models that have none or to override theirs.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// Decode every sequence to the same tokens alone or in any batch (quantized GGUF weights:
    /// the multi-row kernel takes lone steps too, ~12% slower for a single client; --exact is
    /// always so).
    #[arg(long)]
    pub batch_invariant: bool,
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

pub fn run(args: Args) -> Result<()> {
    if !(args.request_timeout > 0.0 && args.request_timeout.is_finite()) {
        bail!("--request-timeout must be a positive number of seconds");
    }
    let named: Vec<(&str, PathBuf)> = args
        .adapters
        .iter()
        .map(|spec| match spec.split_once('=') {
            Some((name, dir)) if !name.is_empty() && !dir.is_empty() => Ok((name, dir.into())),
            _ => bail!("--adapter {spec}: expected NAME=DIR"),
        })
        .collect::<Result<_>>()?;
    if let Some(dir) = &args.adapter_dir {
        if !dir.is_dir() {
            bail!("--adapter-dir {}: not a directory", dir.display());
        }
    }
    let options = ServeOptions {
        host: args.host.clone(),
        port: args.port,
        served_name: args
            .served_name
            .clone()
            .unwrap_or_else(|| args.model.clone()),
        limits: Limits {
            api_key: args.api_key.clone(),
            cors_origin: args.cors_origin.clone(),
            max_body_bytes: args.max_body_bytes,
            max_batch: args.max_concurrency,
            max_queue: args.max_queue,
            request_timeout: Duration::from_secs_f64(args.request_timeout),
            adapter_root: args.adapter_dir.clone(),
            max_context: args.max_context,
        },
    };
    // Refuse an unsafe address before spending time on loading.
    options.check()?;
    hone::kernels::stored::set_batch_invariant(args.batch_invariant);
    let loaded = hone::model::load(&args.model, args.precision.precision(), &Device::Cpu)?;
    let mut adapters = Vec::new();
    for (name, dir) in named {
        adapters.extend(hone::serve::load_adapters(&loaded.model, name, &dir)?);
    }
    let template = chat_template(&loaded.tokenizer, args.chat_template.as_deref())
        .map_err(|e| format!("{e:#}"));
    if let Err(why) = &template {
        eprintln!("note: chat completions are off: {why}");
    }
    let names: Vec<String> = adapters.iter().map(|a| a.name.clone()).collect();
    let limits = &options.limits;
    eprintln!(
        "hone serve: {} sequences at once, up to {} tokens each: key/value caches at most {:.0} MiB",
        limits.max_batch,
        limits.context(loaded.model.config().max_position_embeddings),
        hone::serve::kv_cache_bound_bytes(&loaded.model, limits) as f64 / (1 << 20) as f64
    );
    // A reward model saved whole (`stage: rm`, full) has its value head beside its weights.
    let value_head = ValueHead::load(
        std::path::Path::new(&args.model),
        loaded.model.config().hidden_size,
    )?;
    let served = Served {
        model: loaded.model,
        tokenizer: loaded.tokenizer,
        template,
        adapters,
        value_head,
    };
    let base = options.served_name.clone();
    hone::serve::serve(options, served, |addr| {
        eprintln!("hone serve: listening on http://{addr}/v1 (model `{base}`)");
        for name in &names {
            eprintln!("hone serve: adapter `{name}`");
        }
    })
}
