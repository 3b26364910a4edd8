"""Golden fixtures for Hone's causal grouped-query attention kernel
(crates/hone/src/kernels/attention.rs).

Writes fixtures/kernels/attn_<case>.safetensors, one file per case, all float32:
  q [b, t, nh, hd], k [b, t, nkv, hd], v [b, t, nkv, hd]   inputs, token-major
  dout [b, t, nh, hd]                                      upstream gradient of out
  segment_ids int64 [b, t]                                 only for masked-by-segment cases
  out [b, t, nh, hd], lse [b, nh, t]                       forward output, per-row logsumexp
                                                           of the scaled, masked scores
  dq, dk, dv                                               gradients of sum(out * dout)

The reference is the textbook eager attention transformers' Llama uses (repeat_kv to expand
the kv heads, softmax(q kᵀ / sqrt(hd) + mask) v) run by torch autograd in float64 from the
float32 inputs; the stored values are those float64 results rounded to float32. The mask is
causal, and with segment ids also block-diagonal: query i sees key j iff j <= i and
seg[j] == seg[i]; with a sliding window w (metadata "window") also j > i - w, transformers'
sliding_window_overlay. With a soft-cap c (metadata "softcap") the scaled scores become
c * tanh(s / c) before the mask, as Gemma 2's eager attention does. The script asserts that torch's own float32 run of the same graph agrees with
the float64 one to 1e-5 relative (printed), so the fixtures are what PyTorch computes.

Run: OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/kernels_attn.py
"""

import math
import pathlib

import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "kernels"

# name: (batch, seq, heads, kv_heads, head_dim, segment ids per batch row as (id, length) runs,
#        sliding window or None[, soft-cap])
CASES = {
    "causal_t13_g1": (2, 13, 4, 4, 16, None, None),
    "segments_t37_g3": (2, 37, 6, 2, 8, [[(0, 10), (1, 20), (2, 7)], [(3, 1), (4, 30), (7, 6)]], None),
    "segments_t70_g3": (2, 70, 3, 1, 16, [[(5, 33), (2, 37)], [(0, 70)]], None),
    "causal_t70_g1": (2, 70, 2, 2, 8, None, None),
    # Windows shorter than a tile and longer than one, alone and with packed segments.
    "window9_t70_g1": (2, 70, 2, 2, 8, None, 9),
    "window70_t150_g2": (1, 150, 4, 2, 8, None, 70),
    "window5_segments_t37_g3": (2, 37, 6, 2, 8, [[(0, 10), (1, 20), (2, 7)], [(3, 1), (4, 30), (7, 6)]], 5),
    # A cap of 1.5 bends these O(1)-O(3) scores well into the tanh.
    "softcap_window9_t70_g2": (2, 70, 4, 2, 8, None, 9, 1.5),
}


def repeat_kv(x, groups):
    """[b, nkv, t, hd] -> [b, nkv * groups, t, hd], each kv head repeated for its query heads."""
    b, nkv, t, hd = x.shape
    return x[:, :, None].expand(b, nkv, groups, t, hd).reshape(b, nkv * groups, t, hd)


def allowed(t, seg, window):
    """[b or 1, 1, t, t] bool: query i may attend key j."""
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    if window is not None:
        i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
        causal &= j > i - window
    if seg is None:
        return causal[None, None]
    same = seg[:, :, None] == seg[:, None, :]
    return (causal[None] & same)[:, None]


def attention(q, k, v, seg, window, softcap=None):
    """Eager GQA attention on token-major tensors; returns out [b, t, nh, hd], lse [b, nh, t]."""
    nh, hd = q.shape[2], q.shape[3]
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    groups = nh // k.shape[2]
    kh, vh = repeat_kv(kh, groups), repeat_kv(vh, groups)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(hd)
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    scores = scores.masked_fill(~allowed(q.shape[1], seg, window), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.softmax(scores, dim=-1) @ vh
    return out.transpose(1, 2), lse


def run(inputs, seg, window, softcap, dtype):
    q, k, v, dout = (x.to(dtype).requires_grad_(n != "dout") for n, x in inputs.items())
    out, lse = attention(q, k, v, seg, window, softcap)
    (out * dout).sum().backward()
    return {"out": out, "lse": lse, "dq": q.grad, "dk": k.grad, "dv": v.grad}


def rel_err(a, b):
    return ((a - b).abs().max() / max(1.0, b.abs().max().item())).item()


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"{'case':18} {'file KB':>8}  torch f32 vs f64 (max rel over out, lse, dq, dk, dv)")
    for i, (name, (b, t, nh, nkv, hd, runs, window, *cap)) in enumerate(CASES.items()):
        softcap = cap[0] if cap else None
        g = torch.Generator().manual_seed(1000 + i)
        inputs = {
            "q": torch.randn(b, t, nh, hd, generator=g),
            "k": torch.randn(b, t, nkv, hd, generator=g),
            "v": torch.randn(b, t, nkv, hd, generator=g),
            "dout": torch.randn(b, t, nh, hd, generator=g),
        }
        seg = None
        if runs is not None:
            seg = torch.tensor([[s for s, n in row for _ in range(n)] for row in runs])
            assert seg.shape == (b, t)
        ref = run(inputs, seg, window, softcap, torch.float64)
        f32 = run(inputs, seg, window, softcap, torch.float32)
        err = max(rel_err(f32[n].double(), ref[n]) for n in ref)
        assert err < 1e-5, (name, err)

        tensors = dict(inputs)
        tensors.update({n: x.detach().float().contiguous() for n, x in ref.items()})
        if seg is not None:
            tensors["segment_ids"] = seg
        path = OUT / f"attn_{name}.safetensors"
        metadata = {"torch_version": torch.__version__, "seed": str(1000 + i)}
        if window is not None:
            metadata["window"] = str(window)
        if softcap is not None:
            metadata["softcap"] = str(softcap)
        save_file(tensors, path, metadata=metadata)
        print(f"{name:18} {path.stat().st_size / 1024:8.1f}  {err:.2e}")


if __name__ == "__main__":
    main()
