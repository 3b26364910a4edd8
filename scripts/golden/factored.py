"""Golden fixtures for the adapters whose update is built from other factors: VeRA (PEFT's VERA:
shared frozen projections vera_A [r, max in] and vera_B [max out, r], and per targeted layer
vera_lambda_d [r] and vera_lambda_b [out]), LoHa (PEFT's LOHA: per targeted layer hada_w1_a,
hada_w2_a [out, r], hada_w1_b, hada_w2_b [r, in]; r 2, alpha 6) and LoKr (PEFT's LOKR: kron(W1, W2),
W1 lokr_w1 or lokr_w1_a · lokr_w1_b, W2 lokr_w2 or lokr_w2_a · lokr_w2_b by PEFT's rules; r 2, alpha 6;
r 2 with decompose_both; r 4, where some layers' W2 is whole).

Training (fixtures/train/vera_<model>.safetensors, as scripts/golden/train_grads.py writes its
cases): input_ids / labels [2, 12] (row 1 right-padded), loss, logits [2, 12, vocab], vera_A and
vera_B, init.<name> and grad.<name> for every vector under Hone's names
(`model.layers.N.self_attn.q_proj.vera_lambda_d`, `....hada_w1_a`, ...). The trained tensors are set
to random values first (PEFT starts VeRA's λ_b and LoHa's hada_w2_b at 0, where the others get no
gradient). References in float64. LoHa cases: loha_llama-gqa, loha_qwen2; LoKr: lokr_llama-gqa,
lokr_both_qwen2, lokr_r4_llama-gqa.

Adapters (fixtures/adapters/llama-gqa-vera/ and llama-gqa-loha/, PEFT's save_pretrained, random
trained tensors; plus <name>.golden.safetensors: the base model's golden input_ids and the PEFT
model's logits).

Run from the repository root:

    OMP_NUM_THREADS=1 PYTHONHASHSEED=0 /opt/ref/venv/bin/python scripts/golden/factored.py
"""

import torch
from peft import LoHaConfig, LoKrConfig, VeraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from models import FIXTURES, load_fp32
from peft_adapter import save_adapter_fixture, save_gradient_case
from train_grads import batch

TARGETS = ["q_proj", "v_proj", "down_proj"]


LOKR = {"lokr": dict(r=2), "lokr_both": dict(r=2, decompose_both=True), "lokr_r4": dict(r=4)}


def config(method):
    if method in LOKR:
        return LoKrConfig(task_type="CAUSAL_LM", alpha=6, target_modules=TARGETS, **LOKR[method])
    if method == "loha":
        return LoHaConfig(task_type="CAUSAL_LM", r=2, alpha=6, target_modules=TARGETS)
    return VeraConfig(task_type="CAUSAL_LM", r=4, target_modules=TARGETS, projection_prng_key=7)


def randomize_vectors(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vera_lambda" in name or "hada_w" in name or "lokr_w" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)


def hone_name(name):
    return name.removeprefix("base_model.model.").replace(".default", "")


def train_case(name, model_dir, method, seed):
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(FIXTURES / "models" / model_dir, dtype=torch.float64)
    model = get_peft_model(base, config(method)).double()
    randomize_vectors(model, seed)
    trainable = {hone_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    extra = {}
    if method == "vera":
        vera = model.base_model.model.model.layers[0].self_attn.q_proj
        extra = dict(vera_A=vera.vera_A["default"], vera_B=vera.vera_B["default"])
    case = {"model": model_dir, "method": method, "r": 4, "targets": TARGETS}
    if method == "loha":
        case.update(r=2, alpha=6)
    if method in LOKR:
        case.update({"method": "lokr", "alpha": 6, "decompose_both": False, **LOKR[method]})
    ids_labels = batch(model.config.vocab_size, 2, 12, [5, 3], [0, 3], seed + 2)
    save_gradient_case(name, model, trainable, ids_labels, case, extra)


def adapter_case(name, base, method, seed):
    torch.manual_seed(seed)
    model = get_peft_model(load_fp32(f"fixtures/models/{base}"), config(method)).eval()
    randomize_vectors(model, seed)
    save_adapter_fixture(name, base, model, seed)


def main():
    train_case("vera_llama-gqa", "llama-gqa", "vera", 11)
    train_case("vera_qwen2", "qwen2", "vera", 12)
    adapter_case("llama-gqa-vera", "llama-gqa", "vera", 305)
    train_case("loha_llama-gqa", "llama-gqa", "loha", 13)
    train_case("loha_qwen2", "qwen2", "loha", 14)
    adapter_case("llama-gqa-loha", "llama-gqa", "loha", 306)
    train_case("lokr_llama-gqa", "llama-gqa", "lokr", 15)
    train_case("lokr_both_qwen2", "qwen2", "lokr_both", 16)
    train_case("lokr_r4_llama-gqa", "llama-gqa", "lokr_r4", 17)
    adapter_case("llama-gqa-lokr", "llama-gqa", "lokr_r4", 307)


if __name__ == "__main__":
    main()
