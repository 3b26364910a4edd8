"""The quickstart's SFT run with Hone and with the guide's PyTorch recipe (transformers Trainer + PEFT),
one after the other on the same machine: wall time per epoch and peak RSS, as ratios.

Same model (SmolLM2-135M-Instruct), data (examples/identity, both files), chat template (the
model's own), masking (labels on assistant turns only), cutoff 256, LoRA r=16 alpha=32 dropout 0.05
on every linear layer, AdamW lr 3e-4, cosine schedule with 10% warmup, batch 8, 3 epochs, 5%
validation split evaluated every 25 steps. Hone runs examples/identity/train_lora.yaml.
Precisions: f32 (both sides' default) and bf16 (Hone `bf16=true`; Trainer `bf16=True`, which on a
CPU is torch.autocast's bf16 mixed precision over f32 weights). For each repeat and precision a Hone
run goes, then a PyTorch one (interleaved); best and median wall time of each, ratio of the medians,
peak RSS (max over repeats). Every run logs its loss at every step; --curves FILE writes the first
repeat's per-step losses as JSON {"hone-f32": [...], "hone-bf16": ..., "torch-f32": ..., "torch-bf16": ...}
and prints the max and mean |difference| of torch-bf16 vs torch-f32 (PyTorch's own bf16 spread) and
hone-bf16 vs hone-f32 (dropout masks are the same within a side, not across sides).
Usage:
  cargo build --release -p hone-cli
  /opt/ref/venv/bin/python scripts/bench/sft.py [--epochs 3] [--precisions f32,bf16] [--repeats 1]
      [--curves losses.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HONE = os.path.join(ROOT, "target", "release", "hone")
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
DATA = os.path.join(ROOT, "examples", "identity")


def run_worker(cmd):
    """Run one process; return its wall time and peak RSS in MB."""
    env = dict(os.environ, OMP_NUM_THREADS="2", RAYON_NUM_THREADS="2", TQDM_DISABLE="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
    return time.perf_counter() - t0, usage.ru_maxrss / 1024


def conversations():
    """The identity rows as chat messages (alpaca and sharegpt files)."""
    out = []
    for row in json.load(open(os.path.join(DATA, "identity.json"), encoding="utf-8")):
        prompt = row["instruction"] + ("\n" + row["input"] if row.get("input") else "")
        out.append([{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}])
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    for line in open(os.path.join(DATA, "identity_multiturn.jsonl"), encoding="utf-8"):
        row = json.loads(line)
        msgs = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        msgs += [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]]
        out.append(msgs)
    return out


def encode(tok, messages, cutoff):
    """ids and labels: assistant turns labelled, found by rendering each prefix."""
    def render(msgs, **kw):
        out = tok.apply_chat_template(msgs, tokenize=True, **kw)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    ids = render(messages)
    labels = [-100] * len(ids)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start, end = len(render(messages[:i], add_generation_prompt=True)), len(render(messages[: i + 1]))
            labels[start:end] = ids[start:end]
    return {"input_ids": ids[:cutoff], "labels": labels[:cutoff]}


def torch_worker(epochs, out_dir, bf16):
    import torch
    import transformers
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, LlamaForCausalLM,
                              Trainer, TrainingArguments)

    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    d, f = os.path.split(MODEL)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    # Trainer refuses a model loaded from GGUF (it counts as quantized): rebuild a plain f32
    # LlamaForCausalLM from its config and dequantized state dict (identical logits).
    gguf_model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    del gguf_model
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    rows = [encode(tok, m, 256) for m in conversations()]
    split = Dataset.from_list(rows).train_test_split(test_size=0.05, seed=42)
    args = TrainingArguments(
        output_dir=out_dir, per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=3e-4,
        num_train_epochs=epochs, lr_scheduler_type="cosine", warmup_steps=0.1, logging_steps=1,
        eval_strategy="steps", eval_steps=25, save_strategy="no", report_to=[], seed=42,
        dataloader_num_workers=0, disable_tqdm=True, bf16=bf16, use_cpu=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=split["train"], eval_dataset=split["test"],
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    result = trainer.train()
    model.save_pretrained(out_dir)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    json.dump({"train_loss": result.training_loss, "losses": losses}, open(os.path.join(out_dir, "losses.json"), "w"))


def hone_run(epochs, precision, out):
    """One Hone run: wall seconds, peak RSS MB, train_loss and per-step losses."""
    wall, rss = run_worker([HONE, "train", "examples/identity/train_lora.yaml", f"num_train_epochs={epochs}",
                            f"output_dir={out}", "logging_steps=1", f"bf16={str(precision == 'bf16').lower()}"])
    log = [json.loads(line) for line in open(os.path.join(out, "trainer_log.jsonl"), encoding="utf-8")]
    losses = [e["loss"] for e in log if "loss" in e]
    return wall, rss, json.load(open(os.path.join(out, "train_results.json")))["train_loss"], losses


def torch_run(epochs, precision, out):
    """One transformers Trainer run (a worker process): as hone_run."""
    cmd = [sys.executable, os.path.abspath(__file__), "--epochs", str(epochs), "--worker", out]
    wall, rss = run_worker(cmd + (["--bf16"] if precision == "bf16" else []))
    res = json.load(open(os.path.join(out, "losses.json")))
    return wall, rss, res["train_loss"], res["losses"]


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--precisions", default="f32")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--curves")
    ap.add_argument("--worker")
    ap.add_argument("--bf16", action="store_true")
    a = ap.parse_args()
    if a.worker:
        return torch_worker(a.epochs, a.worker, a.bf16)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; load average before: {os.getloadavg()[0]:.2f}")
    precisions = a.precisions.split(",")
    runs = {}  # (side, precision) -> list of (wall, rss, train_loss, losses)
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(a.repeats):
            for precision in precisions:
                for side, run in (("hone", hone_run), ("torch", torch_run)):
                    out = os.path.join(tmp, f"{side}-{precision}-{rep}")
                    r = run(a.epochs, precision, out)
                    runs.setdefault((side, precision), []).append(r)
                    print(f"  {side}-{precision} repeat {rep + 1}: {r[0]:.1f} s, train_loss {r[2]:.4f}, "
                          f"peak RSS {r[1]:.0f} MB", flush=True)
    print(f"{'precision':<10}{'hone s best/median':>20}{'torch s best/median':>21}{'torch/hone':>11}"
          f"{'hone RSS MB':>13}{'torch RSS MB':>14}{'RSS hone/torch':>16}")
    for precision in precisions:
        h, t = runs[("hone", precision)], runs[("torch", precision)]
        hw, tw = [r[0] for r in h], [r[0] for r in t]
        hr, tr = max(r[1] for r in h), max(r[1] for r in t)
        print(f"{precision:<10}{min(hw):>10.1f}/{statistics.median(hw):<9.1f}{min(tw):>11.1f}/"
              f"{statistics.median(tw):<9.1f}{statistics.median(tw) / statistics.median(hw):>10.2f}x"
              f"{hr:>13.0f}{tr:>14.0f}{hr / tr:>16.2f}")
    if a.curves:
        curves = {f"{side}-{p}": runs[(side, p)][0][3] for side in ("hone", "torch") for p in precisions}
        json.dump(curves, open(a.curves, "w"))
        for x, y in (("torch-bf16", "torch-f32"), ("hone-bf16", "hone-f32"), ("hone-f32", "torch-f32")):
            if x in curves and y in curves:
                d = [abs(p - q) for p, q in zip(curves[x], curves[y])]
                print(f"|{x} - {y}| over {len(d)} steps: max {max(d):.4f}, mean {statistics.mean(d):.4f}")


if __name__ == "__main__":
    main()
