//! One module per subcommand; shared argument groups live here.

pub mod board;
pub mod chat;
pub mod compare;
pub mod completions;
pub mod data;
pub mod eval;
pub mod export;
pub mod generate;
pub mod info;
pub mod lr_find;
pub mod merge;
pub mod plan;
pub mod serve;
pub mod sweep;
pub mod train;

use std::path::PathBuf;

use candle_core::Device;
use clap::Args as ClapArgs;
use hone::generate::{GenerateConfig, SamplingConfig};
use hone::model::{LoadedModel, Precision};

/// The model to run, and optionally a LoRA adapter to apply to it.
#[derive(ClapArgs, Debug, Clone)]
pub struct ModelArgs {
    /// HF model directory, .gguf file, or Hub id (org/name).
    #[arg(long)]
    pub model: String,
    /// PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors), applied
    /// beside the model's weights (merged into them with --exact).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub precision: PrecisionArgs,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<LoadedModel> {
        hone::model::load_with_adapter(
            &self.model,
            self.adapter.as_deref(),
            self.precision.precision(),
            &Device::Cpu,
        )
    }
}

/// How the weights are held.
#[derive(ClapArgs, Debug, Clone)]
pub struct PrecisionArgs {
    /// Expand every weight to f32 (and merge the adapter), computing exactly what transformers
    /// computes; by default weights stay in their stored type (quantized, f16, bf16), as llama.cpp
    /// runs them.
    #[arg(long)]
    pub exact: bool,
}

impl PrecisionArgs {
    pub fn precision(&self) -> Precision {
        if self.exact {
            Precision::Exact
        } else {
            Precision::Stored
        }
    }
}

/// Where dataset names resolve, for commands that read evaluation data.
#[derive(ClapArgs, Debug, Clone)]
pub struct DatasetDirArg {
    /// Directory of dataset_info.json, for data given by dataset name (LLaMA-Factory's
    /// `dataset_dir`); file paths are read as they are.
    #[arg(long, default_value = ".")]
    pub dataset_dir: PathBuf,
}

/// Sampling and stopping options shared by `generate` and `chat`.
#[derive(ClapArgs, Debug, Clone)]
pub struct SamplingArgs {
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Penalise tokens already present (1.0: off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Stop when the output contains this string (repeatable).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Keep generating past end-of-turn tokens, up to --max-new-tokens (for benchmarks).
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    pub fn config(&self) -> anyhow::Result<GenerateConfig> {
        if self.temperature < 0.0 || !self.temperature.is_finite() {
            anyhow::bail!("--temperature must be a finite number ≥ 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            anyhow::bail!("--top-p must be in (0, 1]");
        }
        if self.repetition_penalty <= 0.0 {
            anyhow::bail!("--repetition-penalty must be > 0");
        }
        Ok(GenerateConfig {
            max_new_tokens: self.max_new_tokens,
            sampling: SamplingConfig {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
                ..SamplingConfig::default()
            },
            stop_strings: self.stop.clone(),
            ignore_eos: self.ignore_eos,
        })
    }
}

/// The chat template: the file given with `--chat-template`, else the model's own.
/// The chat template in the file `path`, else the tokenizer's own.
pub fn chat_template(
    tokenizer: &hone::tokenizer::Tokenizer,
    path: Option<&std::path::Path>,
) -> anyhow::Result<hone::chat::ChatTemplate> {
    use anyhow::Context;
    match path {
        Some(p) => {
            let source = std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read", p.display()))?;
            hone::chat::ChatTemplate::new(&source, tokenizer.bos_token(), tokenizer.eos_token())
                .with_context(|| format!("{}", p.display()))
        }
        None => hone::chat::ChatTemplate::for_tokenizer(tokenizer),
    }
}

/// The chat-template options of `generate` and `chat`.
#[derive(clap::Args)]
pub struct TemplateArgs {
    /// Jinja chat template file, for models that have none or to override theirs.
    #[arg(long)]
    pub chat_template: Option<std::path::PathBuf>,
    /// Extra chat-template variables, a JSON object: e.g. '{"enable_thinking": false}' renders
    /// Qwen3's prompt without thinking (transformers' apply_chat_template kwargs).
    #[arg(long, value_name = "JSON")]
    pub chat_template_kwargs: Option<String>,
}

impl TemplateArgs {
    /// The template (the file's, else the tokenizer's) with the kwargs set.
    pub fn load(
        &self,
        tokenizer: &hone::tokenizer::Tokenizer,
    ) -> anyhow::Result<hone::chat::ChatTemplate> {
        let mut template = chat_template(tokenizer, self.chat_template.as_deref())?;
        if let Some(json) = &self.chat_template_kwargs {
            let kwargs: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json)
                .map_err(|e| anyhow::anyhow!("--chat-template-kwargs: not a JSON object: {e}"))?;
            for (name, value) in kwargs {
                template = template.with_kwarg(&name, value);
            }
        }
        Ok(template)
    }
}
