#!/usr/bin/env bash
# Quickstart: fetch the default model (SmolLM2-135M-Instruct), describe it, and ask it questions.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
cargo build --release --quiet -p hone-cli
hone=target/release/hone
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
$hone info "$model"
for q in "What is the capital of France?" "Who are you?" "用一句话介绍你自己。"; do
  echo
  echo "### $q"
  $hone generate --model "$model" --chat --prompt "$q" --max-new-tokens 64 --verbose
done
