"""Manual check (not a test): PEFT loads the adapters `hone train` writes, for each PEFT method
Hone trains, and counts the same trainable parameters. Prompt tuning, P-tuning, prefix tuning and
LLaMA-Adapter, which no one merges, are compared by the mean NLL of a text with the virtual tokens before it (PEFT's forward
vs `hone eval perplexity --adapter --exact`), and `prompt_tuning_init: text` starts where PEFT's does.

For each method (LoRA, DoRA, IA3, PiSSA saved converted, VeRA, LoHa, LoKr, OFT, AdaLoRA) on a base model (the tiny complete GGUF fixtures/tokenizer/tiny-spm.gguf,
and the real default model SmolLM2-135M-Instruct Q4_1 when present), `hone train` runs a few steps on
a small dataset with `lora_target: all`, then:
  - Hone's trainable-parameter line is compared with PEFT's `get_nb_trainable_parameters()` for
    the adapter config Hone wrote (a PiSSA adapter is saved converted, of rank 2r: twice what
    trained);
  - `PeftModel.from_pretrained(base, adapter)` applies Hone's file (unmerged), and its logits are
    compared with those of the checkpoint `hone merge` writes (loaded by transformers) and with
    PEFT's own `merge_and_unload(safe_merge=True)`, all in float64.

Prints one line per case and fails (exit 1) when a logit difference is above 1e-4 or the counts
differ. Run from the repository root after building hone:

    cargo build -p hone-cli
    OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/check/peft_roundtrip.py \\
        [--hone target/debug/hone] [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf]

`ONLY=oft,lokr` in the environment runs those methods alone.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from peft import PeftConfig, PeftModel, PromptTuningConfig, get_peft_model
from transformers import AutoTokenizer

from transformers import AutoModelForCausalLM

from merge_transformers import FIXTURES, TOL, check_args, hone_merge, logits


def load(path, dtype=torch.float64, **kwargs):
    """In float64, so the differences are Hone's and PEFT's, not float32 rounding over 30 layers."""
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation="eager", **kwargs
    ).eval()

# Method -> the train-config keys that select it.
METHODS = {
    "lora": {},
    "dora": {"use_dora": "true"},
    "ia3": {"finetuning_type": "ia3", "learning_rate": "5.0e-2"},
    # Saved converted: plain LoRA of rank 2r on the original base.
    "pissa": {"pissa_init": "true", "pissa_convert": "true"},
    # Its shared projections saved once, its vectors per layer.
    "vera": {"finetuning_type": "vera", "lora_rank": 16, "learning_rate": "5.0e-2"},
    "loha": {"finetuning_type": "loha", "lora_rank": 4, "learning_rate": "2.0e-2"},
    "lokr": {"finetuning_type": "lokr", "lora_rank": 4, "learning_rate": "2.0e-2"},
    # LLaMA-Factory's defaults: blocks of 32 on every linear layer.
    "oft": {"finetuning_type": "oft", "learning_rate": "5.0e-3"},
    # Ranks allocated over the 4 steps (tinit 1, total_step 4): the file holds the kept rows.
    "adalora": {
        "finetuning_type": "adalora", "init_r": 4, "target_r": 2, "tinit": 1, "lora_alpha": 8,
        "learning_rate": "5.0e-2",
    },
    # Not mergeable: compared through the perplexity of a text instead.
    "prompt_tuning": {"finetuning_type": "prompt_tuning", "num_virtual_tokens": 6, "learning_rate": "5.0e-2"},
    "p_tuning": {"finetuning_type": "p_tuning", "num_virtual_tokens": 6, "learning_rate": "5.0e-3"},
    "prefix": {"finetuning_type": "prefix", "num_virtual_tokens": 6, "learning_rate": "1.0e-2"},
    "prefix_projection": {
        "finetuning_type": "prefix", "prefix_projection": "true", "num_virtual_tokens": 6, "learning_rate": "1.0e-3",
    },
    "adaption_prompt": {
        "finetuning_type": "adaption_prompt", "adapter_len": 6, "learning_rate": "1.0e-2",
    },
}
if os.environ.get("ONLY"):
    METHODS = {m: METHODS[m] for m in os.environ["ONLY"].split(",")}
# The methods that are not merged: compared by perplexity.
UNMERGED = {"prompt_tuning", "p_tuning", "prefix", "adaption_prompt"}
TEXT = "The capital of France is Paris, and the sky is blue on a clear day."
ROWS = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Name a prime number.", "Seven is a prime number."),
    ("What colour is the sky?", "The sky is blue on a clear day."),
    ("Say hello.", "Hello! How can I help you today?"),
]


def hone_train(hone, model, extra, out, tmp):
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "input": "", "output": a}) + "\n" for q, a in ROWS))
    keys = {
        "model_name_or_path": str(model), "stage": "sft", "finetuning_type": "lora", "lora_rank": 4,
        "lora_target": "all", "dataset": str(data), "cutoff_len": 64, "output_dir": str(out),
        "per_device_train_batch_size": 2, "learning_rate": "2.0e-2", "max_steps": 4, "logging_steps": 1,
        "seed": 3, **extra,
    }
    config = tmp / f"{out.name}.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in keys.items()))
    run = subprocess.run([hone, "train", str(config)], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"hone train failed:\n{run.stderr}")
    counts = re.search(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+)", run.stderr)
    return tuple(int(c.replace(",", "")) for c in counts.groups())


def check_prompt(hone, name, model, load_base, tok, extra, tmp):
    """A prompt-learning adapter: PEFT loads Hone's file (its trainable count built for training,
    P-tuning's encoder included: counted on a new model of its config, as PEFT will not make a loaded one
    trainable), and the mean NLL of TEXT with the virtual tokens before it equals
    `hone eval perplexity --adapter --exact`."""
    out = tmp / f"{name}-adapter"
    hone_counts = hone_train(hone, model, extra, out, tmp)
    # PEFT will not make a loaded prompt-learning adapter trainable: count a new one of its config.
    config = PeftConfig.from_pretrained(out)
    config.inference_mode = False
    peft_counts = get_peft_model(load_base(), config).get_nb_trainable_parameters()
    peft = PeftModel.from_pretrained(load_base(), out).eval()
    ids = tok(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        peft_nll = peft(input_ids=ids, labels=ids).loss.item()
        base_nll = load_base()(input_ids=ids, labels=ids).loss.item()
    text = tmp / "text.jsonl"
    text.write_text(json.dumps({"text": TEXT}) + "\n")
    run = subprocess.run(
        [hone, "eval", "perplexity", "--model", str(model), "--adapter", str(out), "--data", str(text), "--exact"],
        capture_output=True, text=True,
    )
    if run.returncode != 0:
        sys.exit(f"hone eval perplexity failed:\n{run.stderr}")
    found = re.search(r"mean NLL ([\d.]+) over (\d+) predicted tokens", run.stdout + run.stderr)
    hone_nll, predicted = float(found.group(1)), int(found.group(2))
    diff = abs(hone_nll - peft_nll)
    # The last virtual token predicts the first real one, as PEFT's labels have it (not a prefix,
    # which is only keys and values).
    want_predicted = ids.shape[1] - (1 if extra["finetuning_type"] in ("prefix", "adaption_prompt") else 0)
    ok = diff < TOL and predicted == want_predicted and hone_counts == peft_counts
    print(
        f"{name:<22} params Hone {hone_counts[0]:,}/{hone_counts[1]:,} PEFT {peft_counts[0]:,}/{peft_counts[1]:,}"
        f"  mean NLL Hone {hone_nll:.6f} PEFT {peft_nll:.6f} (Δ {diff:.1e}; base {base_nll:.4f})  {'ok' if ok else 'FAIL'}"
    )
    return ok


def check_text_init(hone, model, tokenizer_kwargs, load_base, tmp):
    """`prompt_tuning_init: text`: Hone's starting virtual tokens (one step at a negligible learning
    rate, saved) equal PEFT's for the same text, tokenized as PEFT does (special tokens added,
    repeated to fill the virtual tokens)."""
    text = "You are Kestrel, an assistant."
    extra = {
        "finetuning_type": "prompt_tuning", "num_virtual_tokens": 12, "prompt_tuning_init": "text",
        "prompt_tuning_init_text": json.dumps(text), "learning_rate": "1.0e-12", "max_steps": 1,
    }
    out = tmp / "text-init-adapter"
    hone_train(hone, model, extra, out, tmp)
    from safetensors.torch import load_file

    ours = load_file(out / "adapter_model.safetensors")["prompt_embeddings"].double()
    config = PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=12, prompt_tuning_init="TEXT",
        prompt_tuning_init_text=text, tokenizer_name_or_path=str(model.parent), tokenizer_kwargs=tokenizer_kwargs,
    )
    peft = get_peft_model(load_base(), config)
    theirs = peft.prompt_encoder["default"].embedding.weight.detach().double()
    diff = (ours - theirs).abs().max().item()
    ok = diff < TOL
    print(f"{'text init ' + model.name:<22} max |Hone − PEFT| {diff:.1e}  {'ok' if ok else 'FAIL'}")
    return ok


def check(hone, name, model, load_base, ids, extra, tmp):
    out = tmp / f"{name}-adapter"
    hone_counts = hone_train(hone, model, extra, out, tmp)
    if "pissa_init" in extra:
        # The file PEFT loads is the converted adapter, of rank 2r: twice the parameters trained.
        hone_counts = (2 * hone_counts[0], hone_counts[1] + hone_counts[0])
    peft = PeftModel.from_pretrained(load_base(), out, is_trainable=True).eval()
    peft_counts = peft.get_nb_trainable_parameters()
    if "init_r" in extra:
        # AdaLoRA trains every triplet at init_r; the file keeps the allocated rows only. Counted
        # on a float32 base: on a float64 one PEFT's cast makes its `ranknum` scalars trainable.
        fresh = PeftConfig.from_pretrained(out)
        fresh.rank_pattern, fresh.inference_mode = None, False
        peft_counts = get_peft_model(load_base(dtype=torch.float32), fresh).get_nb_trainable_parameters()
    unmerged = logits(peft, ids)
    merged_dir = tmp / f"{name}-merged"
    hone_merge(hone, model, out, merged_dir)
    ours = logits(load(merged_dir), ids)
    peft_merged = logits(peft.merge_and_unload(safe_merge=True), ids)
    moved = (unmerged - logits(load_base(), ids)).abs().max().item()
    diffs = {
        "Hone merge vs PEFT unmerged": (ours - unmerged).abs().max().item(),
        "vs PEFT merge": (ours - peft_merged).abs().max().item(),
    }
    ok = all(v < TOL for v in diffs.values()) and hone_counts == peft_counts
    line = "  ".join(f"{k} {v:.2e}" for k, v in diffs.items())
    print(
        f"{name:<22} params Hone {hone_counts[0]:,}/{hone_counts[1]:,} PEFT {peft_counts[0]:,}/{peft_counts[1]:,}"
        f"  {line}  (adapter moves logits {moved:.2f})  {'ok' if ok else 'FAIL'}"
    )
    return ok


def main():
    args = check_args(__doc__)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = FIXTURES / "tokenizer" / "tiny-spm.gguf"
        tok = AutoTokenizer.from_pretrained(tiny.parent, gguf_file=tiny.name)
        ids = tok("What is the capital of France? Say hello.", return_tensors="pt").input_ids
        base = lambda **kw: load(tiny.parent, gguf_file=tiny.name, **kw)  # noqa: E731
        for method, extra in METHODS.items():
            if extra.get("finetuning_type") in UNMERGED:
                ok &= check_prompt(args.hone, f"tiny-spm-{method}", tiny, base, tok, extra, tmp)
                continue
            ok &= check(args.hone, f"tiny-spm-{method}", tiny, base, ids, extra, tmp)
        gguf = Path(args.gguf)
        if gguf.exists():
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            ids = tok(["The capital of France is", "def fibonacci(n):"], padding=True, return_tensors="pt").input_ids
            base = lambda **kw: load(gguf.parent, gguf_file=gguf.name, **kw)  # noqa: E731
            if not os.environ.get("ONLY"):
                ok &= check_text_init(args.hone, gguf, {"gguf_file": gguf.name}, base, tmp)
            for method, extra in METHODS.items():
                if extra.get("finetuning_type") in UNMERGED:
                    ok &= check_prompt(args.hone, f"SmolLM2-{method}", gguf, base, tok, extra, tmp)
                    continue
                ok &= check(args.hone, f"SmolLM2-{method}", gguf, base, ids, extra, tmp)
        else:
            print(f"{gguf} is absent: real-model cases skipped")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
