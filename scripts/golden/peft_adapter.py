"""What every PEFT adapter fixture does once its PEFT model is built: save the adapter under
fixtures/adapters/<name>/ with `save_pretrained`, check that PEFT reloads it to the same logits (and,
for a method that merges, that `merge_and_unload` computes them too), and keep those logits for the
base model's golden input_ids as fixtures/adapters/<name>.golden.safetensors."""

import shutil

import peft
import torch
from peft import PeftModel
from safetensors.torch import load_file

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
