"""What every PEFT method's fixtures do once its PEFT model is built. An adapter fixture: save the
adapter under fixtures/adapters/<name>/ with `save_pretrained`, check that PEFT reloads it to the
same logits (and, for a method that merges, that `merge_and_unload` computes them too), and keep
those logits for the base model's golden input_ids as fixtures/adapters/<name>.golden.safetensors. A
gradient case: one forward and backward, written to fixtures/train/<name>.safetensors."""

import json
import shutil

import peft
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from models import FIXTURES, VERSIONS, load_fp32, save_golden


def save_adapter_fixture(name, base, model, seed, skip=0, merges=False, prompt_learning=False):
    """`skip`: virtual-token positions before the real tokens' logits (prompt learning, whose
    logits are those of the real tokens' positions)."""
    out_dir = FIXTURES / "adapters" / name
    shutil.rmtree(out_dir, ignore_errors=True)
    base_path = f"fixtures/models/{base}"
    model.save_pretrained(out_dir)
    ids = load_file(FIXTURES / "models" / base / "golden.safetensors")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, skip:]
    reloaded = PeftModel.from_pretrained(load_fp32(base_path), out_dir).eval()
    with torch.no_grad():
        again = reloaded(input_ids=ids).logits[:, skip:]
    diff = (again - logits).abs().max().item()
    assert diff < 1e-5, f"{name}: reload computes differently ({diff})"
    line = f"{name}: saved, reload Δ {diff:.1e}"
    if merges:
        merged = reloaded.merge_and_unload()
        with torch.no_grad():
            merged_diff = (merged(input_ids=ids).logits - logits).abs().max().item()
        assert merged_diff < 1e-4, f"{name}: merged computes differently ({merged_diff})"
        line += f", merged Δ {merged_diff:.1e}"
    positions = "at the real tokens' positions " if prompt_learning else ""
    metadata = dict(VERSIONS, peft_version=peft.__version__, adapter=name, base=base, seed=str(seed),
                    note=f"logits of the PEFT model {positions}for the base model's golden input_ids")
    save_golden({"input_ids": ids, "logits": logits.contiguous()}, FIXTURES / "adapters" / f"{name}.golden.safetensors",
                metadata)
    print(line)


def save_gradient_case(name, model, trainable, batch, case, extra=None, logits_slice=None, positions=None):
    """One forward and backward of `model` on `batch` (input_ids, labels): the batch, the loss, the
    logits (their first `logits_slice` columns; `positions` of them when given, checked), `extra`
    tensors, and init.<k> / grad.<k> of every `trainable` tensor (by Hone's name k), as float32,
    with `case` as the file's metadata."""
    ids, labels = batch
    init = {k: p.detach().clone() for k, p in trainable.items()}
    model.zero_grad()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    logits = out.logits.detach()
    assert positions is None or logits.shape[1] == positions, f"{name}: {logits.shape[1]} positions"
    tensors = {"input_ids": ids, "labels": labels, "loss": out.loss.detach().reshape(1),
               "logits": logits[..., :logits_slice] if logits_slice else logits}
    tensors.update(extra or {})
    for k, v in init.items():
        tensors[f"init.{k}"] = v
    for k, p in trainable.items():
        assert p.grad is not None and p.grad.abs().max() > 0, f"{name}: {k} has no gradient"
        tensors[f"grad.{k}"] = p.grad
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(tensors, FIXTURES / "train" / f"{name}.safetensors", metadata={"case": json.dumps(case)})
    print(f"{name}: loss {out.loss.item():.6f}, {len(trainable)} gradients")
