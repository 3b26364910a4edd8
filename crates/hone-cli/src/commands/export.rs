//! `hone export`: write a model (with an adapter merged in) or a LoRA adapter alone as GGUF.

use std::path::PathBuf;

use anyhow::{bail, Result};
use hone::export::gguf::{self, GgufQuant};
use hone::train::config::trained_quantization;

use super::merge::load_as_trained;

#[derive(clap::Args)]
pub struct Args {
    /// HF model directory, .gguf file, or Hub id (org/name).
    #[arg(long)]
    pub model: String,
    /// PEFT LoRA adapter directory: merged into the model, or with --adapter-only exported alone.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Tensor types: f32, f16, bf16, q8_0, q4_0 or q4_k_m (llama.cpp's mixes and fallbacks).
    #[arg(long, default_value = "f16")]
    pub quant: String,
    /// Output format (GGUF is the one Hone writes here).
    #[arg(long, default_value = "gguf")]
    pub format: String,
    /// Write only the adapter, as a llama.cpp LoRA adapter GGUF (needs --adapter).
    #[arg(long)]
    pub adapter_only: bool,
    /// Also write an Ollama Modelfile beside the GGUF.
    #[arg(long)]
    pub modelfile: bool,
    /// Replace the output file (and Modelfile) if it exists.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.format != "gguf" {
        bail!(
            "--format {:?} is not supported (hone export writes gguf)",
            args.format
        );
    }
    let report = if args.adapter_only {
        let Some(adapter) = &args.adapter else {
            bail!("--adapter-only needs --adapter DIR");
        };
        if args.modelfile {
            bail!("--modelfile describes a model; it cannot go with --adapter-only");
        }
        gguf::export_lora_adapter(&args.model, adapter, &args.out, args.force)?
    } else {
        let quant: GgufQuant = args.quant.parse()?;
        if args.modelfile {
            hone::io::atomic::refuse_existing(&gguf::modelfile_path(&args.out), args.force)?;
        }
        let trained_on = match &args.adapter {
            Some(dir) => trained_quantization(dir)?.map(|q| (dir, q)),
            None => None,
        };
        let report = match trained_on {
            Some((dir, (training_args, to))) => {
                hone::io::atomic::refuse_existing(&args.out, args.force)?;
                let parts = load_as_trained(&args.model, dir, &training_args, to)?;
                gguf::export_loaded(&parts, &args.out, quant, args.force)?
            }
            None => gguf::export_model(
                &args.model,
                args.adapter.as_deref(),
                &args.out,
                quant,
                args.force,
            )?,
        };
        if args.modelfile {
            let tokenizer = hone::model::inspect(&report.path.display().to_string())?.2;
            let path = gguf::write_modelfile(&report.path, &tokenizer)?;
            println!("wrote {}", path.display());
        }
        report
    };
    println!(
        "wrote {} ({:.1} MiB, {} tensors)",
        report.path.display(),
        report.bytes as f64 / (1024.0 * 1024.0),
        report.tensors.len()
    );
    Ok(())
}
