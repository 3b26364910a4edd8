"""Write PEFT LoRA adapter fixtures and the logits of the adapted models.

For each adapter below, PEFT wraps one of the tiny fixture models (fixtures/models/<base>/),
the LoRA matrices (and, with bias="all", the trainable biases) get random non-zero values
(PEFT's own init sets lora_B to zero, which would make every parity test vacuous), and
`save_pretrained` writes the adapter directory exactly as PEFT does:

    fixtures/adapters/<name>/                  README.md, adapter_config.json, adapter_model.safetensors
    fixtures/adapters/<name>.golden.safetensors input_ids [2, 11] (the base model's golden ids),
                                               logits [2, 11, vocab] of the PEFT model (unmerged)
    fixtures/adapters/<name>.greedy.json       (llama-tied-qv only) 8 greedy tokens after the base
                                               model's 5-token greedy prompt, for the CLI test

Sanity checks asserted before writing: the adapter moves the logits well away from the base
model's; reloading the directory with `PeftModel.from_pretrained` gives the same logits; merging
(`merge_and_unload`) gives them to 5e-5; greedy steps have top-2 gaps above 1e-3, produce only
character tokens of the CLI test tokenizer (ids 3..95) and differ from the base model's.

Run from the repository root (the script re-executes itself with PYTHONHASHSEED=0: PEFT
writes `target_modules` from a Python set, whose order would otherwise change every run):

    OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/peft_adapters.py [NAME...]

Names given: only those adapters are rewritten.
"""

import json
import os
import shutil
import sys
from pathlib import Path

import peft
import torch
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model

from models import (
    FIXTURES,
    GREEDY_MIN_MARGIN,
    ROOT,
    VERSIONS,
    full_logits,
    load_fp32,
    manual_greedy,
    save_golden,
)

OUT = FIXTURES / "adapters"
# The CLI test tokenizer maps ids 3..95 to single characters (crates/hone-cli/tests/common).
CHAR_IDS = range(3, 96)
# An adapter that barely changes the logits would let a loader that ignores it pass.
MIN_LOGIT_CHANGE = 0.5
# Merged and unmerged forwards differ by float32 rounding only; Hone's tests allow 1e-4.
MERGE_TOL = 5e-5

# name -> (base model, LoraConfig arguments, seed, write a greedy fixture)
ADAPTERS = {
    # The common case: attention q/v, default scaling alpha / r.
    "llama-tied-qv": (
        "llama-tied",
        dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        201,
        True,
    ),
    # Every linear layer, rank-stabilised scaling alpha / sqrt(r), per-module ranks and alphas,
    # and trained q/k/v biases saved alongside (Qwen2 has them).
    "qwen2-all-linear": (
        "qwen2",
        dict(
            r=8,
            lora_alpha=16,
            target_modules="all-linear",
            use_rslora=True,
            bias="all",
            rank_pattern={"down_proj": 2},
            alpha_pattern={"layers.1.self_attn.o_proj": 4},
        ),
        202,
        False,
    ),
    # Qwen3 (q/k norms before RoPE): every linear layer, a per-module rank.
    "qwen3-all-linear": (
        "qwen3",
        dict(r=4, lora_alpha=8, target_modules="all-linear", rank_pattern={"gate_proj": 2}),
        204,
        False,
    ),
    # DoRA on every linear layer of Qwen2 (q/k/v biases, which DoRA leaves outside its rescaling).
    "qwen2-dora": (
        "qwen2",
        dict(r=4, lora_alpha=8, target_modules="all-linear", use_dora=True),
        205,
        False,
    ),
    # IA3 with PEFT's defaults for Qwen2 (q and v outputs, their biases included; down's input).
    "qwen2-ia3": ("qwen2", dict(method="ia3"), 206, False),
    # OLoRA (A, B from W's QR; the base becomes the residual), trained, then saved converted to
    # plain LoRA on the original base (rank and alpha doubled) as PEFT's docs describe.
    "llama-gqa-olora": ("llama-gqa", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights="olora"), 207, False),
    # target_modules as a regex string, on the GQA model whose head_dim * heads != hidden_size.
    "llama-gqa-regex": (
        "llama-gqa",
        dict(
            r=4,
            lora_alpha=16,
            target_modules=r".*\.layers\.1\..*(k_proj|o_proj|up_proj)",
            alpha_pattern={"up_proj": 2},
        ),
        203,
        False,
    ),
}


@torch.no_grad()
def randomize_adapter(model, seed):
    """lora_A ~ N(0, 1/in), lora_B ~ N(0, 0.09/r): the update scale * B @ A is then of the order
    of the base weights; trainable biases move by N(0, 0.3^2)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_A" in name:
            value = torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5
        elif "lora_B" in name:
            value = 0.3 * torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5
        elif name.endswith(".bias"):
            value = param + 0.3 * torch.randn(param.shape, generator=gen)
        elif "ia3_l" in name:
            value = 1 + 0.3 * torch.randn(param.shape, generator=gen)
        elif "lora_magnitude_vector" in name:
            # DoRA's magnitudes start as the weight's row norms; move them by up to ~30%.
            value = param * (1 + 0.15 * torch.randn(param.shape, generator=gen))
        else:
            raise AssertionError(f"unexpected trainable parameter {name}")
        param.copy_(value)


@torch.no_grad()
def perturb_adapter(model, seed):
    """Moves an adapter that started from the weight as training would: A and B by 10% noise."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if param.requires_grad:
            param.add_(0.1 * param.abs().mean() * torch.randn(param.shape, generator=gen))


def base_golden(base):
    from safetensors.torch import load_file

    return load_file(FIXTURES / "models" / base / "golden.safetensors")


def build(name, base, lora_args, seed, greedy):
    out_dir = OUT / name
    shutil.rmtree(out_dir, ignore_errors=True)
    # A path relative to the repository root, so base_model_name_or_path is the same everywhere.
    base_path = f"fixtures/models/{base}"
    torch.manual_seed(seed)
    args = dict(lora_args)
    config = IA3Config if args.pop("method", "lora") == "ia3" else LoraConfig
    model = get_peft_model(load_fp32(base_path), config(task_type="CAUSAL_LM", **args))
    starts_from_weight = args.get("init_lora_weights") in ("olora", "pissa")
    if starts_from_weight:
        # The start, saved so that the trained adapter can be converted against it; marked as a
        # plain start, or loading it would move the (already moved) base again.
        start_dir = OUT / f"{name}-start"
        model.peft_config["default"].init_lora_weights = True
        model.save_pretrained(start_dir)
        perturb_adapter(model, seed)
    else:
        randomize_adapter(model, seed)
    model.eval()
    golden = base_golden(base)
    ids = golden["input_ids"]
    logits = full_logits(model, ids)
    change = (logits - golden["logits"]).abs().max().item()
    assert change > MIN_LOGIT_CHANGE, f"{name}: the adapter changes the logits by only {change}"
    if starts_from_weight:
        model.save_pretrained(out_dir, path_initial_model_for_weight_conversion=str(start_dir))
        shutil.rmtree(start_dir)
    else:
        model.save_pretrained(out_dir)

    reloaded = PeftModel.from_pretrained(load_fp32(base_path), out_dir).eval()
    reload_diff = (full_logits(reloaded, ids) - logits).abs().max().item()
    # A converted adapter on the original base computes the residual's sums in another order.
    assert reload_diff <= (MERGE_TOL if starts_from_weight else 0.0), f"{name}: reload computes differently"
    merged = reloaded.merge_and_unload(safe_merge=True)
    merge_diff = (full_logits(merged, ids) - logits).abs().max().item()
    assert merge_diff < MERGE_TOL, f"{name}: merged logits differ by {merge_diff}"

    metadata = dict(
        VERSIONS,
        peft_version=peft.__version__,
        adapter=name,
        base=base,
        seed=str(seed),
        note="logits of the unmerged PEFT model for the base model's golden input_ids",
    )
    save_golden(
        {"input_ids": ids, "logits": logits.contiguous()},
        OUT / f"{name}.golden.safetensors",
        metadata=metadata,
    )
    if greedy:
        write_greedy(name, base, model)
    return change, merge_diff


def write_greedy(name, base, model):
    base_greedy = json.loads((FIXTURES / "models" / base / "greedy.json").read_text())
    prompt = torch.tensor([base_greedy["prompt_ids"]], dtype=torch.int64)
    new_ids, margins = manual_greedy(model, prompt, base_greedy["max_new_tokens"])
    assert min(margins) > GREEDY_MIN_MARGIN, f"{name}: greedy near-tie, pick another seed"
    assert all(i in CHAR_IDS for i in new_ids), f"{name}: non-character token in {new_ids}"
    assert new_ids != base_greedy["new_ids"], f"{name}: greedy output equals the base model's"
    doc = {
        "adapter": name,
        "base": base,
        "prompt_ids": base_greedy["prompt_ids"],
        "new_ids": new_ids,
        "base_new_ids": base_greedy["new_ids"],
        "max_new_tokens": len(new_ids),
        "min_top2_logit_margin": min(margins),
        "top2_logit_margins": margins,
        "peft_version": peft.__version__,
        **VERSIONS,
    }
    (OUT / f"{name}.greedy.json").write_text(json.dumps(doc, indent=2) + "\n")


def main():
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    os.chdir(ROOT)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"{'adapter':<18} {'max|logit change|':>17} {'max|merged-unmerged|':>20}")
    only = sys.argv[1:]
    unknown = [n for n in only if n not in ADAPTERS]
    assert not unknown, f"unknown adapters {unknown}; known: {list(ADAPTERS)}"
    for name, (base, lora_args, seed, greedy) in ADAPTERS.items():
        if only and name not in only:
            continue
        change, merge_diff = build(name, base, lora_args, seed, greedy)
        print(f"{name:<18} {change:>17.3f} {merge_diff:>20.2e}")


if __name__ == "__main__":
    main()
