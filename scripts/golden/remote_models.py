"""Golden fixtures for the remote-code families: tiny random ChatGLM3, Baichuan 2 (7B with rotary
and NormHead, 13B with ALiBi) and Qwen v1 models, built and run by each family's published
modeling file, saved as the HF directories those checkpoints are (their own config keys, tensor
names and auto_map) under fixtures/models/<name>/ with the same golden.safetensors and
greedy.json as scripts/golden/models.py writes for transformers' own classes.

transformers has no class for these families: the reference is the modeling code their Hub
repositories ship (`trust_remote_code`), which is not committed here. Put each repository's
*.py files in one directory per family under REMOTE_CODE (default /work/refcode):

    chatglm3/       THUDM/chatglm3-6b            configuration_chatglm.py, modeling_chatglm.py
    baichuan2-7b/   baichuan-inc/Baichuan2-7B-Chat   configuration_baichuan.py, modeling_baichuan.py,
                                                     generation_utils.py
    baichuan2-13b/  baichuan-inc/Baichuan2-13B-Chat  (the same files, 13B's)
    qwen1/          Qwen/Qwen-7B-Chat            configuration_qwen.py, modeling_qwen.py,
                                                 qwen_generation_utils.py (needs `einops`)

The files run unedited under transformers 5; the few things transformers 5 removed are put back
from here (see `shim_*`). Run from the repository root:

    OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/remote_models.py [--remote-code DIR]
"""

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models import (  # noqa: E402
    FIXTURES,
    GREEDY_MIN_MARGIN,
    GREEDY_NEW_TOKENS,
    GREEDY_PROMPT_LEN,
    PREFILL,
    STEP_TOL,
    VERSIONS,
    golden_ids,
    randomize,
    save_golden,
    write_greedy,
)

warnings.filterwarnings("ignore")

# Qwen's `seq_length` in the tiny model: the 11-token test passes it, so logn scaling and
# dynamic NTK both act (the full forward stretches the rotary base by alpha 3; stepping from a
# 6-token prefill keeps alpha 1, as Qwen's cache does).
QWEN_SEQ_LENGTH = 8


def load_package(name, directory):
    """`directory` as package `name`, so the modeling files' relative imports work (an empty
    __init__.py is created if the directory has none)."""
    init = directory / "__init__.py"
    if not init.exists():
        init.touch()
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(directory)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return package


def module(package, name):
    return importlib.import_module(f"{package}.{name}")


def shim_qwen(modeling):
    """transformers 5 removed PreTrainedModel.get_head_mask, which Qwen's forward calls."""
    if not hasattr(modeling.QWenPreTrainedModel, "get_head_mask"):
        modeling.QWenPreTrainedModel.get_head_mask = lambda self, mask, n, chunked=False: [None] * n


def ends_in_norm_weight(name):
    return name.endswith("norm.weight")


def cached_step(model, ids, position, past):
    """One forward of `ids` after the cache `past` (positions follow from it): logits and the
    cache."""
    out = model(input_ids=ids, past_key_values=past, use_cache=True)
    return out.logits, out.past_key_values


class Family:
    """How to build, save and step one remote-code family's tiny model."""

    def __init__(self, name, code_dir, build, step, is_norm, auto_map, seed, note):
        self.name, self.code_dir, self.build, self.step = name, code_dir, build, step
        self.is_norm, self.auto_map, self.seed, self.note = is_norm, auto_map, seed, note


def chatglm3(code):
    package = "ref_chatglm3"
    load_package(package, code / "chatglm3")
    config_module = module(package, "configuration_chatglm")
    modeling = module(package, "modeling_chatglm")

    def build():
        config = config_module.ChatGLMConfig(
            num_layers=2, padded_vocab_size=128, hidden_size=32, ffn_hidden_size=48, kv_channels=8,
            num_attention_heads=4, seq_length=64, multi_query_attention=True, multi_query_group_num=2,
            add_qkv_bias=True, add_bias_linear=False, rmsnorm=True, post_layer_norm=True,
            apply_residual_connection_post_layernorm=False, apply_query_key_layer_scaling=True,
            attention_softmax_in_fp32=True, layernorm_epsilon=1e-5, original_rope=True,
            torch_dtype="float32", eos_token_id=2, pad_token_id=0,
        )
        config.architectures = ["ChatGLMModel"]
        # transformers 5 keeps generation settings off the config; the modeling file reads them.
        config.max_length = config.seq_length
        config.use_cache = True
        return modeling.ChatGLMForConditionalGeneration(config, empty_init=False), config

    def step(model, ids, position, past):
        positions = torch.arange(position, position + ids.shape[1]).expand(ids.shape[0], -1)
        out = model(input_ids=ids, position_ids=positions, past_key_values=past, use_cache=True)
        return out.logits, out.past_key_values

    model_class = "modeling_chatglm.ChatGLMForConditionalGeneration"
    auto_map = {
        "AutoConfig": "configuration_chatglm.ChatGLMConfig",
        "AutoModel": model_class,
        "AutoModelForCausalLM": model_class,
        "AutoModelForSeq2SeqLM": model_class,
        "AutoModelForSequenceClassification": "modeling_chatglm.ChatGLMForSequenceClassification",
    }
    note = "ChatGLM3: fused query_key_value with bias, 2 multi-query groups, interleaved half rotary"
    return Family("chatglm3", code / "chatglm3", build, step, ends_in_norm_weight, auto_map, 123, note)


def baichuan(code, size):
    directory = f"baichuan2-{size}"
    package = f"ref_baichuan2_{size}"
    load_package(package, code / directory)
    config_module = module(package, "configuration_baichuan")
    modeling = module(package, "modeling_baichuan")

    def build():
        if size == "7b":
            config = config_module.BaichuanConfig(
                vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6,
                bos_token_id=1, eos_token_id=2, pad_token_id=0,
            )
        else:
            # 6 heads: ALiBi's slopes for a head count that is not a power of two.
            config = config_module.BaichuanConfig(
                vocab_size=128, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=6, model_max_length=64, rms_norm_eps=1e-6,
                bos_token_id=1, eos_token_id=2, pad_token_id=0,
            )
            # The 13B config stores `(gradient_checkpointing,)`, always true, as a tuple.
            config.gradient_checkpointing = False
        config.architectures = ["BaichuanForCausalLM"]
        return modeling.BaichuanForCausalLM(config), config

    auto_map = {
        "AutoConfig": "configuration_baichuan.BaichuanConfig",
        "AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM",
    }
    if size == "7b":
        name, seed, note = "baichuan2", 124, "Baichuan2-7B: W_pack, rotary, NormHead (lm_head rows normalized)"
    else:
        name, seed, note = "baichuan2-alibi", 125, "Baichuan2-13B: W_pack, ALiBi over 6 heads, NormHead"
    return Family(name, code / directory, build, cached_step, ends_in_norm_weight, auto_map, seed, note)


def qwen_v1(code):
    package = "ref_qwen1"
    load_package(package, code / "qwen1")
    config_module = module(package, "configuration_qwen")
    modeling = module(package, "modeling_qwen")
    shim_qwen(modeling)

    def build():
        config = config_module.QWenConfig(
            vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, kv_channels=8,
            intermediate_size=96, max_position_embeddings=64, rotary_pct=1.0, rotary_emb_base=10000,
            use_dynamic_ntk=True, use_logn_attn=True, use_flash_attn=False, fp32=True,
            layer_norm_epsilon=1e-6, no_bias=True, seq_length=QWEN_SEQ_LENGTH,
        )
        config.architectures = ["QWenLMHeadModel"]
        return modeling.QWenLMHeadModel(config), config

    auto_map = {
        "AutoConfig": "configuration_qwen.QWenConfig",
        "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
    }
    note = (
        f"Qwen v1: c_attn with bias, c_proj(w1 * silu(w2)), seq_length {QWEN_SEQ_LENGTH}: logn scaling "
        "past it, dynamic NTK alpha from the first (prefill) call"
    )
    return Family("qwen", code / "qwen1", build, cached_step, lambda n: ".ln_" in n, auto_map, 127, note)


@torch.no_grad()
def full_logits(family, model, ids):
    logits, _ = family.step(model, ids, 0, None)
    return logits.float()


@torch.no_grad()
def step_logits(family, model, ids):
    logits, past = family.step(model, ids[:, :PREFILL], 0, None)
    chunks = [logits]
    for pos in range(PREFILL, ids.shape[1]):
        logits, past = family.step(model, ids[:, pos : pos + 1], pos, past)
        chunks.append(logits)
    return torch.cat(chunks, dim=1).float()


@torch.no_grad()
def cached_greedy(family, model, prompt, new_tokens):
    """Greedy decoding through the KV cache, as the family's own generate runs it (Qwen's dynamic
    NTK factor stays the prompt's), with each step's top-1 minus top-2 logit gap."""
    logits, past = family.step(model, prompt, 0, None)
    produced, margins = [], []
    for pos in range(prompt.shape[1], prompt.shape[1] + new_tokens):
        top2 = logits[0, -1].float().topk(2)
        produced.append(top2.indices[0].item())
        margins.append((top2.values[0] - top2.values[1]).item())
        logits, past = family.step(model, top2.indices[:1].view(1, 1), pos, past)
    return produced, margins


def save_checkpoint(family, model, config, out_dir):
    """config.json with the family's own keys and auto_map, model.safetensors with the state
    dict as the modeling file names it (buffers it saves included), as save_pretrained writes a
    remote-code checkpoint."""
    out_dir.mkdir(parents=True)
    doc = config.to_dict()
    for key in ("transformers_version", "_name_or_path", "dtype", "max_length", "use_cache"):
        doc.pop(key, None)
    doc["auto_map"] = family.auto_map
    doc["torch_dtype"] = "float32"
    (out_dir / "config.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})


def reload(family, out_dir):
    """A fresh model from the saved files, as from_pretrained would build it."""
    from safetensors.torch import load_file

    model, _ = family.build()
    missing, unexpected = model.load_state_dict(load_file(out_dir / "model.safetensors"), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model.eval()


def build_tiny(family):
    out_dir = FIXTURES / "models" / family.name
    shutil.rmtree(out_dir, ignore_errors=True)
    torch.manual_seed(family.seed)
    model, config = family.build()
    randomize(model, family.seed, family.is_norm)
    # Saved before any forward: Baichuan's NormHead normalizes its weight in place on the first
    # eval call, and checkpoints hold the raw head.
    save_checkpoint(family, model, config, out_dir)
    model = reload(family, out_dir)

    ids = golden_ids(config.vocab_size if hasattr(config, "vocab_size") else 128, family.seed)
    logits = full_logits(family, model, ids)
    logits_step = step_logits(family, reload(family, out_dir), ids)
    step_diff = (logits - logits_step).abs().max().item()
    if family.name != "qwen":
        assert step_diff < STEP_TOL, f"{family.name}: KV-cache logits differ by {step_diff}"

    metadata = dict(
        VERSIONS,
        model=family.name,
        seed=str(family.seed),
        prefill=str(PREFILL),
        reference=f"{family.code_dir.name} remote code",
        note=(
            "logits: one full forward; logits_step: prefill then one token at a time with the KV "
            "cache. " + family.note
        ),
    )
    tensors = {"input_ids": ids, "logits": logits, "logits_step": logits_step}
    save_golden({k: v.contiguous() for k, v in tensors.items()}, out_dir / "golden.safetensors", metadata)

    prompt = ids[:1, :GREEDY_PROMPT_LEN]
    greedy, margins = cached_greedy(family, reload(family, out_dir), prompt, GREEDY_NEW_TOKENS)
    margin = min(margins)
    assert margin > GREEDY_MIN_MARGIN, f"{family.name}: greedy near-tie ({margin}), pick another seed"
    write_greedy(out_dir, prompt, greedy, margins)
    print(f"{family.name}: step diff {step_diff:.2e}, greedy margin {margin:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--remote-code", type=Path, default=Path(os.environ.get("REMOTE_CODE", "/work/refcode")))
    parser.add_argument("--only", nargs="*", help="family fixture names to rebuild")
    args = parser.parse_args()
    torch.set_num_threads(1)
    families = [
        chatglm3(args.remote_code),
        baichuan(args.remote_code, "7b"),
        baichuan(args.remote_code, "13b"),
        qwen_v1(args.remote_code),
    ]
    for family in families:
        if not args.only or family.name in args.only:
            build_tiny(family)


if __name__ == "__main__":
    main()
