//! `hone merge`: fold a PEFT LoRA adapter into its base model and write the result as a Hugging
//! Face checkpoint directory, with the base model's tokenizer and chat template.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use hone::adapters::merge::check_mergeable;
use hone::adapters::peft::read_config_if_present;
use hone::export::{
    check_output_dir, tensors_in_hf_order, write_hf_checkpoint, HfWriteOptions, SaveDtype,
};
use hone::model::quantize::BaseQuantization;
use hone::model::LoadedWeights;
use hone::train::config::trained_quantization;

#[derive(clap::Args)]
pub struct Args {
    /// Base model: HF model directory, .gguf file, or Hub id (org/name).
    #[arg(long)]
    pub model: String,
    /// PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output directory for the merged checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Weight dtype: f32, bf16 or f16 [default: the base model's; f32 for a quantized GGUF or an
    /// adapter trained on a quantized base].
    #[arg(long)]
    pub dtype: Option<SaveDtype>,
    /// Replace --out if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> Result<()> {
    let out = args.out.display();
    // Fail before the slow load; the writer checks again before it renames into place.
    check_output_dir(&args.out, args.force).with_context(|| format!("{out}"))?;
    if let Some(config) = read_config_if_present(&args.adapter)? {
        check_mergeable(&config).with_context(|| args.adapter.display().to_string())?;
    }
    eprintln!(
        "loading {} and merging {}",
        args.model,
        args.adapter.display()
    );
    let (loaded, dtype) = match trained_quantization(&args.adapter)? {
        Some((path, to)) => load_quantized(&args, &path, to)?,
        None => {
            let loaded = hone::model::load_weights(&args.model, Some(&args.adapter), &Device::Cpu)?;
            let dtype = args
                .dtype
                .unwrap_or_else(|| SaveDtype::of_source(&loaded.config));
            (loaded, dtype)
        }
    };
    eprintln!("writing {out} ({})", dtype.hf_name());
    let tensors = tensors_in_hf_order(&loaded.config, loaded.weights)?;
    let opts = HfWriteOptions {
        overwrite: args.force,
        modeling_code: modeling_code(&args.model, &loaded.config),
        ..Default::default()
    };
    let written = write_hf_checkpoint(
        &args.out,
        &loaded.config,
        tensors,
        &loaded.tokenizer,
        dtype,
        &opts,
    )?;
    eprintln!(
        "wrote {out}: {} ({:.1} MB of weights)",
        written.files.join(", "),
        written.total_size as f64 / 1e6
    );
    Ok(())
}

/// A remote-code family's base directory, whose modeling files the merged checkpoint needs
/// beside it; None for other families, and (with a note) for a base that is not a local
/// directory.
fn modeling_code(model: &str, cfg: &hone::model::ModelConfig) -> Option<PathBuf> {
    if !cfg.architecture.remote_code() {
        return None;
    }
    let dir = Path::new(model);
    if dir.join("config.json").is_file() {
        return Some(dir.to_path_buf());
    }
    eprintln!(
        "note: {} checkpoints load with their own modeling code (trust_remote_code); copy the \
         base repository's *.py files beside the merged weights",
        cfg.architecture.hf_class()
    );
    None
}

/// The base as the adapter's QLoRA run saw it (quantized to `to` at load, or a quantized GGUF),
/// dequantized to f32, with the adapter merged; written in f32, since 16 bits would round the
/// dequantized values a second time.
fn load_quantized(
    args: &Args,
    training_args: &Path,
    to: BaseQuantization,
) -> Result<(LoadedWeights, SaveDtype)> {
    let origin = format!(
        "{} was trained on a quantized base (quantization_bit in {})",
        args.adapter.display(),
        training_args.display()
    );
    if let Some(dtype @ (SaveDtype::BF16 | SaveDtype::F16)) = args.dtype {
        let name = if dtype == SaveDtype::BF16 {
            "bf16"
        } else {
            "f16"
        };
        bail!(
            "--dtype {name}: {origin}; merged into that base the weights are dequantized values \
             plus the update, which {name} would round a second time: merge with --dtype f32, or \
             export a GGUF (hone export) to quantize the merged model once"
        );
    }
    let loaded = load_as_trained(&args.model, &args.adapter, training_args, to)?;
    Ok((loaded, SaveDtype::F32))
}

/// The base as the adapter's QLoRA run saw it, dequantized to f32, with the adapter merged, and a
/// note saying so.
pub fn load_as_trained(
    model: &str,
    adapter: &Path,
    training_args: &Path,
    to: BaseQuantization,
) -> Result<LoadedWeights> {
    let (loaded, rounded) = hone::model::load_weights_quantized(model, adapter, to, &Device::Cpu)?;
    let base = if rounded {
        format!("the base quantized to {} as in training", to.describe())
    } else {
        "the quantized base".to_owned()
    };
    eprintln!(
        "note: {} was trained on a quantized base (quantization_bit in {}): merging into {base}, \
         dequantized to f32 — the weights it was trained against. Merging into the original \
         unquantized weights, as is often expected, gives slightly different weights.",
        adapter.display(),
        training_args.display()
    );
    Ok(loaded)
}
