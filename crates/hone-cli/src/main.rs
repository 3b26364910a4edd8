//! `hone`: the command line. A thin layer over the `hone` library: parse arguments, call, print.

use clap::Parser;

#[derive(Parser)]
#[command(name = "hone", version, about = "Fine-tune, evaluate and export Llama-family language models")]
struct Cli {}

fn main() {
    Cli::parse();
}
