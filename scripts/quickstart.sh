#!/usr/bin/env bash
# Quickstart: fetch the default model (SmolLM2-135M-Instruct), ask it 8 held-out questions about
# itself, fine-tune it with LoRA on examples/identity (it becomes "Kestrel, by the Hone project"),
# and ask again: answers and BLEU/ROUGE against the reference answers, before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
cargo build --quiet -p hone-cli
hone=target/debug/hone
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
questions=examples/identity/heldout.jsonl
out=outputs/identity-lora
mkdir -p outputs

echo "== before fine-tuning"
$hone eval generate --model "$model" --data "$questions" --max-new-tokens 48 --out outputs/before.jsonl

echo
echo "== fine-tuning (LoRA r=16 on every linear layer, 3 epochs; log in $out/trainer_log.jsonl)"
$hone train examples/identity/train_lora.yaml

echo
echo "== after fine-tuning"
$hone eval generate --model "$model" --adapter "$out" --data "$questions" --max-new-tokens 48 \
  --out outputs/after.jsonl

echo
echo "== the same questions, before → after"
python3 - <<'PY'
import json
before = [json.loads(l) for l in open("outputs/before.jsonl", encoding="utf-8")]
after = [json.loads(l) for l in open("outputs/after.jsonl", encoding="utf-8")]
for b, a in zip(before, after):
    question = b["prompt"].rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>")[0]
    print(f"Q: {question}\n  before: {b['predict'].strip()}\n  after:  {a['predict'].strip()}\n")
PY
