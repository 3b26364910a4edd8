"""Golden fixtures for Hone's preference training (`stage: dpo`), from TRL 0.24 (the newest version
LLaMA-Factory accepts) and LLaMA-Factory's own formulas.

1. fixtures/train/dpo_losses.json — each `pref_loss` on fixed sequence log-probabilities: the
   per-pair losses, their gradients with respect to each response's *summed* log-probability (by
   autograd), and the rewards. sigmoid (with and without label smoothing), hinge and ipo are TRL's
   `DPOTrainer.dpo_loss` with that `loss_type` (IPO on mean token log-probabilities, as TRL and
   LLaMA-Factory compute them); orpo and simpo are LLaMA-Factory's `odds_ratio_loss` and
   `simpo_loss` (src/llamafactory/train/dpo/trainer.py), restated here in torch; `pref_ftx` adds
   LLaMA-Factory's `ftx · (−mean log-probability of the chosen response)`.
2. fixtures/train/kto_losses.json — TRL's `KTOTrainer.kto_loss` (`loss_type="kto"`) on fixed
   summed log-probabilities of desirable and undesirable responses and of a mismatched (KL) set,
   LLaMA-Factory's mean and `pref_ftx` term on top; gradients by autograd.
3. fixtures/train/dpo_llama-gqa.safetensors — the whole-model gradient of a sigmoid DPO loss
   (β 0.1, label smoothing 0.1, pref_ftx 0.3) on the tiny GQA llama with LoRA on every linear
   layer (B random), two pairs whose responses follow a shared prompt, rows chosen and rejected in
   turn. Sequence log-probabilities are TRL's (`log_softmax` of the shifted logits gathered at the
   labels, summed over labelled positions); the reference log-probabilities are given (`reference`),
   as Hone precomputes them. float64.

Run: OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/dpo.py
"""

import json
import pathlib
import types

import torch
import torch.nn.functional as F
import trl
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

import train_grads as tg

tg.fix_trl_imports()
from trl.trainer.dpo_trainer import DPOTrainer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "train"


def trl_loss(loss_type, beta, smoothing):
    """TRL's `dpo_loss` bound to the few attributes it reads."""
    fake = types.SimpleNamespace(
        beta=beta,
        label_smoothing=smoothing,
        reference_free=False,
        f_divergence_type=trl.trainer.dpo_config.FDivergenceType.REVERSE_KL,
        f_divergence_params=None,
        use_weighting=False,
        accelerator=types.SimpleNamespace(device=torch.device("cpu")),
    )

    def run(pc, pr, rc, rr):
        losses, chosen_rewards, rejected_rewards = DPOTrainer.dpo_loss(fake, pc, pr, rc, rr, loss_type=loss_type)
        return losses, chosen_rewards, rejected_rewards

    return run


def orpo(beta):
    """LLaMA-Factory's `odds_ratio_loss` on mean log-probabilities; rewards β·A."""

    def run(pc, pr, rc, rr):
        log_odds = (pc - pr) - (torch.log1p(-torch.exp(pc)) - torch.log1p(-torch.exp(pr)))
        losses = -pc + beta * -F.logsigmoid(log_odds)
        return losses, beta * pc.detach(), beta * pr.detach()

    return run


def simpo(beta, gamma):
    """LLaMA-Factory's `simpo_loss` on mean log-probabilities; rewards β·A."""

    def run(pc, pr, rc, rr):
        logits = (pc - pr) - gamma / beta
        return -F.logsigmoid(beta * logits), beta * pc.detach(), beta * pr.detach()

    return run


CASES = [
    # (name, pref_loss, beta, label smoothing, ftx, simpo_gamma, averaged, loss function)
    ("sigmoid", "sigmoid", 0.1, 0.0, 0.0, 0.5, False, trl_loss("sigmoid", 0.1, 0.0)),
    ("sigmoid_smoothed_ftx", "sigmoid", 0.3, 0.1, 0.5, 0.5, False, trl_loss("sigmoid", 0.3, 0.1)),
    ("hinge", "hinge", 0.1, 0.0, 0.0, 0.5, False, trl_loss("hinge", 0.1, 0.0)),
    ("ipo", "ipo", 0.1, 0.0, 0.0, 0.5, True, trl_loss("ipo", 0.1, 0.0)),
    ("orpo", "orpo", 0.1, 0.0, 0.0, 0.5, True, orpo(0.1)),
    ("orpo_ftx", "orpo", 0.2, 0.0, 0.4, 0.5, True, orpo(0.2)),
    ("simpo", "simpo", 2.0, 0.0, 0.0, 1.0, True, simpo(2.0, 1.0)),
]


def loss_cases():
    g = torch.Generator().manual_seed(0)
    n = 6
    tokens_c = torch.randint(3, 40, (n,), generator=g).double()
    tokens_r = torch.randint(3, 40, (n,), generator=g).double()
    # Sums of log-probabilities around −1.5 a token, references near them; one hinge pair past
    # its margin (h large) so the hinge's flat side is covered.
    sum_c = -(1.5 + torch.rand(n, generator=g, dtype=torch.float64)) * tokens_c
    sum_r = -(1.5 + torch.rand(n, generator=g, dtype=torch.float64)) * tokens_r
    ref_c = sum_c + torch.randn(n, generator=g, dtype=torch.float64) * 3
    ref_r = sum_r + torch.randn(n, generator=g, dtype=torch.float64) * 3
    ref_r[0] = sum_r[0] + 40.0
    out = {"trl": trl.__version__, "tokens_chosen": tokens_c.tolist(), "tokens_rejected": tokens_r.tolist(),
           "sum_chosen": sum_c.tolist(), "sum_rejected": sum_r.tolist(),
           "reference_sum_chosen": ref_c.tolist(), "reference_sum_rejected": ref_r.tolist(), "cases": []}
    for name, pref_loss, beta, smoothing, ftx, gamma, averaged, fn in CASES:
        sc = sum_c.clone().requires_grad_(True)
        sr = sum_r.clone().requires_grad_(True)
        pc, pr = (sc / tokens_c, sr / tokens_r) if averaged else (sc, sr)
        rc, rr = (ref_c / tokens_c, ref_r / tokens_r) if averaged else (ref_c, ref_r)
        losses, rew_c, rew_r = fn(pc, pr, rc, rr)
        if ftx > 0:
            losses = losses + ftx * -(sc / tokens_c)
        losses.sum().backward()
        out["cases"].append({
            "name": name, "pref_loss": pref_loss, "pref_beta": beta, "dpo_label_smoothing": smoothing,
            "pref_ftx": ftx, "simpo_gamma": gamma,
            "losses": losses.tolist(), "d_sum_chosen": sc.grad.tolist(), "d_sum_rejected": sr.grad.tolist(),
            "rewards_chosen": rew_c.tolist(), "rewards_rejected": rew_r.tolist(),
        })
        print(f"{name}: mean loss {losses.mean().item():.6f}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dpo_losses.json").write_text(json.dumps(out, indent=1) + "\n")


def kto_cases():
    """TRL's `KTOTrainer.kto_loss` (loss_type "kto") on 7 responses, with LLaMA-Factory's mean and
    `pref_ftx` term; gradients with respect to each response's summed log-probability."""
    from trl.trainer.kto_trainer import KTOTrainer

    g = torch.Generator().manual_seed(1)
    n = 7
    tokens = torch.randint(3, 30, (n,), generator=g).double()
    sums = -(1.2 + torch.rand(n, generator=g, dtype=torch.float64)) * tokens
    refs = sums + torch.randn(n, generator=g, dtype=torch.float64) * 2
    tags = torch.tensor([True, False, True, True, False, False, True])
    kl_sums = -(1.5 + torch.rand(n, generator=g, dtype=torch.float64)) * tokens
    kl_refs = kl_sums - torch.rand(n, generator=g, dtype=torch.float64) * 2
    out = {"sums": sums.tolist(), "tokens": tokens.tolist(), "reference_sums": refs.tolist(),
           "desirable": tags.tolist(), "kl_sums": kl_sums.tolist(), "kl_reference_sums": kl_refs.tolist(),
           "cases": []}
    for name, beta, wd, wu, ftx in [("kto", 0.1, 1.0, 1.0, 0.0), ("kto_weighted_ftx", 0.3, 1.0, 1.5, 0.4)]:
        fake = types.SimpleNamespace(
            beta=beta, desirable_weight=wd, undesirable_weight=wu, loss_type="kto", calculate_KL=True,
            accelerator=types.SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x),
        )
        s = sums.clone().requires_grad_(True)
        losses, chosen_rewards, rejected_rewards, kl = KTOTrainer.kto_loss(
            fake, s[tags], s[~tags], kl_sums, refs[tags], refs[~tags], kl_refs
        )
        loss = losses.nanmean()
        if ftx > 0:
            chosen_avg = s[tags] / tokens[tags]
            loss = loss + ftx * (-chosen_avg).nanmean() / int(tags.sum()) * n
        loss.backward()
        rewards = torch.empty(n, dtype=torch.float64)
        rewards[tags] = chosen_rewards
        rewards[~tags] = rejected_rewards
        out["kl"] = kl.item()
        out["cases"].append({"name": name, "beta": beta, "desirable_weight": wd, "undesirable_weight": wu,
                             "ftx": ftx, "loss": loss.item(), "d_sums": s.grad.tolist(), "rewards": rewards.tolist()})
        print(f"{name}: loss {loss.item():.6f}, kl {kl.item():.6f}")
    (OUT / "kto_losses.json").write_text(json.dumps(out, indent=1) + "\n")


def sequence_logps(logits, labels):
    """TRL's: log-probabilities of the labels under the shifted logits, summed per row."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    mask = labels != -100
    labels[~mask] = 0
    per_token = torch.gather(logits.log_softmax(-1), 2, labels.unsqueeze(2)).squeeze(2)
    return (per_token * mask).sum(-1), mask.sum(-1)


def model_case():
    name, model_dir, beta, smoothing, ftx = "dpo_llama-gqa", "llama-gqa", 0.1, 0.1, 0.3
    torch.manual_seed(0)
    base = tg.load(ROOT / "fixtures" / "models" / model_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    tg.randomize_b(model, 1)
    init = {tg.hone_name(n): p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    # Rows: chosen 0, rejected 0, chosen 1, rejected 1; pair k's two rows share a prompt.
    prompts, lengths = [5, 5, 3, 3], [12, 9, 10, 12]
    t = 12
    ids, labels = tg.batch(model.config.vocab_size, 4, t, prompts, [t - n for n in lengths], 2)
    ids[1, :5] = ids[0, :5]
    ids[3, :3] = ids[2, :3]
    labels[1, :5] = -100
    model.zero_grad()
    logits = model(input_ids=ids).logits
    logps, counts = sequence_logps(logits, labels)
    reference = logps.detach() + torch.tensor([0.3, -0.2, -0.5, 0.4], dtype=torch.float64)
    losses, _, _ = trl_loss("sigmoid", beta, smoothing)(logps[0::2], logps[1::2], reference[0::2], reference[1::2])
    losses = losses + ftx * -(logps[0::2] / counts[0::2])
    loss = losses.mean()
    loss.backward()
    tensors = {"input_ids": ids, "labels": labels, "lengths": torch.tensor(lengths), "loss": loss.detach().reshape(1),
               "logps": logps.detach(), "reference": reference}
    for k, v in init.items():
        tensors[f"init.{k}"] = v
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad.abs().max() > 0, n
            tensors[f"grad.{tg.hone_name(n)}"] = p.grad
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    case = {"model": model_dir, "method": "lora", "r": 4, "alpha": 8, "use_rslora": False, "bias": "none",
            "use_dora": False, "targets": "all-linear", "pref_loss": "sigmoid", "pref_beta": beta,
            "dpo_label_smoothing": smoothing, "pref_ftx": ftx}
    save_file(tensors, OUT / f"{name}.safetensors", metadata={"case": json.dumps(case)})
    print(f"{name}: loss {loss.item():.6f}")


if __name__ == "__main__":
    print(f"torch {torch.__version__}, trl {trl.__version__}")
    loss_cases()
    kto_cases()
    model_case()
