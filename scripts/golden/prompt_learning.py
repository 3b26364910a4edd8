"""Golden fixtures for prompt tuning, P-tuning, prefix tuning and LLaMA-Adapter (PEFT's PROMPT_TUNING,
P_TUNING, PREFIX_TUNING and ADAPTION_PROMPT).

Training (fixtures/train/<case>.safetensors, as scripts/golden/train_grads.py writes its cases):
input_ids / labels [2, 12] (HF convention, -100 = no loss; row 1 right-padded), loss, logits
[2, N + 12, vocab] (PEFT prepends the N virtual tokens, positions 0..N+11; prefix tuning: [2, 12, vocab],
the tokens at positions N..N+11 after the prefix's cached keys and values), init.<name> and
grad.<name> for every trainable tensor under Hone's names (PEFT's minus the adapter name):
`prompt_encoder.embedding.weight` [N, hidden] (prefix tuning: [N, layers * 2 * kv width], or
[N, kv width] with its projection) and, for P-tuning's MLP encoder,
`prompt_encoder.mlp_head.{0,2,4}.{weight,bias}`, for prefix tuning's projection
`prompt_encoder.transform.{0,2}.{weight,bias}`, for LLaMA-Adapter
`model.layers.N.self_attn.adaption_prompt` [1, len, hidden] and `....adaption_gate` [1] (set to
0.7 / -0.4 first: PEFT starts the gates at 0, where the prompts get no gradient). Prefix cases label
every token of row 0 (its first token's label is one no logit predicts).
The references run in float64 (the prompt encoder too).

Adapters (fixtures/adapters/<name>/, PEFT's save_pretrained, plus <name>.golden.safetensors with
the base model's golden input_ids and the PEFT model's logits at the real tokens' positions,
[2, 11, vocab]): a prompt-tuning adapter (random N(0,1) prompts, PEFT's default init), a
P-tuning one (PEFT saves the encoder's output as `prompt_embeddings`), a prefix-tuning one
(with its projection: PEFT saves the projected keys and values) and a LLaMA-Adapter one (its gate
set to 0.8).

Run from the repository root:

    OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/prompt_learning.py
"""

import torch
from peft import (
    AdaptionPromptConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from transformers import AutoModelForCausalLM

from models import FIXTURES, load_fp32
from peft_adapter import save_adapter_fixture, save_gradient_case
from train_grads import batch

N_VIRTUAL = 4


def config(method, **extra):
    if method.startswith("adaption_prompt"):
        layers = int(method.rsplit("_", 1)[1])
        return AdaptionPromptConfig(task_type="CAUSAL_LM", adapter_len=3, adapter_layers=layers, **extra)
    if method == "prompt_tuning":
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N_VIRTUAL, **extra)
    if method == "prefix":
        return PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=N_VIRTUAL, **extra)
    if method == "prefix_projection":
        return PrefixTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=N_VIRTUAL, prefix_projection=True, encoder_hidden_size=24, **extra
        )
    return PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=N_VIRTUAL, encoder_hidden_size=24, **extra)


def virtual_positions(method):
    """How many logits PEFT's forward puts before the real tokens' (prefix tuning, LLaMA-Adapter: none)."""
    return 0 if method.startswith(("prefix", "adaption")) else N_VIRTUAL


def open_gates(model, values):
    """LLaMA-Adapter's gates start at 0, where nothing flows to the prompts: set them first."""
    gates = [p for n, p in model.named_parameters() if n.endswith("adaption_gate")]
    with torch.no_grad():
        for gate, value in zip(gates, values):
            gate.fill_(value)


def hone_name(name):
    return name.replace("prompt_encoder.default.", "prompt_encoder.").removeprefix("base_model.model.")


def train_case(name, model_dir, method, seed):
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(FIXTURES / "models" / model_dir, dtype=torch.float64)
    model = get_peft_model(base, config(method)).double()
    open_gates(model, [0.7, -0.4])
    trainable = {hone_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    prompt_lens = [0, 3] if method.startswith("prefix") else [5, 3]
    ids_labels = batch(model.config.vocab_size, 2, 12, prompt_lens, [0, 3], seed + 2)
    case = {"model": model_dir, "method": method, "num_virtual_tokens": N_VIRTUAL}
    if method.startswith("adaption_prompt"):
        case.update(method="adaption_prompt", adapter_len=3, adapter_layers=int(method.rsplit("_", 1)[1]))
    if method in ("p_tuning", "prefix_projection"):
        case["encoder_hidden_size"] = 24
    positions = virtual_positions(method) + 12
    save_gradient_case(name, model, trainable, ids_labels, case, positions=positions)


def adapter_case(name, base, method, seed):
    torch.manual_seed(seed)
    model = get_peft_model(load_fp32(f"fixtures/models/{base}"), config(method)).eval()
    open_gates(model, [0.8])
    save_adapter_fixture(name, base, model, seed, skip=virtual_positions(method), prompt_learning=True)


def main():
    train_case("prompt_llama-gqa", "llama-gqa", "prompt_tuning", 0)
    train_case("p_tuning_llama-gqa", "llama-gqa", "p_tuning", 1)
    train_case("prompt_gemma2", "gemma2", "prompt_tuning", 2)
    adapter_case("llama-tied-prompt", "llama-tied", "prompt_tuning", 301)
    adapter_case("llama-tied-p-tuning", "llama-tied", "p_tuning", 302)
    train_case("prefix_llama-gqa", "llama-gqa", "prefix", 3)
    train_case("prefix_projection_llama-gqa", "llama-gqa", "prefix_projection", 4)
    train_case("prefix_mistral-window", "mistral-window", "prefix", 5)
    train_case("prefix_gemma2", "gemma2", "prefix", 6)
    adapter_case("llama-gqa-prefix", "llama-gqa", "prefix_projection", 303)
    train_case("adaption_mistral", "mistral", "adaption_prompt_2", 7)
    train_case("adaption_llama-64", "llama-64", "adaption_prompt_1", 8)
    adapter_case("llama-tied-adaption", "llama-tied", "adaption_prompt_1", 304)


if __name__ == "__main__":
    main()
