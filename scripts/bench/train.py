"""Hone vs PyTorch + PEFT training steps on the default model (2 threads), f32 and bf16, in one run, as ratios.

Each configuration trains on the same random 4x256 batch (labels = ids) with AdamW (lr 1e-4) and
gradient clipping at 1.0, one untimed warm-up step, then STEPS timed steps (a worker's median):
  lora_qv   LoRA r=8, alpha=32, dropout 0.1 on q_proj, v_proj
  lora_all  LoRA r=16, alpha=32, dropout 0.1 on every linear layer (PEFT "all-linear")
  full      full fine-tuning
Precisions: f32; bf16 is PyTorch's CPU autocast mixed precision (f32 weights, forward and loss under
torch.autocast("cpu", dtype=torch.bfloat16), backward outside it) and `bench_train ... bf16` for Hone.
For each config and precision a Hone worker runs, then a PyTorch one; the whole sequence runs REPEATS
times. A worker that fails is reported and its cells show "failed"; the run goes on.
Columns, one row per config and precision: tokens/s best and median over the repeats for each side,
ratio of the medians (hone/torch), peak RSS (each worker process's ru_maxrss, max over repeats) and
the first-step loss (first repeat). --curves FILE also writes every worker's per-step losses (first
repeat) as JSON, {config: {"hone-f32": [...], "hone-bf16": ..., "torch-f32": ..., "torch-bf16": ...}},
and prints per config the max |difference| over the steps of torch-bf16 vs torch-f32, hone-bf16 vs
hone-f32 and hone-f32 vs torch-f32. Usage:
  cargo build --release --example bench_train
  /opt/ref/venv/bin/python scripts/bench/train.py [--configs lora_qv,lora_all,full] [--precisions f32,bf16]
      [--steps 3] [--repeats 1] [--curves losses.json]
"""
import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time

from core import run_worker  # scripts/bench/core.py: one worker process, its JSON line and peak RSS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HONE = os.path.join(ROOT, "target", "release", "examples", "bench_train")
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")


def torch_worker(kind, model, ids_path, steps, precision):
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    torch.manual_seed(0)
    transformers.utils.logging.disable_progress_bar()
    d, f = os.path.split(os.path.abspath(model))
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    if kind != "full":
        r, targets = (8, ["q_proj", "v_proj"]) if kind == "lora_qv" else (16, "all-linear")
        m = get_peft_model(m, LoraConfig(r=r, lora_alpha=32, lora_dropout=0.1, target_modules=targets,
                                         task_type="CAUSAL_LM"))
    m.train()
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    ids = torch.tensor(json.load(open(ids_path)))
    losses, times = [], []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext():
            loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step > 0:
            times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    median = statistics.median(times)
    print(json.dumps({"losses": losses, "seconds_per_step": median, "tokens_per_s": ids.numel() / median,
                      "trainable": sum(p.numel() for p in params)}))


def print_machine():
    """The CPU model, its bf16-relevant flags, and torch's version and default thread count."""
    import torch

    info = dict(line.split(":", 1) for line in open("/proc/cpuinfo").read().split("\n\n")[0].splitlines()
                if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = set(info.get("flags", "").split())
    print(f"cpu: {info.get('model name', '?')}; flags: "
          + ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in CPU_FLAGS))
    print(f"torch {torch.__version__}, torch.get_num_threads() {torch.get_num_threads()} (workers use 2)", flush=True)


def try_worker(cmd):
    """run_worker, or None (with the reason printed) when the worker fails."""
    try:
        return run_worker(cmd)
    except SystemExit as e:
        print(e.code, flush=True)
        return None


def brief(r):
    """One worker's tokens/s, first-step loss and trainable parameter count, for the progress lines."""
    if not r:
        return "failed"
    return f"{r['tokens_per_s']:.1f} tok/s, loss0 {r['losses'][0]:.5f}, trainable {r['trainable']:,}"


def summary(results):
    """Best and median tokens/s, max peak RSS and first-step loss of one side's successful repeats."""
    ok = [r for r in results if r]
    if not ok:
        return None
    tps = [r["tokens_per_s"] for r in ok]
    return {"best": max(tps), "median": statistics.median(tps), "rss": max(r["peak_rss_mb"] for r in ok),
            "loss0": ok[0]["losses"][0]}


def print_table(results, configs, precisions):
    print(f"{'config':<10}{'prec':<6}{'hone best':>11}{'hone med':>10}{'torch best':>12}{'torch med':>11}"
          f"{'ratio':>7}{'hone RSS MB':>13}{'torch RSS MB':>14}{'hone loss0':>12}{'torch loss0':>13}")
    for kind in configs:
        for prec in precisions:
            h, t = (summary(results[kind, prec, side]) for side in ("hone", "torch"))
            cells = f"{kind:<10}{prec:<6}"
            cells += f"{h['best']:>11.1f}{h['median']:>10.1f}" if h else f"{'failed':>21}"
            cells += f"{t['best']:>12.1f}{t['median']:>11.1f}" if t else f"{'failed':>23}"
            cells += f"{h['median'] / t['median']:>7.2f}" if h and t else f"{'-':>7}"
            cells += f"{h['rss']:>13.0f}" if h else f"{'-':>13}"
            cells += f"{t['rss']:>14.0f}" if t else f"{'-':>14}"
            cells += f"{h['loss0']:>12.5f}" if h else f"{'-':>12}"
            cells += f"{t['loss0']:>13.5f}" if t else f"{'-':>13}"
            print(cells)


def write_curves(path, results, configs, precisions):
    """Per-step losses of the first repeat as JSON, and the max |difference| of the pairs that matter."""
    curves = {kind: {f"{side}-{prec}": results[kind, prec, side][0]["losses"]
                     for prec in precisions for side in ("hone", "torch") if results[kind, prec, side][0]}
              for kind in configs}
    with open(path, "w") as f:
        json.dump(curves, f, indent=1)
    print(f"loss curves written to {path}; max |difference| over the steps:")
    for kind, c in curves.items():
        diffs = []
        for a, b in (("torch-bf16", "torch-f32"), ("hone-bf16", "hone-f32"), ("hone-f32", "torch-f32")):
            d = f"{max(abs(x - y) for x, y in zip(c[a], c[b])):.5f}" if a in c and b in c else "n/a"
            diffs.append(f"{a} vs {b} {d}")
        print(f"  {kind}: " + "; ".join(diffs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--configs", default="lora_qv,lora_all,full")
    ap.add_argument("--precisions", default="f32,bf16")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--curves")
    ap.add_argument("--worker", nargs="+")
    a = ap.parse_args()
    if a.worker:
        kind, ids_path, precision = a.worker
        return torch_worker(kind, a.model, ids_path, a.steps, precision)

    print_machine()
    configs, precisions = a.configs.split(","), a.precisions.split(",")
    rng = random.Random(0)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([[rng.randrange(49152) for _ in range(256)] for _ in range(4)], f)
        ids_path = f.name
    me = [sys.executable, os.path.abspath(__file__), "--model", a.model, "--steps", str(a.steps), "--worker"]
    results = {(kind, prec, side): [] for kind in configs for prec in precisions for side in ("hone", "torch")}
    for rep in range(a.repeats):
        for kind in configs:
            for prec in precisions:
                h = try_worker([HONE, kind, a.model, ids_path, str(a.steps), prec])
                t = try_worker(me + [kind, ids_path, prec])
                results[kind, prec, "hone"].append(h)
                results[kind, prec, "torch"].append(t)
                print(f"repeat {rep + 1}/{a.repeats} {kind} {prec}: hone {brief(h)}; torch {brief(t)}", flush=True)
    os.unlink(ids_path)
    print_table(results, configs, precisions)
    if a.curves:
        write_curves(a.curves, results, configs, precisions)


if __name__ == "__main__":
    main()
