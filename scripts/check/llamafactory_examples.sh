#!/usr/bin/env bash
# Manual check (not a test): LLaMA-Factory's own example configs for the stages beyond SFT (its
# examples/train_lora/qwen3_lora_{pretrain,dpo,kto,reward}.yaml) and its tool-calling demo data,
# run on the default model with only the paths changed (plus max_steps, so each is a few dozen
# steps; logging every 5), over LLaMA-Factory's demo datasets in ../shared/datasets. Prints each
# run's loss curve and last logged metrics from its trainer_log.jsonl / trainer_state.json.
#
#   scripts/check/llamafactory_examples.sh [STEPS] [OUT_DIR]     # defaults: 30, outputs/lf-examples
#
# On a 2-core CPU the examples' own cutoff_len 2048 × 8 accumulated rows would take about a minute
# a step, so by default each run also gets `cutoff_len=512 gradient_accumulation_steps=2`
# (EXTRA="..." replaces those; EXTRA="" runs the examples' own sizes).
#
# The tool-calling run uses Qwen2.5's chat template (fixtures/chat/qwen2.5.jinja): SmolLM2's own
# template renders no tools, and Hone refuses to train tool rows through a template that drops
# them. Needs target/release/hone (cargo build --release) and models/ (scripts/fetch-model.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
steps="${1:-30}"
out="${2:-outputs/lf-examples}"
read -r -a extra <<< "${EXTRA-cutoff_len=512 gradient_accumulation_steps=2}"
demo="../shared/datasets/llamafactory-demo"
hone=target/release/hone
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
lscpu | grep -m1 "Model name" || true

run() {
  local name="$1" config="$2"
  shift 2
  echo "== $name: $config $*"
  /usr/bin/time -f "   wall %e s, peak RSS %M KB" "$hone" train "$config" \
    "model_name_or_path=$model" "dataset_dir=$demo" "output_dir=$out/$name" \
    "max_steps=$steps" logging_steps=5 save_steps=1000 "${extra[@]}" "$@" 2> "$out/$name.log" >/dev/null \
    || { tail -5 "$out/$name.log"; return 1; }
  grep -E "^   wall" "$out/$name.log"
  python3 - "$out/$name" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/trainer_log.jsonl")]
print("   loss:", " ".join(f"{r['current_steps']}:{r['loss']:.4f}" for r in rows if "loss" in r))
state = json.load(open(f"{sys.argv[1]}/trainer_state.json"))
last = [e for e in state["log_history"] if "loss" in e][-1]
print("   last log:", {k: round(v, 4) if isinstance(v, float) else v for k, v in last.items()})
PY
}

mkdir -p "$out"
ex="$demo/examples"
run pretrain "$ex/qwen3_lora_pretrain.yaml"
run dpo "$ex/qwen3_lora_dpo.yaml"
run kto "$ex/qwen3_lora_kto.yaml"
run reward "$ex/qwen3_lora_reward.yaml"
run toolcall "$ex/qwen3_lora_sft.yaml" dataset=glaive_toolcall_en_demo template=fixtures/chat/qwen2.5.jinja
