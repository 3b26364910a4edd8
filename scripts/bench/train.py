"""Hone vs PyTorch + PEFT training steps on the default model (f32, 2 threads), in one run, as ratios.

Each configuration trains on the same random 4x256 batch (labels = ids) with AdamW (lr 1e-4) and
gradient clipping at 1.0, one untimed warm-up step, then STEPS timed steps (median reported):
  lora_qv   LoRA r=8, alpha=32, dropout 0.1 on q_proj, v_proj
  lora_all  LoRA r=16, alpha=32, dropout 0.1 on every linear layer (PEFT "all-linear")
  full      full fine-tuning
Peak RSS is each worker process's ru_maxrss. Usage:
  cargo build --release --example bench_train
  /opt/ref/venv/bin/python scripts/bench/train.py [--configs lora_qv,lora_all,full] [--steps 3]
"""
import argparse
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


def torch_worker(kind, model, ids_path, steps):
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--configs", default="lora_qv,lora_all,full")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--worker", nargs="+")
    a = ap.parse_args()
    if a.worker:
        kind, ids_path = a.worker
        return torch_worker(kind, a.model, ids_path, a.steps)

    rng = random.Random(0)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([[rng.randrange(49152) for _ in range(256)] for _ in range(4)], f)
        ids_path = f.name
    me = [sys.executable, os.path.abspath(__file__), "--model", a.model, "--steps", str(a.steps), "--worker"]
    rows = []
    for kind in a.configs.split(","):
        h = run_worker([HONE, kind, a.model, ids_path, str(a.steps)])
        t = run_worker(me + [kind, ids_path])
        print(f"{kind}: first-step loss hone {h['losses'][0]:.5f} torch {t['losses'][0]:.5f}; "
              f"trainable hone {h['trainable']:,} torch {t['trainable']:,}", flush=True)
        rows.append((kind, h, t))
    print(f"{'config':<10}{'hone tok/s':>12}{'torch tok/s':>13}{'ratio':>8}{'hone RSS MB':>13}{'torch RSS MB':>14}{'RSS ratio':>11}")
    for kind, h, t in rows:
        print(f"{kind:<10}{h['tokens_per_s']:>12.1f}{t['tokens_per_s']:>13.1f}{h['tokens_per_s'] / t['tokens_per_s']:>8.2f}"
              f"{h['peak_rss_mb']:>13.0f}{t['peak_rss_mb']:>14.0f}{h['peak_rss_mb'] / t['peak_rss_mb']:>11.2f}")
    os.unlink(ids_path)


if __name__ == "__main__":
    main()
