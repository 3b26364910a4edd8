//! `hone merge`: fold a PEFT LoRA adapter into its base model and write the result as a Hugging
//! Face checkpoint directory, with the base model's tokenizer and chat template.

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::Device;
use hone::export::{
    check_output_dir, tensors_in_hf_order, write_hf_checkpoint, HfWriteOptions, SaveDtype,
};

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
    /// Weight dtype: f32, bf16 or f16 [default: the base model's; f32 for a quantized GGUF].
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
    eprintln!(
        "loading {} and merging {}",
        args.model,
        args.adapter.display()
    );
    let loaded = hone::model::load_weights(&args.model, Some(&args.adapter), &Device::Cpu)?;
    let dtype = args
        .dtype
        .unwrap_or_else(|| SaveDtype::of_source(&loaded.config));
    eprintln!("writing {out} ({})", dtype.hf_name());
    let tensors = tensors_in_hf_order(&loaded.config, loaded.weights)?;
    let opts = HfWriteOptions {
        overwrite: args.force,
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
