"""Golden fixtures for OFT (PEFT's OFT, `peft.OFTConfig`, PEFT 0.21's rewrite): per targeted layer
`oft_R.weight` `[blocks, b(b-1)/2]` (one row with block_share), the strict upper triangles of
skew-symmetric Q_i; the layer computes `base(x · blockdiag(R_1..R_n))`, R = I + 2Q + 2Q² + … + Q^(k-1)
(use_cayley_neumann, k = num_cayley_neumann_terms) or (I − Q)(I + Q)⁻¹ (exact Cayley); coft first
projects each Q into a Frobenius ball.

Training (fixtures/train/oft_<case>.safetensors, as scripts/golden/factored.py writes its cases):
input_ids / labels [2, 12] (row 1 right-padded), loss, logits, init.<name> and grad.<name> for every
oft_R under Hone's names (`model.layers.N.self_attn.q_proj.oft_R.weight`). The rotations are set to
N(0, 0.1²) first (PEFT starts them at 0, R = I). References in float64. Cases: oft_llama-gqa
(oft_block_size 8 on q, v, down: q and v share their input with k), oft_exact_qwen2 (r 4, exact
Cayley, q/v biases), oft_share_llama-gqa (oft_block_size 4, block_share, 3 Neumann terms), and
oft_default_2layers: the first two layers of the default model (SmolLM2-135M from its GGUF) with
PEFT's OFT defaults (q_proj and v_proj, blocks of 32), rotations N(0, 0.01²), the logits' first
512 columns kept.

Adapters (fixtures/adapters/llama-gqa-oft/ and llama-gqa-oft-coft/, PEFT's save_pretrained, random
rotations, plus <name>.golden.safetensors: the base model's golden input_ids and the PEFT model's
logits). The coft adapter is saved before its first forward, so its rotations are outside coft's
ball and a reader must project them as PEFT's forward does (eps 0.5, exact Cayley, block_share).

Run from the repository root:

    OMP_NUM_THREADS=1 PYTHONHASHSEED=0 /opt/ref/venv/bin/python scripts/golden/oft.py
"""

import torch
from peft import OFTConfig, get_peft_model
from transformers import AutoModelForCausalLM

from models import FIXTURES, load_fp32
from peft_adapter import save_adapter_fixture, save_gradient_case
from train_grads import batch, default_slice

TARGETS = ["q_proj", "v_proj", "down_proj"]

CASES = {
    "plain": dict(oft_block_size=8),
    "exact": dict(r=4, oft_block_size=0, use_cayley_neumann=False),
    "share": dict(oft_block_size=4, block_share=True, num_cayley_neumann_terms=3),
    "default": dict(oft_block_size=32),
    "coft": dict(oft_block_size=4, block_share=True, coft=True, eps=0.5, use_cayley_neumann=False),
}


def targets(case):
    return ["q_proj", "v_proj"] if case == "default" else TARGETS


def config(case):
    return OFTConfig(task_type="CAUSAL_LM", target_modules=targets(case), **CASES[case])


def randomize(model, seed, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "oft_R" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def hone_name(name):
    return name.removeprefix("base_model.model.").replace(".default", "")


def train_case(name, model_dir, case, seed):
    torch.manual_seed(seed)
    default = model_dir == "default"
    if default:
        base = default_slice(2)
    else:
        base = AutoModelForCausalLM.from_pretrained(FIXTURES / "models" / model_dir, dtype=torch.float64)
    model = get_peft_model(base, config(case)).double()
    randomize(model, seed, 0.01 if default else 0.1)
    trainable = {hone_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    meta = {"model": model_dir, "method": "oft", "targets": targets(case), "r": 0, "oft_block_size": 0,
            "use_cayley_neumann": True, "num_cayley_neumann_terms": 5, "block_share": False}
    meta.update(CASES[case])
    if default:
        meta.update(layers=2, logits_slice=512)
        ids_labels = batch(model.config.vocab_size, 2, 32, [10, 4], [0, 5], seed + 2)
    else:
        ids_labels = batch(model.config.vocab_size, 2, 12, [5, 3], [0, 3], seed + 2)
    save_gradient_case(name, model, trainable, ids_labels, meta, logits_slice=512 if default else None)


def adapter_case(name, base, case, seed):
    torch.manual_seed(seed)
    model = get_peft_model(load_fp32(f"fixtures/models/{base}"), config(case)).eval()
    randomize(model, seed)
    save_adapter_fixture(name, base, model, seed, merges=True)


def main():
    train_case("oft_llama-gqa", "llama-gqa", "plain", 21)
    train_case("oft_exact_qwen2", "qwen2", "exact", 22)
    train_case("oft_share_llama-gqa", "llama-gqa", "share", 23)
    train_case("oft_default_2layers", "default", "default", 24)
    adapter_case("llama-gqa-oft", "llama-gqa", "plain", 308)
    adapter_case("llama-gqa-oft-coft", "llama-gqa", "coft", 309)


if __name__ == "__main__":
    main()
