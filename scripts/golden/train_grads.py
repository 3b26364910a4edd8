"""Golden fixtures for Hone's training engine: whole-model losses, logits and gradients from
transformers + PEFT, for LoRA, full fine-tuning and freezing, and a few AdamW steps.

Writes fixtures/train/<case>.safetensors, each with
  input_ids int64 [b, t], labels int64 [b, t] (HF convention: unshifted, -100 = no loss),
  loss [1] (mean over labelled next-token predictions), logits [b, t, vocab] (or a slice),
  init.<name> (LoRA A and B as the test must load them; B is random so A's gradient is not 0),
  grad.<name> for every trainable tensor, named as Hone names them: HF names for base tensors,
  `<module>.lora_A.weight` / `.lora_B.weight` for adapters (PEFT's key minus
  `base_model.model.` and the adapter name).
Metadata "case" holds the JSON description of the case (model, method, LoRA settings, ...).

The references are computed in float64 (the float32 gap is printed), so the tests' 1e-4 relative
tolerance measures Hone against the exact result. The AdamW case runs in float32, as Hone does:
  steps.<k>.<name> (parameters after step k = 1..3) and losses [3].

Cases: LoRA (all-linear, r=4, alpha=8) with and without prompt masking on every tiny architecture
(llama tied, llama GQA + llama3 rope, mistral, qwen2 with q/k/v bias and bias="all", qwen3 with
q/k norms, smollm3 with a NoPE layer, granite with its multipliers and q/k/v/o biases, olmo2 with norms
after the branches and full-width q/k norms, qwen2 with a sliding window on one layer, gemma2 with soft-capped attention and logits, gemma3 with
sandwich (1 + w) norms, GeGLU, sliding and global layers rotating differently, phi3 with fused
qkv_proj/gate_up_proj adapters, partial rotary, LongRoPE's short factors and a window, phi3-long
with its long factors, Gemma 3's language model inside its multimodal checkpoint (targets that
leave the vision tower alone), glm and glm4 with interleaved partial rotary, q/k/v biases and (glm4) norms
after the branches, starcoder2 with LayerNorms, biases and its ungated GELU MLP), full
fine-tuning of a Mistral whose every layer has a sliding window, rsLoRA on q,v; full fine-tuning (llama GQA, tied llama, qwen3,
whose q/k norm weights train, smollm3, granite, olmo2, gemma2, gemma3, phi3, glm4, starcoder2, whose LayerNorm biases train); freezing (last layer's MLP + final norm);
IA3 (PEFT's default targets on llama GQA and qwen2, Phi-3's fused projections); LoRA started from
the weight (OLoRA, PiSSA) on llama GQA;
DoRA (all-linear on llama GQA and phi3, with bias="all" on qwen2, q,v on the default model's slice; its
magnitudes moved off their initial weight norms);
3 AdamW steps of LoRA with clipping, and of LoRA+'s groups (LLaMA-Factory's) on a DoRA adapter with biases;
the remote-code families (ChatGLM3, Baichuan 2 7B and 13B, Qwen v1; their modeling files as
scripts/golden/remote_models.py finds them): LoRA on every block linear layer and full fine-tuning;
and a 2-layer slice of the default model (SmolLM2-135M,
GGUF through transformers) with LoRA r=4 on q_proj,v_proj.

Run: OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/train_grads.py [--only CASE...]
"""

import argparse
import os
import re
import importlib
import json
import pathlib

import peft
import torch
from peft import IA3Config, LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

import remote_models

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "train"
DEFAULT_GGUF = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def fix_trl_imports():
    """TRL 0.24 keeps transformers' `_is_package_available` result as is; under transformers 5 that
    is a (found, version) tuple, always truthy, so TRL would import absent optional packages
    (mergekit). Call before importing TRL's trainers."""
    imports = importlib.import_module("trl.import_utils")
    for name, value in vars(imports).copy().items():
        if name.endswith("_available") and isinstance(value, tuple):
            setattr(imports, name, value[0])


def batch(vocab, b, t, prompt_lens, pad, seed):
    """Random ids; labels masked over each row's prompt and its right padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, t), generator=g)
    labels = ids.clone()
    for row, (p, n_pad) in enumerate(zip(prompt_lens, pad)):
        labels[row, :p] = -100
        if n_pad:
            ids[row, t - n_pad :] = 0
            labels[row, t - n_pad :] = -100
    return ids, labels


# LoRA on every linear layer of a multimodal checkpoint's language model, its vision tower left
# alone: the targets `hone train` writes for such a base.
TEXT_ALL_LINEAR = (
    r"^(?!.*(?:vision_tower|multi_modal_projector)).*\.(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
)


def text_vocab(config):
    """Token ids the test batches draw from: below a multimodal class's image tokens."""
    return getattr(config, "boi_token_index", None) or config.get_text_config().vocab_size


# The remote-code families' checkpoint prefixes and module names under Hone's (Llama's) names.
REMOTE_RENAMES = [
    ("transformer.embedding.word_embeddings.", "model.embed_tokens."),
    ("transformer.encoder.layers.", "model.layers."),
    ("transformer.encoder.final_layernorm.", "model.norm."),
    ("transformer.output_layer.", "lm_head."),
    ("transformer.wte.", "model.embed_tokens."),
    ("transformer.h.", "model.layers."),
    ("transformer.ln_f.", "model.norm."),
]

# PEFT targets of every block linear layer of the remote-code families (PEFT's all-linear would
# also take ChatGLM's output_layer, which its class does not report as the output embeddings).
REMOTE_LINEAR = {
    "chatglm3": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "baichuan2": ["W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "baichuan2-alibi": ["W_pack", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen": ["c_attn", "c_proj", "w1", "w2"],
}


def hone_name(peft_name):
    # A multimodal class's language model is `model.language_model`; Hone names it `model`.
    name = peft_name.removeprefix("base_model.model.").replace("model.language_model.", "model.", 1)
    for checkpoint, hone in REMOTE_RENAMES:
        if name.startswith(checkpoint):
            name = hone + name[len(checkpoint):]
    name = re.sub(r"^(model\.layers\.\d+\.)ln_1\.", r"\1input_layernorm.", name)
    name = re.sub(r"^(model\.layers\.\d+\.)ln_2\.", r"\1post_attention_layernorm.", name)
    name = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
    name = name.replace(".lora_magnitude_vector.default.weight", ".lora_magnitude_vector")
    name = name.replace(".ia3_l.default", ".ia3_l")
    return name.replace(".base_layer.", ".")


def randomize_b(model, seed):
    """B random (else A's gradient is 0); DoRA's magnitudes moved off the weight norms they start
    at (else the rescaling m / ||W + s B A|| stays close to 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.05)
            elif "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
            elif "ia3_l" in name:  # IA3's vectors start at 1, which scales nothing
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


def load(model_dir):
    """A fixture model in float64: transformers' own classes, or a remote-code family's built by
    its published modeling file (scripts/golden/remote_models.py) and put in training mode, where
    Qwen applies neither logn scaling nor dynamic NTK and Baichuan normalizes its head each call."""
    if model_dir.name in REMOTE_LINEAR:
        model = remote_models.reload(remote_family(model_dir.name), model_dir).train()
        # Baichuan 13B's training-mode ALiBi mask is float32 whatever the model's dtype, which its
        # attention cannot mix with float64: that reference runs in float32.
        return model if model_dir.name == "baichuan2-alibi" else model.double()
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)


def remote_family(name):
    code = pathlib.Path(os.environ.get("REMOTE_CODE", "/work/refcode"))
    builders = {
        "chatglm3": lambda: remote_models.chatglm3(code),
        "baichuan2": lambda: remote_models.baichuan(code, "7b"),
        "baichuan2-alibi": lambda: remote_models.baichuan(code, "13b"),
        "qwen": lambda: remote_models.qwen_v1(code),
    }
    return builders[name]()


def run(model, ids, labels):
    model.zero_grad()
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    return out


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def save(name, case, ids, labels, out, model, init, logits_slice=None):
    tensors = {"input_ids": ids, "labels": labels, "loss": out.loss.detach().reshape(1)}
    logits = out.logits.detach()
    tensors["logits"] = logits if logits_slice is None else logits[..., :logits_slice]
    for k, v in init.items():
        tensors[f"init.{k}"] = v
    grads = {hone_name(n): p.grad for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, missing
    for k, g in grads.items():
        assert g.abs().max() > 0, f"{name}: {k} has a zero gradient"
        tensors[f"grad.{k}"] = g
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(tensors, OUT / f"{name}.safetensors", metadata={"case": json.dumps(case)})
    print(f"{name}: loss {out.loss.item():.6f}, {len(grads)} gradients")


def float32_gap(model64, ids, labels):
    """Max relative gap between float32 and float64 gradients: what f32 rounding alone costs (0 for
    a reference that runs in float32)."""
    if next(model64.parameters()).dtype == torch.float32:
        return 0.0
    grads64 = {n: p.grad.clone() for n, p in model64.named_parameters() if p.requires_grad}
    model32 = model64.float()
    run(model32, ids, labels)
    gap = max(rel(p.grad, grads64[n]) for n, p in model32.named_parameters() if p.requires_grad)
    model64.double()
    return gap


def lora_case(name, model_dir, targets, masked, r=4, alpha=8, rslora=False, bias="none", dora=False, seed=0):
    torch.manual_seed(seed)
    base = load(ROOT / "fixtures" / "models" / model_dir)
    cfg = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, use_rslora=rslora,
        bias=bias, use_dora=dora, task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, cfg)
    randomize_b(model, seed + 1)
    init = {hone_name(n): p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    vocab = text_vocab(model.config)
    ids, labels = batch(vocab, 2, 12, [5, 3] if masked else [0, 0], [0, 3], seed + 2)
    out = run(model, ids, labels)
    gap = float32_gap(model, ids, labels)
    case = {
        "model": model_dir, "method": "lora", "r": r, "alpha": alpha, "use_rslora": rslora,
        "bias": bias, "use_dora": dora, "targets": targets, "masked": masked, "f32_gap": gap,
    }
    save(name, case, ids, labels, out, model, init)


def ia3_case(name, model_dir, targets=None, feedforward=None, seed=0):
    """IA3 (PEFT's defaults for the family unless `targets`/`feedforward` are given): output rows of
    attention projections and the MLP's down projection's inputs scaled by trained vectors. The
    model `default` is the first two layers of the real default model."""
    torch.manual_seed(seed)
    base = default_slice(2) if model_dir == "default" else load(ROOT / "fixtures" / "models" / model_dir)
    model = get_peft_model(base, IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward))
    randomize_b(model, seed + 1)
    init = {hone_name(n): p.detach().clone() for n, p in model.named_parameters() if "ia3_l" in n}
    ids, labels = batch(text_vocab(model.config), 2, 12, [5, 3], [0, 3], seed + 2)
    out = run(model, ids, labels)
    gap = float32_gap(model, ids, labels)
    config = model.peft_config["default"]
    case = {
        "model": model_dir, "method": "ia3", "targets": sorted(config.target_modules),
        "feedforward": sorted(config.feedforward_modules), "masked": True, "f32_gap": gap,
    }
    if model_dir == "default":
        case.update(layers=2, logits_slice=512)
        save(name, case, ids, labels, out, model, init, logits_slice=512)
        return
    save(name, case, ids, labels, out, model, init)


def start_case(name, model_dir, init, seed=0):
    """LoRA started from the base weight (OLoRA's QR, PiSSA's exact SVD): PEFT initialises in
    float32 (it refuses float64), moving s·B₀·A₀ out of each targeted weight; then the model runs in
    float64. `init.*` holds PEFT's A₀ and B₀ (PiSSA's singular vectors have LAPACK's signs)."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(ROOT / "fixtures" / "models" / model_dir, dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=init,
                     task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg).double()
    init_values = {hone_name(n): p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    ids, labels = batch(text_vocab(model.config), 2, 12, [5, 3], [0, 3], seed + 2)
    out = run(model, ids, labels)
    case = {
        "model": model_dir, "method": "lora", "r": 4, "alpha": 8, "use_rslora": False, "bias": "none",
        "targets": "all-linear", "init": init, "masked": True,
    }
    save(name, case, ids, labels, out, model, init_values)


def base_case(name, model_dir, method, trainable, seed=0):
    """Full fine-tuning (every tensor) or freezing (only names for which `trainable` is true)."""
    model = load(ROOT / "fixtures" / "models" / model_dir)
    for n, p in model.named_parameters():
        p.requires_grad_(trainable(n))
    vocab = text_vocab(model.config)
    ids, labels = batch(vocab, 2, 12, [4, 2], [0, 2], seed + 2)
    out = run(model, ids, labels)
    gap = float32_gap(model, ids, labels)
    trained = [hone_name(n) for n, p in model.named_parameters() if p.requires_grad]
    case = {"model": model_dir, "method": method, "trainable": trained, "masked": True, "f32_gap": gap}
    save(name, case, ids, labels, out, model, {})


def loraplus_groups(named, lr, weight_decay, ratio):
    """LLaMA-Factory's `_create_loraplus_optimizer`: lora_B and every 1-D tensor at `lr * ratio`
    (without weight decay for biases and norms, transformers' decay rule), the rest at `lr`."""
    groups = {"lora_a": [], "lora_b": [], "lora_b_nodecay": []}
    for name, p in named.items():
        if "lora_B" in name or p.ndim == 1:
            groups["lora_b" if "bias" not in name and "norm" not in name else "lora_b_nodecay"].append(p)
        else:
            groups["lora_a"].append(p)
    return [
        dict(params=groups["lora_a"], lr=lr, weight_decay=weight_decay),
        dict(params=groups["lora_b"], lr=lr * ratio, weight_decay=weight_decay),
        dict(params=groups["lora_b_nodecay"], lr=lr * ratio, weight_decay=0.0),
    ]


def adamw_case(name, model_dir, loraplus_ratio=None, seed=0):
    """Three AdamW steps (clipping at 1.0) on one batch, in float32 as Hone trains. With
    `loraplus_ratio`: LoRA+'s groups on a DoRA adapter with its modules' biases trained (1-D tensors
    both; not every bias: a key bias has no gradient but rounding noise, which Adam would amplify)."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(ROOT / "fixtures" / "models" / model_dir, dtype=torch.float32)
    extra = dict(use_dora=True, bias="lora_only") if loraplus_ratio else {}
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                     task_type="CAUSAL_LM", **extra)
    model = get_peft_model(base, cfg)
    randomize_b(model, seed + 1)
    params = {hone_name(n): p for n, p in model.named_parameters() if p.requires_grad}
    tensors = {f"init.{k}": p.detach().clone() for k, p in params.items()}
    ids, labels = batch(model.config.vocab_size, 2, 12, [5, 3], [0, 3], seed + 2)
    groups = loraplus_groups(params, 1e-3, 0.01, loraplus_ratio) if loraplus_ratio else params.values()
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses = []
    for step in range(1, 4):
        opt.zero_grad()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        opt.step()
        losses.append(loss.item())
        for k, p in params.items():
            tensors[f"steps.{step}.{k}"] = p.detach().clone()
    tensors.update({"input_ids": ids, "labels": labels, "losses": torch.tensor(losses)})
    case = {"model": model_dir, "method": "lora", "r": 4, "alpha": 8, "targets": ["q_proj", "v_proj", "down_proj"],
            "lr": 1e-3, "weight_decay": 0.01, "max_grad_norm": 1.0}
    if loraplus_ratio:
        case.update(use_dora=True, bias="lora_only", loraplus_lr_ratio=loraplus_ratio)
    save_file({k: v.contiguous() for k, v in tensors.items()}, OUT / f"{name}.safetensors",
              metadata={"case": json.dumps(case)})
    print(f"{name}: losses {losses}")


def default_slice(layers):
    """The first `layers` layers of the real default model (SmolLM2-135M, its GGUF), in float64."""
    if not DEFAULT_GGUF.exists():
        raise SystemExit(f"{DEFAULT_GGUF} is missing: run scripts/fetch-model.sh")
    full = AutoModelForCausalLM.from_pretrained(DEFAULT_GGUF.parent, gguf_file=DEFAULT_GGUF.name, dtype=torch.float64)
    full.model.layers = full.model.layers[:layers]
    full.config.num_hidden_layers = layers
    return full


def default_model_case(name, layers=2, dora=False, seed=0):
    """LoRA (or DoRA) r=4 on q_proj,v_proj over the first `layers` layers of the real default model."""
    torch.manual_seed(seed)
    full = default_slice(layers)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], use_dora=dora,
                     task_type="CAUSAL_LM")
    model = get_peft_model(full, cfg)
    randomize_b(model, seed + 1)
    init = {hone_name(n): p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    ids, labels = batch(model.config.vocab_size, 2, 32, [10, 4], [0, 5], seed + 2)
    out = run(model, ids, labels)
    case = {"model": "default", "layers": layers, "method": "lora", "r": 4, "alpha": 8, "use_rslora": False,
            "bias": "none", "use_dora": dora, "targets": ["q_proj", "v_proj"], "masked": True, "logits_slice": 512}
    save(name, case, ids, labels, out, model, init, logits_slice=512)


def cases():
    """Every case by name, each a function that writes its fixture."""
    out = {}
    for model_dir in [
        "llama-tied", "llama-gqa", "mistral", "qwen3", "smollm3", "granite", "olmo2", "gemma2", "gemma3",
        "phi3", "phi3-long", "glm", "glm4", "starcoder2",
    ]:
        for masked in [True, False]:
            name = f"lora_{model_dir}_{'masked' if masked else 'full'}"
            out[name] = lambda n=name, d=model_dir, m=masked: lora_case(n, d, "all-linear", m)
    out["lora_gemma3-mm_masked"] = lambda: lora_case("lora_gemma3-mm_masked", "gemma3-mm", TEXT_ALL_LINEAR, True)
    out["lora_qwen2_bias_all"] = lambda: lora_case("lora_qwen2_bias_all", "qwen2", "all-linear", True, bias="all")
    out["lora_qwen2_lora_only"] = lambda: lora_case(
        "lora_qwen2_lora_only", "qwen2", ["q_proj", "k_proj"], False, bias="lora_only"
    )
    # Sliding windows shorter than the 12-token batch rows.
    out["lora_qwen2-window_masked"] = lambda: lora_case("lora_qwen2-window_masked", "qwen2-window", "all-linear", True)
    out["full_mistral-window"] = lambda: base_case("full_mistral-window", "mistral-window", "full", lambda n: True)
    out["rslora_llama-gqa_qv"] = lambda: lora_case(
        "rslora_llama-gqa_qv", "llama-gqa", ["q_proj", "v_proj"], True, r=8, alpha=16, rslora=True
    )
    for model_dir in [
        "llama-gqa", "llama-tied", "qwen3", "smollm3", "granite", "olmo2", "gemma2", "gemma3", "phi3", "glm4",
        "starcoder2",
    ]:
        out[f"full_{model_dir}"] = lambda d=model_dir: base_case(f"full_{d}", d, "full", lambda n: True)
    last = "model.layers.1."
    out["freeze_llama-gqa"] = lambda: base_case(
        "freeze_llama-gqa", "llama-gqa", "freeze",
        lambda n: n.startswith(last + "mlp.") or n.startswith(last + "post_attention_layernorm") or n == "model.norm.weight",
    )
    out["adamw_lora_llama-gqa"] = lambda: adamw_case("adamw_lora_llama-gqa", "llama-gqa")
    out["adamw_loraplus_qwen2"] = lambda: adamw_case("adamw_loraplus_qwen2", "qwen2", loraplus_ratio=16.0)
    out["lora_default_2layers"] = lambda: default_model_case("lora_default_2layers")
    # DoRA: every linear layer (Phi-3's fused ones too), trained biases, and the default model's q,v.
    for model_dir in ["llama-gqa", "phi3"]:
        out[f"dora_{model_dir}_masked"] = lambda d=model_dir: lora_case(f"dora_{d}_masked", d, "all-linear", True, dora=True)
    out["dora_qwen2_bias_all"] = lambda: lora_case("dora_qwen2_bias_all", "qwen2", "all-linear", True, bias="all", dora=True)
    out["dora_default_2layers"] = lambda: default_model_case("dora_default_2layers", dora=True)
    # LoRA started from the weight: OLoRA (QR) and PiSSA (exact SVD).
    out["olora_llama-gqa_masked"] = lambda: start_case("olora_llama-gqa_masked", "llama-gqa", "olora")
    out["pissa_llama-gqa_masked"] = lambda: start_case("pissa_llama-gqa_masked", "llama-gqa", "pissa")
    # IA3 with PEFT's defaults (llama: k, v, down; qwen2, with q/v biases the scaling covers: q, v,
    # down), and on Phi-3's fused projections.
    out["ia3_llama-gqa_masked"] = lambda: ia3_case("ia3_llama-gqa_masked", "llama-gqa")
    out["ia3_qwen2_masked"] = lambda: ia3_case("ia3_qwen2_masked", "qwen2")
    out["ia3_default_2layers"] = lambda: ia3_case("ia3_default_2layers", "default")
    out["ia3_phi3_masked"] = lambda: ia3_case(
        "ia3_phi3_masked", "phi3", ["qkv_proj", "gate_up_proj", "down_proj"], ["down_proj"]
    )
    # The remote-code families, run by their published modeling files: LoRA on every block linear
    # layer (masked and not), full fine-tuning (Baichuan's normalized head trains through the
    # normalization), freezing all but the last layer's MLP and the final norm.
    for model_dir, targets in REMOTE_LINEAR.items():
        for masked in [True, False]:
            name = f"lora_{model_dir}_{'masked' if masked else 'full'}"
            out[name] = lambda n=name, d=model_dir, t=targets, m=masked: lora_case(n, d, t, m)
        out[f"full_{model_dir}"] = lambda d=model_dir: base_case(f"full_{d}", d, "full", lambda n: True)
    # Freezing under Qwen's own names: the last layer's MLP and the final norm train.
    out["freeze_qwen"] = lambda: base_case(
        "freeze_qwen", "qwen", "freeze", lambda n: n.startswith("transformer.h.1.mlp.") or n == "transformer.ln_f.weight"
    )
    return out


def main():
    all_cases = cases()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(all_cases), help="cases to write (default: all)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, peft {peft.__version__}")
    for name, write in all_cases.items():
        if not args.only or name in args.only:
            write()


if __name__ == "__main__":
    main()
