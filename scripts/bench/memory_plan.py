"""Checks `hone plan` against the peak RSS `hone train` reaches, on the runs issue #11 names:
the quickstart, LoRA r8 q,v in bf16, full fine-tuning, freeze tuning (the default model) and
QLoRA r16 q,v on a Llama-2-7B-shaped Q4_0 GGUF with random weights (cutoff 512, batch 1), the
latter also on full rows (`stage: pt` on c4_demo: every row exactly cutoff_len tokens, with
gradient checkpointing and bf16 products) at cutoff 512 (10 steps), 2048 and 4096 (1 step each:
the peak comes in the first), where tokens/s is printed too (steps/s × cutoff, the first step
included); `qlora_3b_pt512` is the same on the 3B shape (models/random-3b.Q4_0.gguf), 3 steps.

Each run is planned (`hone plan CONFIG ... --json`), then trained for a few steps under
`/usr/bin/time -v` (peak RSS = "Maximum resident set size"); the table prints both and the error.

Run from the repository root after `cargo build --release`:
  python3 scripts/bench/memory_plan.py [--only NAME,...] [--steps N]
The 7B runs need models/random-7b.Q4_0.gguf (and the 3B run models/random-3b.Q4_0.gguf, --shape 3b):
  /opt/ref/venv/bin/python scripts/bench/random_gguf.py --shape 7b --quant q4_0 --out models/random-7b.Q4_0.gguf
"""

import argparse
import json
import pathlib
import platform
import re
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
HONE = ROOT / "target" / "release" / "hone"
QUICKSTART = ROOT / "examples" / "identity" / "train_lora.yaml"
DEMO = (ROOT / ".." / "shared" / "datasets" / "llamafactory-demo").resolve()
ALPACA = [f"dataset_dir={DEMO}", "dataset=alpaca_en_demo", "cutoff_len=256",
          "per_device_train_batch_size=4", "gradient_accumulation_steps=1", "eval_strategy=no", "val_size=0"]

RUNS = {
    "quickstart": [],
    "lora_qv_bf16": ALPACA + ["lora_rank=8", "lora_alpha=32", "lora_target=q_proj,v_proj", "bf16=true"],
    "full": ALPACA + ["finetuning_type=full"],
    "freeze": ALPACA + ["finetuning_type=freeze", "freeze_trainable_layers=2"],
    "qlora_7b": [f"model_name_or_path={ROOT / 'models' / 'random-7b.Q4_0.gguf'}", f"dataset_dir={DEMO}",
                 "dataset=alpaca_en_demo", "cutoff_len=512", "per_device_train_batch_size=1",
                 "gradient_accumulation_steps=1", "eval_strategy=no", "val_size=0", "quantization_bit=4",
                 "lora_rank=16", "lora_alpha=32", "lora_target=q_proj,v_proj"],
}
QLORA_7B_PT = [f"model_name_or_path={ROOT / 'models' / 'random-7b.Q4_0.gguf'}", f"dataset_dir={DEMO}", "stage=pt",
               "dataset=c4_demo", "per_device_train_batch_size=1", "gradient_accumulation_steps=1",
               "eval_strategy=no", "val_size=0", "quantization_bit=4", "lora_rank=16", "lora_alpha=32",
               "lora_target=q_proj,v_proj", "gradient_checkpointing=true", "bf16=true",
               # Seed 0 puts a full block first at each cutoff; with 42, cutoff 2048's first row is
               # the 850-token remainder of c4_demo (Hone keeps it; LLaMA-Factory drops it).
               "seed=0"]
for cutoff in (512, 2048, 4096):
    RUNS[f"qlora_7b_pt{cutoff}"] = QLORA_7B_PT + [f"cutoff_len={cutoff}"]
RUNS["qlora_3b_pt512"] = [f"model_name_or_path={ROOT / 'models' / 'random-3b.Q4_0.gguf'}"] + QLORA_7B_PT[1:] + [
    "cutoff_len=512"]
# Steps per run where not --steps: the 7B runs are slow.
STEPS = {"qlora_7b": 2, "qlora_7b_pt512": 10, "qlora_7b_pt2048": 1, "qlora_7b_pt4096": 1, "qlora_3b_pt512": 3}


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def plan(overrides):
    out = subprocess.run([HONE, "plan", QUICKSTART, *overrides, "--json"], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    return json.loads(out.stdout)


def peak_rss(overrides, out_dir):
    args = ["/usr/bin/time", "-v", HONE, "train", QUICKSTART, *overrides, f"output_dir={out_dir}"]
    run = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0:
        raise SystemExit(f"hone train failed:\n{run.stderr[-3000:]}")
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", run.stderr).group(1))
    return kib * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma list of run names")
    parser.add_argument("--steps", type=int, default=5, help="steps per run (the 7B run takes 2)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(RUNS)
    print(f"CPU: {cpu_model()}")
    print(f"{'run':<16} {'planned MiB':>12} {'measured MiB':>13} {'error':>7} {'tok/s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            steps = STEPS.get(name, args.steps)
            overrides = RUNS[name] + [f"max_steps={steps}", "save_steps=100000"]
            planned = plan(overrides)["peak_memory_bytes"]
            out_dir = pathlib.Path(tmp) / name
            measured = peak_rss(overrides, out_dir)
            err = (planned - measured) / measured
            speed = ""
            cutoff = next((o.split("=")[1] for o in overrides if o.startswith("cutoff_len=")), None)
            if "stage=pt" in overrides and cutoff:
                results = json.loads((out_dir / "train_results.json").read_text())
                speed = f"{results['train_steps_per_second'] * int(cutoff):.1f}"
            print(f"{name:<16} {planned / 2**20:>12.0f} {measured / 2**20:>13.0f} {err:>+7.1%} {speed:>7}",
                  flush=True)


if __name__ == "__main__":
    main()
