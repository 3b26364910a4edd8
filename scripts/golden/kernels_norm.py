"""Golden fixtures for the training kernels RMSNorm, RoPE and SwiGLU (crates/hone/src/kernels).

Each case runs transformers' own modules/functions under torch autograd in float32 (what a
PyTorch fine-tune computes) and again in float64, and saves inputs, the upstream gradient,
outputs and every gradient as float32 safetensors in fixtures/kernels/norm_<kernel>.safetensors.
Tensor names are `<case>.<name>`; float64 results carry a `64` suffix (`y64`, `dx64`, ...),
rounded to float32 for storage. The float64 RoPE reference reuses transformers' float32 cos/sin
tables (the tables are a defined float32 recipe; the kernel is judged on the rotation).

Cases:
  norm_rmsnorm:  LlamaRMSNorm. `tok` [2, 13, 64], eps 1e-5; `odd` [2, 41, 37], eps 1e-6, rows
                 scaled from 1e-3 to 1e3 and one all-zero row (82 rows: two full 32-row
                 blocks of the weight-gradient reduction plus a partial one). Also saves
                 `rstd` = rsqrt(mean(x^2) + eps) per row.
  norm_rope:     apply_rotary_pos_emb (rotate_half) on token-major [batch, seq, heads, head_dim]
                 (unsqueeze_dim=2) with LlamaRotaryEmbedding tables. `default`: theta 1e4,
                 4 heads, head_dim 16; `llama3`: theta 5e5, llama3 scaling (factor 8, low 1,
                 high 4, original 64: all three frequency bands), 2 heads, head_dim 16.
                 Positions are packed: they restart inside a row, and reach 140. `phi3-long`
                 and `phi3-short`: Phi3RotaryEmbedding and Phi-3's partial apply_rotary_pos_emb,
                 4 heads, head_dim 16, partial_rotary_factor 0.75 (12 of 16 dims rotate),
                 LongRoPE (original 64, max 256: attention factor ~1.15); the long case's
                 positions reach 140 (long factors), the short case's stay below 64. `glm`:
                 GlmRotaryEmbedding and GLM's interleaved apply_rotary_pos_emb (pairs (2i, 2i+1)
                 on the first half of each head), 4 heads, head_dim 16. Metadata
                 `<case>.config` is an HF config.json text giving the rope settings.
  norm_layernorm: torch.nn.functional.layer_norm with weight and bias (StarCoder2's norms):
                 `ln_tok` [2, 13, 64], eps 1e-5; `ln_odd` [2, 41, 37], eps 1e-6, rows scaled from
                 1e-3 to 1e3 and one constant row.
  norm_swiglu:   silu(gate) * up (LlamaMLP's act_fn(gate_proj) * up_proj) on [2, 7, 167],
                 gate spanning |x| up to 1e4 so the saturated ends of silu are exercised.
  norm_geglu:    gelu_pytorch_tanh(gate) * up (Gemma's MLP), the same shapes and extremes.

Run from the repository root:  OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/kernels_norm.py
"""

import json
from pathlib import Path

import safetensors
import torch
import transformers
from transformers import GlmConfig, LlamaConfig, Phi3Config
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)
from transformers.models.glm import modeling_glm
from transformers.models.phi3 import modeling_phi3

from models import save_golden  # sorted header keys, so reruns give identical bytes

OUT = Path(__file__).resolve().parents[2] / "fixtures" / "kernels"
META = {
    "transformers_version": transformers.__version__,
    "torch_version": torch.__version__,
    "safetensors_version": safetensors.__version__,
}


def rel_err(a, b):
    """max |a - b| / max(1, |b|) elementwise, the measure the Rust tests use."""
    a, b = a.double(), b.double()
    return ((a - b).abs() / b.abs().clamp(min=1.0)).max().item()


def grads(fn, inputs, dy, dtype):
    """fn's output and the gradients of <output, dy> w.r.t. each input, computed in `dtype`."""
    leaves = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    y.backward(dy.to(dtype))
    return y.detach(), [t.grad for t in leaves]


def record(tensors, report, case, names, inputs, dy, fn):
    """Store inputs, dy, float32 and float64 outputs and gradients under `case.`."""
    y32, g32 = grads(fn, inputs, dy, torch.float32)
    y64, g64 = grads(fn, inputs, dy, torch.float64)
    for name, t in zip(names, inputs):
        tensors[f"{case}.{name}"] = t
    tensors[f"{case}.dy"] = dy
    outs = [("y", y32, y64)] + [(f"d{n}", a, b) for n, a, b in zip(names, g32, g64)]
    for name, a, b in outs:
        tensors[f"{case}.{name}"] = a.float()
        tensors[f"{case}.{name}64"] = b.float()
        report.append((case, name, rel_err(a, b)))


def rmsnorm(tensors, report):
    gen = torch.Generator().manual_seed(11)
    for case, shape, eps in [("tok", (2, 13, 64), 1e-5), ("odd", (2, 41, 37), 1e-6)]:
        d = shape[-1]
        x = torch.randn(shape, generator=gen)
        if case == "odd":
            x *= torch.logspace(-3, 3, shape[1]).view(1, -1, 1)
            x[1, 7] = 0.0
        w = torch.rand(d, generator=gen) + 0.5
        dy = torch.randn(shape, generator=gen)

        def fn(x, w):
            if x.dtype == torch.float64:
                # LlamaRMSNorm casts to float32 inside, so the float64 reference spells it out.
                return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
            norm = LlamaRMSNorm(d, eps=eps)
            del norm.weight
            norm.weight = w
            return norm(x)

        record(tensors, report, case, ["x", "w"], [x, w], dy, fn)
        tensors[f"{case}.rstd"] = torch.rsqrt(x.pow(2).mean(-1) + eps).reshape(-1)
        tensors[f"{case}.eps"] = torch.tensor([eps], dtype=torch.float32)
    return {}


def layernorm(tensors, report):
    """torch's LayerNorm with weight and bias (StarCoder2's norms), rows of 64 and of 37 at scales
    from 1e-3 to 1e3 with a constant row."""
    gen = torch.Generator().manual_seed(19)
    for case, shape, eps in [("ln_tok", (2, 13, 64), 1e-5), ("ln_odd", (2, 41, 37), 1e-6)]:
        d = shape[-1]
        x = torch.randn(shape, generator=gen)
        if case == "ln_odd":
            x *= torch.logspace(-3, 3, shape[1]).view(1, -1, 1)
            x[1, 7] = 0.25
        w = torch.rand(d, generator=gen) + 0.5
        b = torch.randn(d, generator=gen) * 0.5
        dy = torch.randn(shape, generator=gen)
        fn = lambda x, w, b: torch.nn.functional.layer_norm(x, (d,), w, b, eps)
        record(tensors, report, case, ["x", "w", "b"], [x, w, b], dy, fn)
        tensors[f"{case}.eps"] = torch.tensor([eps], dtype=torch.float32)
    return {}


LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 5e5,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


# The shape of the families' rope cases: 4 heads of 16 (GLM's head_dim is explicit, Phi-3's
# derived), one layer.
ROPE_MODEL = dict(
    vocab_size=300,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def phi3_config():
    gen = torch.Generator().manual_seed(21)
    factors = lambda lo, hi: (lo + (hi - lo) * torch.rand(6, generator=gen)).tolist()
    return Phi3Config(
        architectures=["Phi3ForCausalLM"],
        **ROPE_MODEL,
        original_max_position_embeddings=64,
        partial_rotary_factor=0.75,
        rope_scaling={
            "type": "longrope",
            "short_factor": factors(1.0, 1.5),
            "long_factor": factors(1.0, 8.0),
        },
    )


def glm_config():
    return GlmConfig(architectures=["GlmForCausalLM"], **ROPE_MODEL, head_dim=16)


def rope(tensors, report):
    gen = torch.Generator().manual_seed(12)
    # Two packed rows: row 0 holds examples of 8 and 5 tokens, row 1 starts deep into a sequence.
    positions = torch.tensor([list(range(8)) + list(range(5)), list(range(128, 141))])
    meta = {}
    llama = lambda heads, rope_parameters: LlamaConfig(
        architectures=["LlamaForCausalLM"],
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=16,
        max_position_embeddings=256,
        rope_parameters=rope_parameters,
    )
    cases = [
        ("default", llama(4, {"rope_type": "default", "rope_theta": 1e4}), positions),
        ("llama3", llama(2, LLAMA3), positions),
        ("phi3-long", phi3_config(), positions),
        ("phi3-short", phi3_config(), positions % 64),
        ("glm", glm_config(), positions),
    ]
    modules = {
        "phi3": (modeling_phi3.Phi3RotaryEmbedding, modeling_phi3.apply_rotary_pos_emb),
        "glm": (modeling_glm.GlmRotaryEmbedding, modeling_glm.apply_rotary_pos_emb),
    }
    for case, cfg, positions in cases:
        heads = cfg.num_attention_heads
        rotary, apply = modules.get(case.split("-")[0], (LlamaRotaryEmbedding, apply_rotary_pos_emb))
        rot = rotary(cfg)
        if case == "llama3":
            default = 1.0 / (5e5 ** (torch.arange(0, 16, 2, dtype=torch.float) / 16))
            changed = (rot.inv_freq != default).sum().item()
            assert 0 < changed < 8, "llama3 scaling must change some but not all frequencies"
        x = torch.randn(2, 13, heads, 16, generator=gen)
        cos, sin = rot(x, positions)
        dy = torch.randn(x.shape, generator=gen)

        def fn(x):
            return apply(x, x, cos.to(x.dtype), sin.to(x.dtype), unsqueeze_dim=2)[0]

        record(tensors, report, case, ["x"], [x], dy, fn)
        tensors[f"{case}.positions"] = positions.reshape(-1).clone()
        # The [positions, rotary_dim / 2] tables Hone builds: the first half of transformers' rows,
        # as the forward over `positions` picks them (LongRoPE: short or long for the whole call).
        table_pos = torch.arange(positions.max() + 1).view(1, -1)
        tcos, tsin = rot(x, table_pos)
        pairs = tcos.shape[-1] // 2
        tensors[f"{case}.cos"] = tcos[0, :, :pairs].contiguous()
        tensors[f"{case}.sin"] = tsin[0, :, :pairs].contiguous()
        meta[f"{case}.config"] = cfg.to_json_string()
    return meta


def gated(case, activation, seed):
    """act(gate) * up for one of transformers' activations, on [2, 7, 167] with extreme gates."""

    def build(tensors, report):
        gen = torch.Generator().manual_seed(seed)
        shape = (2, 7, 167)
        gate = torch.randn(shape, generator=gen) * 3
        gate.view(-1)[:8] = torch.tensor([-1e4, -100.0, -88.0, -30.0, 30.0, 88.0, 100.0, 1e4])
        up = torch.randn(shape, generator=gen)
        dy = torch.randn(shape, generator=gen)
        act = transformers.activations.ACT2FN[activation]
        record(tensors, report, case, ["gate", "up"], [gate, up], dy, lambda g, u: act(g) * u)
        return {}

    return build


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    report = []
    builds = [
        ("rmsnorm", rmsnorm),
        ("layernorm", layernorm),
        ("rope", rope),
        ("swiglu", gated("swiglu", "silu", 13)),
        ("geglu", gated("geglu", "gelu_pytorch_tanh", 17)),
    ]
    for name, build in builds:
        tensors = {}
        meta = build(tensors, report)
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        path = OUT / f"norm_{name}.safetensors"
        save_golden(tensors, path, metadata={**META, **meta})
        print(f"{path.relative_to(OUT.parents[1])}: {path.stat().st_size} bytes")
    print("torch float32 vs float64, max |a - b| / max(1, |b|):")
    for case, name, err in report:
        print(f"  {case:8} {name:6} {err:.2e}")
        assert err < 1e-5, f"{case}.{name}: float32 reference is off by {err}"


if __name__ == "__main__":
    main()
