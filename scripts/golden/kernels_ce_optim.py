"""Golden fixtures for Hone's fused LM-head cross-entropy kernel and its optimizer (AdamW,
gradient clipping, learning-rate schedules).

Writes fixtures/kernels/:
  ce_prompt.safetensors   3 sequences x 13 tokens, hidden 64, vocab 300: sequence 0 has a
                          4-token prompt mask, sequence 1 is ignored entirely, sequence 2 has a
                          7-token prompt mask and an ignored last position (shifted labels)
  ce_sharp.safetensors    17 tokens, hidden 32, vocab 300, weights scaled so logits reach ~+-40
                          (a near one-hot softmax: tests the max-subtraction), 2 ignored rows
      each: h [n, hidden], w [vocab, hidden], labels int64 [n] (-100 = ignored), and
      F.cross_entropy(h @ w.T, labels, ignore_index=-100) (mean over labelled rows) with its
      gradients: loss [1], dh, dw from float32 torch; loss64, dh64, dw64 from float64 torch
  adamw_clip_cosine.safetensors
                          5 steps of torch.optim.AdamW (two parameter groups with different
                          lr / betas / eps / weight_decay) after clip_grad_norm_(max_norm) and
                          with transformers' cosine schedule with warmup, from a fixed init:
                          init.<name>, grad.<t>.<name> (before clipping), norm [5] (the total
                          norms clip_grad_norm_ returned), lr_mult [5] (float64, the schedule
                          multiplier used at each step) and param.<t>.<name> after step t = 1..5.
                          Metadata "config" is the JSON of the groups, max_norm and schedule.
  adamw_schedules.json    transformers.get_scheduler multipliers (optimizer lr 1.0) for linear,
                          cosine, constant and constant_with_warmup, 20 training steps,
                          3 warmup steps, read at scheduler steps 0..24 (past the end too)

Every torch computation is also repeated in float64 and the script prints the float32/float64
gap, so the Rust tolerances (1e-4 for the kernel, 1e-5 for the optimizer) are meaningful.

Run: OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/kernels_ce_optim.py
"""

import json
import pathlib

import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import get_scheduler

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "kernels"


def rel(a, b):
    """max|a - b| / max(1, max|b|): the metric the Rust tests use."""
    return ((a - b).abs().max() / max(1.0, b.abs().max().item())).item()


def ce_case(name, seqs, seq_len, hidden, vocab, w_scale, masks, seed):
    g = torch.Generator().manual_seed(seed)
    n = seqs * seq_len
    h = torch.randn(n, hidden, generator=g)
    w = torch.randn(vocab, hidden, generator=g) * (w_scale / hidden**0.5)
    labels = torch.randint(0, vocab, (n,), generator=g)
    for idx in masks:
        labels[idx] = -100
    kept = (labels != -100).nonzero().flatten()
    labels[kept[0]] = 0  # both ends of the vocabulary
    labels[kept[-1]] = vocab - 1

    def run(dtype):
        hh = h.to(dtype).clone().requires_grad_()
        ww = w.to(dtype).clone().requires_grad_()
        loss = F.cross_entropy(hh @ ww.T, labels, ignore_index=-100)
        loss.backward()
        return loss.detach(), hh.grad, ww.grad

    loss, dh, dw = run(torch.float32)
    loss64, dh64, dw64 = run(torch.float64)
    tensors = {
        "h": h,
        "w": w,
        "labels": labels,
        "loss": loss.reshape(1),
        "dh": dh,
        "dw": dw,
        "loss64": loss64.reshape(1).float(),
        "dh64": dh64.float(),
        "dw64": dw64.float(),
    }
    meta = {"torch_version": torch.__version__, "seed": str(seed)}
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / f"{name}.safetensors", meta)
    logits = h @ w.T
    print(
        f"{name}: n={n} labelled={(labels != -100).sum().item()} hidden={hidden} vocab={vocab} "
        f"|logits|max={logits.abs().max().item():.1f} loss={loss.item():.6f} "
        f"f32-vs-f64 rel: loss {rel(loss, loss64):.1e} dh {rel(dh, dh64):.1e} dw {rel(dw, dw64):.1e}"
    )


ADAMW_CONFIG = {
    "groups": [
        {
            "params": {"w1": [6, 5], "w2": [4, 6]},
            "lr": 1e-2,
            "betas": [0.9, 0.95],
            "eps": 1e-8,
            "weight_decay": 0.1,
        },
        {
            "params": {"b1": [5], "norm": [6]},
            "lr": 5e-3,
            "betas": [0.8, 0.999],
            "eps": 1e-6,
            "weight_decay": 0.0,
        },
    ],
    "max_norm": 1.0,
    "schedule": {"name": "cosine", "num_warmup_steps": 2, "num_training_steps": 5},
    "steps": 5,
}
# Pre-clip gradient scales: total norms of about 4, 0.4, 1.6, 0.5, 8, so clipping both
# scales down and (below max_norm) leaves gradients alone.
GRAD_SCALES = [0.5, 0.05, 0.2, 0.06, 1.0]


def adamw_run(dtype, init, grads):
    params = {k: v.to(dtype).clone().requires_grad_() for k, v in init.items()}
    groups = [
        {
            "params": [params[n] for n in grp["params"]],
            "lr": grp["lr"],
            "betas": tuple(grp["betas"]),
            "eps": grp["eps"],
            "weight_decay": grp["weight_decay"],
        }
        for grp in ADAMW_CONFIG["groups"]
    ]
    opt = torch.optim.AdamW(groups)
    sched_cfg = ADAMW_CONFIG["schedule"]
    sched = get_scheduler(
        sched_cfg["name"],
        opt,
        num_warmup_steps=sched_cfg["num_warmup_steps"],
        num_training_steps=sched_cfg["num_training_steps"],
    )
    norms, mults, after = [], [], []
    for t in range(ADAMW_CONFIG["steps"]):
        for k, p in params.items():
            p.grad = grads[t][k].to(dtype).clone()
        norms.append(torch.nn.utils.clip_grad_norm_(list(params.values()), ADAMW_CONFIG["max_norm"]))
        mults.append(opt.param_groups[0]["lr"] / ADAMW_CONFIG["groups"][0]["lr"])
        opt.step()
        sched.step()
        after.append({k: p.detach().clone() for k, p in params.items()})
    return torch.stack(norms), mults, after


def adamw_case():
    g = torch.Generator().manual_seed(7)
    init = {}
    for grp in ADAMW_CONFIG["groups"]:
        for n, shape in grp["params"].items():
            init[n] = torch.randn(*shape, generator=g)
    grads = [
        {n: torch.randn(*v.shape, generator=g) * s for n, v in init.items()} for s in GRAD_SCALES
    ]
    norms, mults, after = adamw_run(torch.float32, init, grads)
    norms64, _, after64 = adamw_run(torch.float64, init, grads)
    tensors = {f"init.{n}": v for n, v in init.items()}
    for t in range(ADAMW_CONFIG["steps"]):
        for n in init:
            tensors[f"grad.{t + 1}.{n}"] = grads[t][n]
            tensors[f"param.{t + 1}.{n}"] = after[t][n]
    tensors["norm"] = norms
    tensors["lr_mult"] = torch.tensor(mults, dtype=torch.float64)
    meta = {
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "config": json.dumps(ADAMW_CONFIG),
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / "adamw_clip_cosine.safetensors", meta)
    gap = max(rel(after[t][n], after64[t][n].float()) for t in range(5) for n in init)
    moved = max(rel(after[-1][n], init[n]) for n in init)
    print(
        f"adamw: norms {[round(x, 4) for x in norms.tolist()]} lr_mult {mults} "
        f"f32-vs-f64 params rel {gap:.1e} (norms {rel(norms, norms64.float()):.1e}); "
        f"params moved {moved:.1e} from init"
    )
    assert norms[0] > 1 and norms[1] < 1, "clipping should both act and not act"


def schedules():
    warmup, total, reads = 3, 20, 25
    out = {"num_warmup_steps": warmup, "num_training_steps": total, "multipliers": {}}
    for name in ["linear", "cosine", "constant", "constant_with_warmup"]:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=total)
        mults = []
        for _ in range(reads):
            mults.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        out["multipliers"][name] = mults
    out["transformers_version"] = transformers.__version__
    (OUT / "adamw_schedules.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"schedules: {', '.join(out['multipliers'])} over steps 0..{reads - 1}")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ce_case("ce_prompt", 3, 13, 64, 300, 1.0, [0, 1, 2, 3] + list(range(13, 26)) + list(range(26, 33)) + [38], 11)
    ce_case("ce_sharp", 1, 17, 32, 300, 8.0, [5, 16], 12)
    adamw_case()
    schedules()
    print(f"safetensors {safetensors.__version__}, torch {torch.__version__}, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
