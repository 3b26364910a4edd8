"""Golden fixtures for AdaLoRA (PEFT's ADALORA, `peft.AdaLoraConfig`): per targeted layer `lora_A`
`[r, in]`, `lora_E` `[r, 1]`, `lora_B` `[out, r]` (no `.weight`), the update
`B diag(E) A · lora_alpha / (init_r + 1e-5)`, PEFT's orthogonality penalty added to the loss, and its
RankAllocator masking E after each optimizer step.

Training (fixtures/train/adalora_<case>.safetensors, as scripts/golden/factored.py writes its
cases): input_ids / labels [2, 12] (row 1 right-padded), loss (cross-entropy plus
orth_reg_weight × the mean of ‖AAᵀ − I‖_F and ‖BᵀB − I‖_F, as PEFT's forward returns it), logits,
init.<name> and grad.<name> for every triplet tensor under Hone's names
(`model.layers.N.self_attn.q_proj.lora_A`, `....lora_E`, `....lora_B`). A, B and E are set to
random values first (PEFT starts E at 0, where A and B get no gradient but the penalty's). References
in float64. Cases: adalora_llama-gqa (init_r 4, alpha 8, q, v, down), adalora_qwen2 (init_r 3,
lora_alpha 0, so the scale is init_r / (init_r + 1e-5); orth_reg_weight 0.1).

Allocator (fixtures/train/adalora_allocator.safetensors): init_r 4, target_r 2, tinit 1, tfinal 2,
deltaT 2, total_step 10 on llama-gqa's q, v, down; for each step 0..9 every triplet tensor is set to
random values with random gradients, then `update_and_allocate(step)` runs; kept: step<k>.value.<name>,
step<k>.grad.<name> and step<k>.e.<name> (E after the allocator), and in the metadata each step's
rank_pattern (null until the first allocation).

Adapter (fixtures/adapters/llama-gqa-adalora/, PEFT's save_pretrained after the allocator masked some
triplets, so the file holds only the kept rows and the config its rank_pattern; plus
llama-gqa-adalora.golden.safetensors: the base model's golden input_ids and the PEFT model's logits).

Run from the repository root:

    OMP_NUM_THREADS=1 PYTHONHASHSEED=0 /opt/ref/venv/bin/python scripts/golden/adalora.py
"""

import json

import torch
from peft import AdaLoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from models import FIXTURES, load_fp32
from peft_adapter import save_adapter_fixture, save_gradient_case
from train_grads import batch

TARGETS = ["q_proj", "v_proj", "down_proj"]

CASES = {
    "plain": dict(init_r=4, target_r=2, lora_alpha=8, total_step=10),
    "alpha0": dict(init_r=3, target_r=2, lora_alpha=0, total_step=10, orth_reg_weight=0.1),
    "allocator": dict(init_r=4, target_r=2, tinit=1, tfinal=2, deltaT=2, total_step=10),
}


def config(case):
    return AdaLoraConfig(task_type="CAUSAL_LM", target_modules=TARGETS, **CASES[case])


def hone_name(name):
    return name.removeprefix("base_model.model.").replace(".default", "")


def triplets(model):
    return {hone_name(n): p for n, p in model.named_parameters() if "lora_" in n}


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in triplets(model).values():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


def train_case(name, model_dir, case, seed):
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(FIXTURES / "models" / model_dir, dtype=torch.float64)
    model = get_peft_model(base, config(case)).double()
    randomize(model, seed)
    c = config(case)
    meta = {"model": model_dir, "method": "adalora", "targets": TARGETS, "init_r": c.init_r, "target_r": c.target_r,
            "lora_alpha": c.lora_alpha, "orth_reg_weight": c.orth_reg_weight, "total_step": c.total_step}
    ids_labels = batch(model.config.vocab_size, 2, 12, [5, 3], [0, 3], seed + 2)
    save_gradient_case(name, model, triplets(model), ids_labels, meta)


def allocator_case(seed):
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(FIXTURES / "models" / "llama-gqa", dtype=torch.float64)
    model = get_peft_model(base, config("allocator")).double()
    g = torch.Generator().manual_seed(seed)
    tensors, patterns = {}, []
    params = triplets(model)
    for step in range(10):
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
                tensors[f"step{step}.value.{k}"] = p.detach().clone()
                tensors[f"step{step}.grad.{k}"] = p.grad.clone()
        model.base_model.update_and_allocate(step)
        pattern = model.peft_config["default"].rank_pattern
        patterns.append({k.replace(".default", ""): v for k, v in pattern.items()} if pattern else None)
        for k, p in params.items():
            if k.endswith("lora_E"):
                tensors[f"step{step}.e.{k}"] = p.detach().clone()
    tensors = {k: v.float().contiguous() for k, v in tensors.items()}
    c = config("allocator")
    meta = {"init_r": c.init_r, "target_r": c.target_r, "tinit": c.tinit, "tfinal": c.tfinal, "deltaT": c.deltaT,
            "total_step": c.total_step, "beta1": c.beta1, "beta2": c.beta2, "targets": TARGETS,
            "modules": sorted({k.rsplit(".", 1)[0] for k in params}), "patterns": patterns}
    save_file(tensors, FIXTURES / "train" / "adalora_allocator.safetensors", metadata={"case": json.dumps(meta)})
    masked = [sum(not b for v in p.values() for b in v) if p else 0 for p in patterns]
    print(f"adalora_allocator: triplets masked per step {masked}")


def adapter_case(name, base, seed):
    torch.manual_seed(seed)
    model = get_peft_model(load_fp32(f"fixtures/models/{base}"), config("allocator"))
    randomize(model, seed)
    g = torch.Generator().manual_seed(seed)
    for step in range(4):
        for p in triplets(model).values():
            p.grad = torch.randn(p.shape, generator=g)
        model.base_model.update_and_allocate(step)
    assert model.peft_config["default"].rank_pattern, "no allocation ran"
    save_adapter_fixture(name, base, model.eval(), seed)


def main():
    train_case("adalora_llama-gqa", "llama-gqa", "plain", 31)
    train_case("adalora_qwen2", "qwen2", "alpha0", 32)
    allocator_case(33)
    adapter_case("llama-gqa-adalora", "llama-gqa", 310)


if __name__ == "__main__":
    main()
