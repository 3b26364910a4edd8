"""The quickstart's SFT run with Hone and with the guide's PyTorch recipe (transformers Trainer + PEFT),
one after the other on the same machine: wall time per epoch and peak RSS, as ratios.

Same model (SmolLM2-135M-Instruct, f32), data (examples/identity, both files), chat template (the
model's own), masking (labels on assistant turns only), cutoff 256, LoRA r=16 alpha=32 dropout 0.05
on every linear layer, AdamW lr 3e-4, cosine schedule with 10% warmup, batch 8, 3 epochs, 5%
validation split evaluated every 25 steps. Hone runs examples/identity/train_lora.yaml.
Usage:
  cargo build --release -p hone-cli
  /opt/ref/venv/bin/python scripts/bench/sft.py [--epochs 3]
"""
import argparse
import json
import os
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


def torch_worker(epochs, out_dir):
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
        num_train_epochs=epochs, lr_scheduler_type="cosine", warmup_steps=0.1, logging_steps=5,
        eval_strategy="steps", eval_steps=25, save_strategy="no", report_to=[], seed=42,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=split["train"], eval_dataset=split["test"],
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    result = trainer.train()
    model.save_pretrained(out_dir)
    print(json.dumps({"train_runtime": result.metrics["train_runtime"], "train_loss": result.training_loss}),
          file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--worker")
    a = ap.parse_args()
    if a.worker:
        return torch_worker(a.epochs, a.worker)
    with tempfile.TemporaryDirectory() as tmp:
        hone_out = os.path.join(tmp, "hone")
        hone_wall, hone_rss = run_worker([HONE, "train", "examples/identity/train_lora.yaml",
                                          f"num_train_epochs={a.epochs}", f"output_dir={hone_out}"])
        hone_res = json.load(open(os.path.join(hone_out, "train_results.json")))
        torch_wall, torch_rss = run_worker([sys.executable, os.path.abspath(__file__), "--epochs", str(a.epochs),
                                            "--worker", os.path.join(tmp, "torch")])
    per_epoch_h, per_epoch_t = hone_wall / a.epochs, torch_wall / a.epochs
    print(f"hone:  {hone_wall:.1f} s wall ({per_epoch_h:.1f} s/epoch), train_loss {hone_res['train_loss']:.4f}, "
          f"peak RSS {hone_rss:.0f} MB")
    print(f"torch: {torch_wall:.1f} s wall ({per_epoch_t:.1f} s/epoch), peak RSS {torch_rss:.0f} MB")
    print(f"time ratio torch/hone {torch_wall / hone_wall:.2f}x, RSS ratio hone/torch {hone_rss / torch_rss:.2f}")


if __name__ == "__main__":
    main()
