"""Write the golden fixtures Hone's forward-pass tests compare against.

Part A builds tiny random Llama-family models with transformers, saves them as HF
directories under fixtures/models/<name>/ and records their logits (full and
KV-cached), plus a short greedy generation. Part B runs the real default model
(SmolLM2-135M-Instruct Q4_1 GGUF) through transformers and records logits, greedy
generations, a perplexity figure and the config transformers derives from the GGUF.

Everything is float32 on CPU with eager attention and fixed seeds, so reruns give the
same numbers. Run from the repository root:

    OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/models.py [--only tiny|smollm2]
"""

import argparse
import json
import math
import os
import shutil
import struct
from pathlib import Path

import safetensors
import torch
import transformers
from safetensors.torch import save as safetensors_bytes
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    SiglipVisionConfig,
    Phi3Config,
    Phi3ForCausalLM,
    GlmConfig,
    GlmForCausalLM,
    Glm4Config,
    Glm4ForCausalLM,
    SmolLM3Config,
    Starcoder2Config,
    Starcoder2ForCausalLM,
    SmolLM3ForCausalLM,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
GGUF_DIR = Path(os.environ.get("HONE_MODEL_DIR", ROOT / "models"))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

SEQ_LEN = 11
PREFILL = 6  # tokens fed at once before the one-by-one KV-cache steps
GREEDY_PROMPT_LEN = 5
GREEDY_NEW_TOKENS = 8
# Incremental and full forwards differ only by float32 reduction order.
STEP_TOL = 1e-5
# Tiny-model greedy fixtures must not hinge on near-ties that float32 rounding in
# another implementation could flip.
GREEDY_MIN_MARGIN = 1e-3

VERSIONS = {
    "transformers_version": transformers.__version__,
    "torch_version": torch.__version__,
    "safetensors_version": safetensors.__version__,
}

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # With head_dim 16 and theta 5e5 the rotary wavelengths are 6.3, 32.4, 167, ...
    # tokens; 64 puts them in all three llama3 bands (kept < 16, smoothed 16..64,
    # divided by `factor` > 64), so every branch of the scaling is exercised.
    "original_max_position_embeddings": 64,
}

COMMON = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    attn_implementation="eager",
    max_position_embeddings=256,
)

GQA = dict(
    COMMON,
    vocab_size=128,
    intermediate_size=80,
    num_key_value_heads=2,
    # Explicit head_dim with heads * head_dim (64) != hidden_size (32), so a loader
    # that derives head_dim from hidden_size / heads gets it wrong.
    head_dim=16,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)

MISTRAL = dict(
    COMMON,
    vocab_size=112,
    intermediate_size=96,
    num_key_value_heads=2,
    head_dim=8,
    rms_norm_eps=1e-5,
    rope_theta=1000000.0,
    tie_word_embeddings=False,
)

QWEN2 = dict(
    COMMON,
    vocab_size=160,
    intermediate_size=64,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    rope_theta=1000000.0,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
)

GEMMA3 = dict(
    GQA,
    tie_word_embeddings=True,
    sliding_window=4,
    rope_parameters={
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    },
    bos_token_id=2,
    eos_token_id=1,
    pad_token_id=0,
)

# Phi-3 keeps head_dim = hidden / heads (llama.cpp's phi3 derives it so): 16.
PHI3 = dict(
    COMMON,
    hidden_size=64,
    vocab_size=128,
    intermediate_size=80,
    num_key_value_heads=2,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)


def longrope(seed, original, pairs):
    """LongRoPE settings: `pairs` (rotary_dim / 2) short and long factors, random."""
    gen = torch.Generator().manual_seed(seed)
    factors = lambda lo, hi: [round(f, 4) for f in (lo + (hi - lo) * torch.rand(pairs, generator=gen)).tolist()]
    return dict(
        original_max_position_embeddings=original,
        rope_scaling={"type": "longrope", "short_factor": factors(1.0, 1.5), "long_factor": factors(1.0, 8.0)},
    )


# name -> (model class, config, seed, save options)
TINY_MODELS = {
    "llama-tied": (
        LlamaForCausalLM,
        LlamaConfig(
            **COMMON,
            vocab_size=96,
            intermediate_size=88,
            num_key_value_heads=4,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
        ),
        101,
        {},
    ),
    "llama-gqa": (
        LlamaForCausalLM,
        LlamaConfig(**GQA, rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE)),
        102,
        {},
    ),
    "mistral": (
        MistralForCausalLM,
        MistralConfig(**MISTRAL, sliding_window=None),
        103,
        {},
    ),
    "qwen2": (
        Qwen2ForCausalLM,
        Qwen2Config(**QWEN2, use_sliding_window=False),
        104,
        {},
    ),
    # Qwen3: per-head q/k RMSNorm before RoPE, no biases (as released; llama.cpp's qwen3 graph
    # has no o_proj bias either), explicit head_dim with heads * head_dim != hidden_size.
    "qwen3": (
        Qwen3ForCausalLM,
        Qwen3Config(
            **GQA,
            rope_theta=1000000.0,
            attention_bias=False,
            use_sliding_window=False,
            bos_token_id=1,
            eos_token_id=2,
        ),
        108,
        {},
    ),
    # SmolLM3: every 4th layer has no rotary embedding (no_rope_layers [1, 1, 1, 0], the default
    # pattern, which is also the only one llama.cpp's smollm3 arch runs), tied, rope_theta 2e6.
    "smollm3": (
        SmolLM3ForCausalLM,
        SmolLM3Config(
            **dict(GQA, num_hidden_layers=4, tie_word_embeddings=True),
            rope_theta=2000000.0,
            use_sliding_window=False,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
        ),
        109,
        {},
    ),
    # Granite 3: embeddings x12, attention scale 1/16 instead of 1/sqrt(head_dim), each branch x0.22
    # before the residual add, logits / 8; q/k/v/o biases (attention_bias), tied.
    "granite": (
        GraniteForCausalLM,
        GraniteConfig(
            **dict(GQA, tie_word_embeddings=True),
            rope_theta=5000000.0,
            embedding_multiplier=12.0,
            attention_multiplier=0.0625,
            residual_multiplier=0.22,
            logits_scaling=8.0,
            attention_bias=True,
            bos_token_id=1,
            eos_token_id=2,
        ),
        110,
        {},
    ),
    # OLMo 2: norms after each branch instead of before (post_attention_layernorm,
    # post_feedforward_layernorm), RMSNorm over the whole q and k rows before RoPE, untied;
    # heads * head_dim = hidden_size, as in released models (llama.cpp's olmo2 requires it).
    "olmo2": (
        Olmo2ForCausalLM,
        Olmo2Config(
            **dict(GQA, head_dim=8),
            rope_theta=500000.0,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=None,
        ),
        111,
        {},
    ),
    # Sliding-window attention shorter than the test sequence (11 tokens, 6 prefilled): Mistral
    # windows every layer; Qwen2 only the layers from max_window_layers on (layer 1 here).
    "mistral-window": (
        MistralForCausalLM,
        MistralConfig(**MISTRAL, sliding_window=4),
        112,
        {},
    ),
    "qwen2-window": (
        Qwen2ForCausalLM,
        Qwen2Config(**QWEN2, use_sliding_window=True, sliding_window=3, max_window_layers=1),
        113,
        {},
    ),
    # Gemma 3 (text): (1 + w) RMSNorms before and after each branch and on q/k per head, GeGLU
    # with tanh GELU, embeddings x sqrt(hidden), attention scale 1/sqrt(query_pre_attn_scalar),
    # sliding (window 4, rope base 1e4) and full layers (rope base 1e6, linear scaling x8).
    "gemma3": (
        Gemma3ForCausalLM,
        Gemma3TextConfig(
            **dict(GEMMA3, num_hidden_layers=4),
            query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        ),
        114,
        {},
    ),
    # Gemma 3 as llama.cpp's gemma3 runs it (every 6th layer global, query_pre_attn_scalar =
    # head_dim, local rope base 1e4), for the GGUF round trip.
    "gemma3-gguf": (
        Gemma3ForCausalLM,
        Gemma3TextConfig(**dict(GEMMA3, num_hidden_layers=6), query_pre_attn_scalar=16),
        115,
        {},
    ),
    # Gemma 3 as its 4B+ checkpoints ship, Gemma3ForConditionalGeneration: the language model above
    # (2 layers) beside a tiny SigLIP vision tower and projector that Hone leaves out; saved with the
    # checkpoints' `language_model.model.*` names. The image token ids (125-127) are in the vocabulary
    # but not in the test ids.
    "gemma3-mm": (
        Gemma3ForConditionalGeneration,
        Gemma3Config(
            text_config=Gemma3TextConfig(
                **{k: v for k, v in GEMMA3.items() if k != "attn_implementation"},
                query_pre_attn_scalar=24,
                layer_types=["sliding_attention", "full_attention"],
            ),
            vision_config=SiglipVisionConfig(
                hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                image_size=28, patch_size=14,
            ),
            mm_tokens_per_image=4,
            boi_token_index=125,
            eoi_token_index=126,
            image_token_index=127,
            attn_implementation="eager",
        ),
        121,
        {},
    ),
    # Gemma 2: sandwich (1 + w) norms, GeGLU, alternating sliding (window 4) and global layers,
    # attention and final logit soft-capping (small caps, so they bend these logits), embeddings x
    # sqrt(hidden); query_pre_attn_scalar = head_dim, as llama.cpp's gemma2 assumes.
    "gemma2": (
        Gemma2ForCausalLM,
        Gemma2Config(
            **dict(GQA, num_hidden_layers=4, tie_word_embeddings=True),
            query_pre_attn_scalar=16,
            sliding_window=4,
            attn_logit_softcapping=2.0,
            final_logit_softcapping=3.0,
            rope_theta=10000.0,
            bos_token_id=2,
            eos_token_id=1,
            pad_token_id=0,
        ),
        116,
        {},
    ),
    # Phi-3 / Phi-4-mini: fused qkv_proj and gate_up_proj, partial rotary (12 of 16 dims, as
    # Phi-4-mini's 0.75), LongRoPE whose short factors serve the 11-token test (original 64), a
    # sliding window of 4 on every layer, tied (Phi-4-mini).
    "phi3": (
        Phi3ForCausalLM,
        Phi3Config(
            **dict(PHI3, tie_word_embeddings=True),
            partial_rotary_factor=0.75,
            sliding_window=4,
            **longrope(117, 64, pairs=6),
        ),
        117,
        {},
    ),
    # Phi-3.5-mini-like: full rotary, LongRoPE with an original context of 4, so every forward of
    # the test (6 prefilled tokens, then steps) reaches past it and rotates with the long factors.
    "phi3-long": (
        Phi3ForCausalLM,
        Phi3Config(**dict(PHI3, tie_word_embeddings=False), **longrope(118, 4, pairs=8)),
        118,
        {},
    ),
    # GLM-4 (glm-4-9b-hf): q/k/v biases, no o_proj bias, fused gate_up_proj, interleaved rotary pairs
    # on the first half of each head (partial_rotary_factor 0.5, the class default), GQA 4/2; heads ×
    # head_dim = hidden, as in released models (llama.cpp's chatglm requires it).
    "glm": (
        GlmForCausalLM,
        GlmConfig(**dict(GQA, head_dim=8), rope_theta=10000.0, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        119,
        {},
    ),
    # GLM-4-0414: GLM plus norms after each branch (post_self_attn_layernorm, post_mlp_layernorm).
    "glm4": (
        Glm4ForCausalLM,
        Glm4Config(**GQA, rope_theta=10000.0, bos_token_id=1, eos_token_id=2, pad_token_id=0),
        120,
        {},
    ),
    # StarCoder2: LayerNorms with biases, an ungated GELU MLP (c_fc, c_proj), biases on every linear
    # layer (use_bias), a sliding window of 4 on every layer, GQA 4/2, tied.
    "starcoder2": (
        Starcoder2ForCausalLM,
        Starcoder2Config(
            **dict(COMMON, num_hidden_layers=2),
            vocab_size=128,
            intermediate_size=80,
            num_key_value_heads=2,
            sliding_window=4,
            use_bias=True,
            norm_epsilon=1e-5,
            rope_theta=100000.0,
            tie_word_embeddings=True,
            bos_token_id=1,
            eos_token_id=2,
        ),
        122,
        {},
    ),
    # Llama 3.2 (1B/3B): llama3 rope scaling with factor 32, tied embeddings.
    "llama32": (
        LlamaForCausalLM,
        LlamaConfig(
            **dict(GQA, tie_word_embeddings=True),
            rope_theta=500000.0,
            rope_scaling=dict(LLAMA3_ROPE, factor=32.0),
        ),
        130,
        {},
    ),
    # CodeLlama: rope_theta 1e6 over a 16k context.
    "codellama": (
        LlamaForCausalLM,
        LlamaConfig(**dict(GQA, max_position_embeddings=16384), rope_theta=1000000.0),
        131,
        {},
    ),
    "llama-sharded": (
        LlamaForCausalLM,
        LlamaConfig(**GQA, rope_theta=500000.0, rope_scaling=dict(LLAMA3_ROPE)),
        105,
        {"max_shard_size": "60KB", "classic_rope_json": True},
    ),
    "llama-f16": (
        LlamaForCausalLM,
        LlamaConfig(**GQA, rope_theta=10000.0),
        106,
        {"dtype": torch.float16},
    ),
    "llama-bf16": (
        LlamaForCausalLM,
        LlamaConfig(**GQA, rope_theta=10000.0),
        107,
        {"dtype": torch.bfloat16},
    ),
}


def randomize(model, seed, is_norm=lambda name: name.endswith("norm.weight")):
    """Replace transformers' init (std 0.02, unit norms, zero biases) with values that
    make every weight matter: norm weights away from 1, non-zero biases, and matrices
    (embeddings included, since tied ones double as the LM head) scaled by
    1/sqrt(columns) so logits are O(1): varied, but not so peaked that argmax hides
    errors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if is_norm(name):
                value = 0.5 + torch.rand(param.shape, generator=gen)
            elif name.endswith(".bias") or param.dim() < 2:
                # Biases and the vision tower's other vectors (its projector's norm included).
                value = 0.5 * torch.randn(param.shape, generator=gen)
            else:
                value = torch.randn(param.shape, generator=gen) / math.sqrt(param.shape[1])
            param.copy_(value)


def save_golden(tensors, path, metadata):
    """Write a safetensors file with the JSON header's keys sorted: the library writes
    __metadata__ in hash order, which would make every rerun a spurious diff."""
    blob = safetensors_bytes(tensors, metadata=metadata)
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_len])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8-byte alignment
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + header_len :])


def golden_ids(vocab, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (2, SEQ_LEN), generator=gen, dtype=torch.int64)
    # A run of identical tokens checks that positions, not token identity, drive RoPE
    # and the causal mask.
    ids[1, 1:4] = ids[1, 0]
    return ids


@torch.no_grad()
def full_logits(model, ids):
    return model(ids, use_cache=False).logits.float()


@torch.no_grad()
def step_logits(model, ids):
    # transformers 5.24 names the KV cache `cache` (formerly `past_key_values`).
    out = model(ids[:, :PREFILL], use_cache=True)
    cache = out.cache
    chunks = [out.logits]
    for pos in range(PREFILL, ids.shape[1]):
        out = model(ids[:, pos : pos + 1], cache=cache, use_cache=True)
        cache = out.cache
        chunks.append(out.logits)
    return torch.cat(chunks, dim=1).float()


@torch.no_grad()
def manual_greedy(model, prompt, new_tokens, eos_id=None):
    """Greedy decoding by full re-forward each step, as an independent check of generate.
    Also returns each step's top-1 minus top-2 logit gap: an implementation whose logits
    are that close to these may pick a different token at that step."""
    ids = prompt.clone()
    produced = []
    margins = []
    for _ in range(new_tokens):
        top2 = model(ids, use_cache=False).logits[0, -1].float().topk(2)
        nxt = top2.indices[0].item()
        margins.append((top2.values[0] - top2.values[1]).item())
        produced.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        if eos_id is not None and nxt == eos_id:
            break
    return produced, margins


@torch.no_grad()
def generate_greedy(model, prompt, generation_config):
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        generation_config=generation_config,
    )
    return out[0, prompt.shape[1] :].tolist()


def load_fp32(path):
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()


def to_classic_rope_json(path):
    """Rewrite config.json the way pre-v5 transformers wrote it: top-level rope_theta
    and rope_scaling instead of the nested rope_parameters."""
    config_path = path / "config.json"
    config = json.loads(config_path.read_text())
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def check_llama3_scaling(model):
    config = model.config
    head_dim = config.head_dim
    theta = config.rope_parameters["rope_theta"]
    plain = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    scaled = model.model.rotary_emb.inv_freq.float()
    changed = int((~torch.isclose(plain, scaled)).sum())
    assert 0 < changed < plain.numel(), "llama3 scaling should change some, not all, freqs"


def dir_size(path):
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def write_greedy(out_dir, prompt, greedy, margins):
    """greedy.json: the prompt, the greedy ids after it, and each step's top-2 logit margin."""
    greedy_doc = {
        "prompt_ids": prompt[0].tolist(),
        "new_ids": greedy,
        "max_new_tokens": GREEDY_NEW_TOKENS,
        "eos_stop": False,
        "min_top2_logit_margin": min(margins),
        "top2_logit_margins": margins,
        **VERSIONS,
    }
    (out_dir / "greedy.json").write_text(json.dumps(greedy_doc, indent=2) + "\n")


def build_tiny(name, cls, config, seed, opts):
    out_dir = FIXTURES / "models" / name
    shutil.rmtree(out_dir, ignore_errors=True)
    torch.manual_seed(seed)
    model = cls(config).eval()
    randomize(model, seed)
    # A multimodal class keeps its language model's settings in text_config.
    text = config.get_text_config()
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id, eos_token_id=text.eos_token_id
    )
    dtype = opts.get("dtype")
    # Module.to converts in place, so `model` is only reused below when dtype is None.
    to_save = model.to(dtype) if dtype is not None else model
    to_save.save_pretrained(out_dir, max_shard_size=opts.get("max_shard_size", "50GB"))
    if opts.get("classic_rope_json"):
        to_classic_rope_json(out_dir)
    if opts.get("max_shard_size"):
        shards = sorted(out_dir.glob("model-*-of-*.safetensors"))
        assert len(shards) >= 2 and (out_dir / "model.safetensors.index.json").exists()

    # Goldens come from the saved files read back as float32: that is what Hone loads,
    # including the rounding of f16/bf16 weights and the rewritten config.json.
    reloaded = load_fp32(out_dir)
    if dtype is None:
        for (n1, p1), (n2, p2) in zip(
            model.state_dict().items(), reloaded.state_dict().items(), strict=True
        ):
            assert n1 == n2 and torch.equal(p1, p2), f"{name}: {n1} changed on reload"
    if text.rope_parameters.get("rope_type") == "llama3":
        check_llama3_scaling(reloaded)

    # Below a multimodal class's image tokens, which its forward treats apart.
    ids = golden_ids(getattr(config, "boi_token_index", text.vocab_size), seed)
    logits = full_logits(reloaded, ids)
    logits_step = step_logits(reloaded, ids)
    step_diff = (logits - logits_step).abs().max().item()
    assert step_diff < STEP_TOL, f"{name}: KV-cache logits differ by {step_diff}"
    if dtype is None:
        in_memory = full_logits(model, ids)
        assert torch.equal(in_memory, logits), f"{name}: reloaded model computes differently"

    metadata = dict(
        VERSIONS,
        model=name,
        seed=str(seed),
        prefill=str(PREFILL),
        note=(
            "logits: one full forward; logits_step: prefill then one token at a time "
            "with the KV cache"
        ),
    )
    tensors = {"input_ids": ids, "logits": logits, "logits_step": logits_step}
    save_golden(
        {k: v.contiguous() for k, v in tensors.items()},
        out_dir / "golden.safetensors",
        metadata=metadata,
    )

    prompt = ids[:1, :GREEDY_PROMPT_LEN]
    no_eos = GenerationConfig(
        do_sample=False,
        max_new_tokens=GREEDY_NEW_TOKENS,
        eos_token_id=None,
        pad_token_id=0,
    )
    greedy = generate_greedy(reloaded, prompt, no_eos)
    manual, margins = manual_greedy(reloaded, prompt, GREEDY_NEW_TOKENS)
    margin = min(margins)
    assert len(greedy) == GREEDY_NEW_TOKENS
    assert greedy == manual, f"{name}: generate != argmax loop"
    assert margin > GREEDY_MIN_MARGIN, f"{name}: greedy near-tie ({margin}), pick another seed"
    write_greedy(out_dir, prompt, greedy, margins)
    return {
        "name": name,
        "vocab": text.vocab_size,
        "files": len(list(out_dir.iterdir())),
        "kb": dir_size(out_dir) / 1024,
        "step_diff": step_diff,
        "margin": margin,
    }


# ---------------------------------------------------------------- SmolLM2 (part B)

PLAIN_PROMPT = (
    "The old lighthouse keeper climbed the narrow stairs every evening to light the great lamp "
    "for the passing ships."
)
# An explicit short system turn keeps the template from injecting its long default one.
CHAT_CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Can you help me plan a picnic?"},
    {"role": "assistant", "content": "Sure! Where?"},
    {"role": "user", "content": "Near a lake."},
]
GREEDY_QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    # Not "用一句话介绍你自己。": its first greedy token wins by a 2e-4 logit gap, too close
    # for another float32 implementation to reproduce reliably. This wording's smallest
    # gap is ~0.09, and it answers in Chinese, which exercises byte-level decoding.
    "请用一句话介绍你自己。",
]
SMOL_NEW_TOKENS = 32
PPL_MAX_TOKENS = 256
PPL_TEXTS = [
    "The river wound slowly through the valley, carrying fallen leaves past the sleeping "
    "village. On its banks, children built small boats from bark and watched them drift "
    "toward the sea.",
    "Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide "
    "to produce glucose and oxygen. It takes place mainly in the leaves, inside the chloroplasts.",
    "To bake simple bread, mix flour, water, salt and yeast, knead the dough for ten minutes, "
    "let it rise for an hour, then bake it in a hot oven until the crust is golden brown.",
    "The committee met on Tuesday to review the budget. After a long discussion, the members "
    "agreed to postpone the decision until more information about the costs was available.",
    "A computer program is a sequence of instructions that a machine can execute. Programmers "
    "write these instructions in languages such as Python, C or Rust, and compilers translate "
    "them.",
    "In 1969, two astronauts walked on the surface of the Moon for the first time, while a third "
    "orbited above them. Millions of people around the world watched the event on television.",
    "春天来了，公园里的花都开了。孩子们在草地上放风筝，老人们坐在长椅上聊天，空气中弥漫着花香。",
    # Long enough to exceed PPL_MAX_TOKENS, so the truncation rule is exercised.
    "The history of writing begins with simple marks pressed into clay. Early scribes in "
    "Mesopotamia used small wedge-shaped signs to record harvests, debts and trades, and over "
    "many centuries these signs grew into a full system able to express laws, letters and poems. "
    "In Egypt, a different tradition developed, combining pictures with sounds, carved on temple "
    "walls and painted on papyrus. Much later, traders along the Mediterranean coast simplified "
    "the idea further: instead of hundreds of signs, they used a short list of letters, each "
    "standing for a single sound. This alphabet travelled from port to port, was adopted by the "
    "Greeks, who added vowels, and then by the Romans, whose letters are still used by many "
    "languages today. Each step made writing easier to learn, and as more people could read, "
    "ideas spread faster than ever before. Printing presses, typewriters and finally computers "
    "continued the same story, turning a rare skill guarded by a few specialists into an "
    "everyday tool shared by billions of people across every continent, in schools, offices, "
    "homes and on the small glowing screens that most of us now carry in our pockets all day. "
    "Yet the basic idea has not changed at all since those first marks in clay: a person makes a "
    "visible sign, and another person, perhaps far away or many years later, understands it.",
]


def load_smollm2():
    tok = AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(
        GGUF_DIR, gguf_file=GGUF_NAME, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return tok, model


def chat_ids(tok, messages, add_generation_prompt):
    text = tok.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    ids = tok(text, add_special_tokens=False).input_ids
    direct = tok.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True
    )["input_ids"]
    assert ids == list(direct), "chat template tokenization is ambiguous"
    return ids


@torch.no_grad()
def smol_logits(tok, model, out_dir):
    prompts = {
        "plain": tok(PLAIN_PROMPT).input_ids,
        "chat": chat_ids(tok, CHAT_CONVERSATION, add_generation_prompt=True),
    }
    tensors = {}
    summary = {}
    for key, ids in prompts.items():
        ids_t = torch.tensor([ids], dtype=torch.int64)
        logits = model(ids_t, use_cache=False).logits[0].float()
        n = len(ids)
        positions = torch.tensor([0, n // 2, n - 1], dtype=torch.int64)
        tensors[f"{key}.input_ids"] = ids_t[0]
        tensors[f"{key}.positions"] = positions
        tensors[f"{key}.logits"] = logits[positions].contiguous()
        top2 = logits.topk(2, dim=-1).values
        tensors[f"{key}.argmax"] = logits.argmax(dim=-1)
        # Lets a test tell a real argmax mismatch from a near-tie flipped by rounding.
        tensors[f"{key}.argmax_margin"] = (top2[:, 0] - top2[:, 1]).contiguous()
        summary[key] = n
    metadata = dict(
        VERSIONS,
        model=GGUF_NAME,
        plain_prompt=PLAIN_PROMPT,
        chat_conversation=json.dumps(CHAT_CONVERSATION, ensure_ascii=False),
        note=(
            "<p>.logits are rows of the full logits at <p>.positions; <p>.argmax covers every "
            "position, <p>.argmax_margin is its top-1 minus top-2 logit gap"
        ),
    )
    save_golden(tensors, out_dir / "logits.safetensors", metadata=metadata)
    return summary


@torch.no_grad()
def smol_greedy(tok, model, out_dir):
    eos = model.generation_config.eos_token_id
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=SMOL_NEW_TOKENS,
        eos_token_id=eos,
        pad_token_id=model.generation_config.pad_token_id,
    )
    rows = []
    for question in GREEDY_QUESTIONS:
        ids = chat_ids(tok, [{"role": "user", "content": question}], add_generation_prompt=True)
        prompt = torch.tensor([ids], dtype=torch.int64)
        new_ids = generate_greedy(model, prompt, config)
        manual, margins = manual_greedy(model, prompt, SMOL_NEW_TOKENS, eos)
        assert new_ids == manual, f"{question}: generate != argmax loop"
        rows.append(
            {
                "question": question,
                "prompt_ids": ids,
                "new_ids": new_ids,
                "stopped_at_eos": new_ids[-1] == eos,
                "min_top2_logit_margin": min(margins),
                "top2_logit_margins": margins,
                "text": tok.decode(new_ids, skip_special_tokens=True),
            }
        )
    doc = {
        "model": GGUF_NAME,
        "max_new_tokens": SMOL_NEW_TOKENS,
        "eos_token_id": eos,
        "note": (
            "chat template, single user turn, add_generation_prompt=True; new_ids include the EOS "
            "when generated; top2_logit_margins[i] is the top-1 minus top-2 logit gap when "
            "choosing new_ids[i]: a step with a tiny gap can flip under float32 rounding, and "
            "every later token with it"
        ),
        **VERSIONS,
        "prompts": rows,
    }
    (out_dir / "greedy.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return [
        (r["question"], len(r["new_ids"]), r["stopped_at_eos"], r["min_top2_logit_margin"])
        for r in rows
    ]


@torch.no_grad()
def smol_perplexity(tok, model, out_dir):
    with open(out_dir / "ppl.jsonl", "w", encoding="utf-8") as f:
        for text in PPL_TEXTS:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    adds_bos = tok("a").input_ids[0] == tok.bos_token_id
    rows = []
    total_nll = 0.0
    total_pred = 0
    for text in PPL_TEXTS:
        raw = tok(text).input_ids
        ids = torch.tensor([raw[:PPL_MAX_TOKENS]], dtype=torch.int64)
        logits = model(ids, use_cache=False).logits[0].float()
        logprobs = torch.log_softmax(logits[:-1], dim=-1)
        nll = -logprobs.gather(1, ids[0, 1:, None])[:, 0]
        row_nll = nll.double().sum().item()
        hf_loss = model(ids, labels=ids, use_cache=False).loss.item()
        assert abs(hf_loss - row_nll / nll.numel()) < 1e-4, "row NLL != transformers' loss"
        rows.append(
            {
                "n_tokens_raw": len(raw),
                "n_tokens": ids.shape[1],
                "n_predicted": nll.numel(),
                "nll_sum": row_nll,
                "transformers_loss": hf_loss,
            }
        )
        total_nll += row_nll
        total_pred += nll.numel()
    mean_nll = total_nll / total_pred
    doc = {
        "model": GGUF_NAME,
        "dataset": "ppl.jsonl",
        "definition": (
            "each row tokenized with add_special_tokens=True, truncated to max_tokens; "
            "NLL of every token after the first of each row; mean over all predicted tokens "
            "of all rows; perplexity = exp(mean_nll)"
        ),
        "add_special_tokens_adds_bos": adds_bos,
        "max_tokens": PPL_MAX_TOKENS,
        "mean_nll": mean_nll,
        "perplexity": math.exp(mean_nll),
        "n_tokens_predicted": total_pred,
        "rows": rows,
        **VERSIONS,
    }
    (out_dir / "perplexity.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc


def smol_config(model, out_dir):
    config = model.config.to_dict()
    # The local directory the GGUF was read from; dropped so reruns elsewhere match.
    config.pop("_name_or_path", None)
    summary = {
        "hidden_size": config["hidden_size"],
        "num_hidden_layers": config["num_hidden_layers"],
        "num_attention_heads": config["num_attention_heads"],
        "num_key_value_heads": config["num_key_value_heads"],
        "head_dim": config["head_dim"],
        "intermediate_size": config["intermediate_size"],
        "rope_theta": config["rope_parameters"]["rope_theta"],
        "rope_type": config["rope_parameters"]["rope_type"],
        "rms_norm_eps": config["rms_norm_eps"],
        "vocab_size": config["vocab_size"],
        "tie_word_embeddings": config["tie_word_embeddings"],
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
    }
    doc = {"summary": summary, "config": config}
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    (out_dir / "config_from_gguf.json").write_text(text)
    return summary


def build_smollm2():
    out_dir = FIXTURES / "smollm2"
    out_dir.mkdir(parents=True, exist_ok=True)
    tok, model = load_smollm2()
    lengths = smol_logits(tok, model, out_dir)
    greedy = smol_greedy(tok, model, out_dir)
    ppl = smol_perplexity(tok, model, out_dir)
    summary = smol_config(model, out_dir)
    return lengths, greedy, ppl, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["tiny", "smollm2"])
    parser.add_argument(
        "--models", nargs="+", choices=list(TINY_MODELS), help="tiny models to rebuild (default: all)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    if args.only in (None, "tiny"):
        print(
            f"{'model':<14} {'vocab':>5} {'files':>5} {'KB':>7} "
            f"{'max|full-step|':>14} {'greedy margin':>13}"
        )
        for name, (cls, config, seed, opts) in TINY_MODELS.items():
            if args.models and name not in args.models:
                continue
            row = build_tiny(name, cls, config, seed, opts)
            print(
                f"{row['name']:<14} {row['vocab']:>5} {row['files']:>5} {row['kb']:>7.1f} "
                f"{row['step_diff']:>14.2e} {row['margin']:>13.4f}"
            )
    if args.only in (None, "smollm2"):
        lengths, greedy, ppl, summary = build_smollm2()
        print(f"\nsmollm2 logits prompts (tokens): {lengths}")
        for question, n_new, eos, margin in greedy:
            print(
                f"  greedy {question!r}: {n_new} new tokens, eos={eos}, "
                f"min top-2 margin {margin:.4f}"
            )
        print(
            f"  perplexity {ppl['perplexity']:.4f} (mean NLL {ppl['mean_nll']:.5f}, "
            f"{ppl['n_tokens_predicted']} predicted, "
            f"adds BOS: {ppl['add_special_tokens_adds_bos']})"
        )
        print(f"  config: {summary}")


if __name__ == "__main__":
    main()
