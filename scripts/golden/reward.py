"""Golden fixture for Hone's reward modelling (`stage: rm`): LLaMA-Factory's `PairwiseTrainer`
loss on TRL 0.24's `AutoModelForCausalLMWithValueHead` (the classes LLaMA-Factory trains with).

fixtures/train/rm_llama-gqa.safetensors — the tiny GQA llama with LoRA on every linear layer (B
random) under a value head (its weight and bias given, as `init.v_head.summary.*`), two pairs
(rows chosen 0, chosen 1, rejected 0, rejected 1 in LLaMA-Factory's batch order, right-padded);
each response's score is the value at its last non-pad token (`attention_mask.sum(-1) - 1`), the
loss `-logsigmoid(chosen - rejected).mean()`; the loss, the scores and the gradient of every LoRA
matrix and of the value head. The value head's dropout is off (Hone's masks are its own). float64.

Run: OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/reward.py
"""

import json
import pathlib

import torch
import trl
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

import train_grads as tg

tg.fix_trl_imports()
from trl import AutoModelForCausalLMWithValueHead  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "train"


def pairwise_loss(model, ids, mask):
    """LLaMA-Factory's `PairwiseTrainer.compute_loss` (src/llamafactory/train/rm/trainer.py)."""
    _, _, values = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, return_dict=True,
                         use_cache=False)
    batch_size = ids.size(0) // 2
    chosen_masks, rejected_masks = torch.split(mask, batch_size, dim=0)
    chosen_rewards, rejected_rewards = torch.split(values, batch_size, dim=0)
    chosen_scores = chosen_rewards.gather(dim=-1, index=(chosen_masks.sum(dim=-1, keepdim=True) - 1))
    rejected_scores = rejected_rewards.gather(dim=-1, index=(rejected_masks.sum(dim=-1, keepdim=True) - 1))
    chosen_scores, rejected_scores = chosen_scores.squeeze(), rejected_scores.squeeze()
    loss = -torch.nn.functional.logsigmoid(chosen_scores.float() - rejected_scores.float()).mean()
    return loss, chosen_scores, rejected_scores


def main():
    name, model_dir = "rm_llama-gqa", "llama-gqa"
    torch.manual_seed(0)
    base = tg.load(ROOT / "fixtures" / "models" / model_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(base, cfg)
    tg.randomize_b(peft_model, 1)
    model = AutoModelForCausalLMWithValueHead.from_pretrained(peft_model)
    model.v_head.double()
    model.v_head.dropout.p = 0.0
    with torch.no_grad():
        # Larger than nn.Linear's init so the two pairs' scores differ clearly.
        model.v_head.summary.weight.normal_(0.0, 0.5)
        model.v_head.summary.bias.fill_(0.25)
    init = {tg.hone_name(n): p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}
    init["v_head.summary.weight"] = model.v_head.summary.weight.detach().clone()
    init["v_head.summary.bias"] = model.v_head.summary.bias.detach().clone()
    # LLaMA-Factory's batch order: the chosen rows, then the rejected rows.
    lengths = [12, 10, 9, 12]
    t = 12
    ids, _ = tg.batch(model.pretrained_model.config.vocab_size, 4, t, [0] * 4, [t - n for n in lengths], 2)
    ids[2, :5] = ids[0, :5]
    ids[3, :3] = ids[1, :3]
    mask = (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).long()
    model.zero_grad()
    loss, chosen, rejected = pairwise_loss(model, ids, mask)
    loss.backward()
    tensors = {"input_ids": ids, "lengths": torch.tensor(lengths), "loss": loss.detach().reshape(1),
               "chosen": chosen.detach(), "rejected": rejected.detach()}
    for k, v in init.items():
        tensors[f"init.{k}"] = v
    for n, p in model.named_parameters():
        if p.requires_grad:
            # A pair's two scores share the bias, so its gradient cancels (0 up to rounding).
            assert p.grad.abs().max() > 0 or n == "v_head.summary.bias", n
            tensors[f"grad.{tg.hone_name(n.removeprefix('pretrained_model.'))}"] = p.grad
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    case = {"model": model_dir, "method": "lora", "r": 4, "alpha": 8, "use_rslora": False, "bias": "none",
            "use_dora": False, "targets": "all-linear", "trl": trl.__version__}
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(tensors, OUT / f"{name}.safetensors", metadata={"case": json.dumps(case)})
    print(f"{name}: loss {loss.item():.6f}, chosen {chosen.tolist()}, rejected {rejected.tolist()}")
    print(sorted(k for k in tensors if k.startswith("grad.v_head")))


if __name__ == "__main__":
    print(f"torch {torch.__version__}, trl {trl.__version__}")
    main()
