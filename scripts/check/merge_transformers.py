"""Manual check (not a test): `hone merge` writes checkpoints that transformers loads, with the
logits of PEFT's own merge.

1. Fixture adapters (fixtures/adapters/*, on the tiny models of fixtures/models/*): each base model
   gets a tokenizer (tiny-spm.gguf's, as transformers reads it, with its ChatML template), then
   `hone merge --dtype f32` writes the merged directory. transformers loads it with
   `AutoModelForCausalLM.from_pretrained`; its logits on the golden input ids are compared with
   `PeftModel.from_pretrained(base).merge_and_unload(safe_merge=True)` and with the fixture's
   unmerged PEFT logits. `AutoTokenizer` loads the directory, encodes as it does for the base
   directory and applies the same chat template.
2. Every other family's tiny model (fixtures/models/<family>, no adapter fixture): a random LoRA
   adapter on every linear layer (of the language model, for Gemma 3's multimodal checkpoint) is
   made with PEFT, `hone merge` merges it, and transformers'
   logits of the directory are compared with PEFT's merge.
3. The remote-code families' tiny models (ChatGLM3, Baichuan 2 7B and 13B, Qwen v1): a random
   LoRA on every block linear layer (PEFT's names for them: query_key_value, W_pack, c_attn, …),
   `hone merge`, then the merged directory (its config.json and weights, with the base's modeling
   files Hone copied beside them) is loaded through its own `auto_map` classes, as
   `trust_remote_code` loads it, and compared with PEFT's merge. The modeling files come from
   REMOTE_CODE (see scripts/golden/remote_models.py); without them this part is skipped.
4. The real default model (SmolLM2-135M-Instruct Q4_1 GGUF): a random LoRA adapter on q/k/v/o is
   made with PEFT on transformers' dequantized GGUF model, `hone merge` merges it into the GGUF,
   and the directory's logits are compared with PEFT's merge the same way.

Prints max |logit difference| per case and fails (exit 1) above 1e-4. Run from the repository
root after building hone:

    cargo build -p hone-cli
    OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/check/merge_transformers.py \\
        [--hone target/debug/hone] [--gguf models/SmolLM2-135M-Instruct.Q4_1.gguf]
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
TOL = 1e-4
# (adapter, base model) under fixtures/adapters and fixtures/models.
ADAPTERS = [
    ("llama-tied-qv", "llama-tied"),
    ("qwen2-all-linear", "qwen2"),
    ("llama-gqa-regex", "llama-gqa"),
    ("qwen3-all-linear", "qwen3"),
    ("qwen2-dora", "qwen2"),
    ("qwen2-ia3", "qwen2"),
    ("llama-gqa-olora", "llama-gqa"),
]
# LoRA on every linear layer of a multimodal checkpoint's language model.
TEXT_ALL_LINEAR = (
    r"^(?!.*(?:vision_tower|multi_modal_projector)).*\.(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
)

# Tiny models of the families without an adapter fixture.
FAMILIES = [
    "smollm3", "granite", "olmo2", "gemma2", "gemma3", "mistral-window", "qwen2-window", "phi3", "phi3-long",
    "glm", "glm4", "starcoder2", "gemma3-mm",
]
MESSAGES = [{"role": "user", "content": "Hello there"}]


def load_fp32(path, **kwargs):
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", **kwargs
    ).eval()


@torch.no_grad()
def logits(model, ids):
    return model(ids, use_cache=False).logits.float()


def hone_merge(hone, model, adapter, out):
    cmd = [hone, "merge", "--model", str(model), "--adapter", str(adapter), "--out", str(out)]
    subprocess.run(cmd + ["--dtype", "f32"], check=True)


def check_tokenizer(base_tok, out):
    tok = AutoTokenizer.from_pretrained(out)
    text = "Once upon a time, 42 llamas"
    assert tok(text).input_ids == base_tok(text).input_ids, "tokenization differs"
    chat = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    want = base_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert chat == want, f"chat template differs: {chat!r} vs {want!r}"
    return chat


def report(name, diffs):
    line = "  ".join(f"{k} {v:.2e}" for k, v in diffs.items())
    ok = all(v < TOL for v in diffs.values())
    print(f"{name:<22} {line}  {'ok' if ok else 'FAIL'}")
    return ok


def base_dir(tmp, base, tokenizer):
    """tmp/BASE: the fixture model fixtures/models/BASE with `tokenizer` saved beside it."""
    path = tmp / base
    if path.exists():
        return path
    path.mkdir()
    for f in (FIXTURES / "models" / base).glob("*.json"):
        (path / f.name).write_bytes(f.read_bytes())
    (path / "model.safetensors").symlink_to(FIXTURES / "models" / base / "model.safetensors")
    tokenizer.save_pretrained(path)
    return path


def fixture_cases(hone, tmp):
    tok = AutoTokenizer.from_pretrained(FIXTURES / "tokenizer", gguf_file="tiny-spm.gguf")
    ok = True
    for adapter, base in ADAPTERS:
        model_dir = base_dir(tmp, base, tok)
        out = tmp / f"{adapter}-merged"
        hone_merge(hone, model_dir, FIXTURES / "adapters" / adapter, out)

        golden = load_file(FIXTURES / "adapters" / f"{adapter}.golden.safetensors")
        ids = golden["input_ids"]
        ours = logits(load_fp32(out), ids)
        peft = PeftModel.from_pretrained(load_fp32(model_dir), FIXTURES / "adapters" / adapter)
        merged = logits(peft.merge_and_unload(safe_merge=True), ids)
        diffs = {
            "vs PEFT merged": (ours - merged).abs().max().item(),
            "vs PEFT unmerged": (ours - golden["logits"]).abs().max().item(),
        }
        # The base directory as transformers loads it (its tokenizer class follows model_type).
        check_tokenizer(AutoTokenizer.from_pretrained(model_dir), out)
        ok &= report(adapter, diffs)
    return ok


def random_lora(model, targets):
    """PEFT LoRA on `targets` with lora_B random: PEFT starts B at zero, which would make the check
    vacuous."""
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape) / p.shape[1] ** 0.5)
    return peft


def family_cases(hone, tmp):
    tok = AutoTokenizer.from_pretrained(FIXTURES / "tokenizer", gguf_file="tiny-spm.gguf")
    ok = True
    for family in FAMILIES:
        model_dir = base_dir(tmp, family, tok)
        # A multimodal checkpoint's adapter leaves the vision tower alone, as Hone trains it.
        targets = TEXT_ALL_LINEAR if family == "gemma3-mm" else "all-linear"
        peft = random_lora(load_fp32(model_dir), targets)
        adapter = tmp / f"{family}-lora"
        peft.save_pretrained(adapter)
        out = tmp / f"{family}-merged"
        hone_merge(hone, model_dir, adapter, out)
        ids = load_file(FIXTURES / "models" / family / "golden.safetensors")["input_ids"]
        merged = logits(peft.merge_and_unload(safe_merge=True), ids)
        ok &= report(family, {"vs PEFT merged": (logits(load_fp32(out), ids) - merged).abs().max().item()})
    return ok


def remote_cases(hone, tmp):
    sys.path.insert(0, str(ROOT / "scripts" / "golden"))
    import remote_models
    from train_grads import REMOTE_LINEAR, remote_family

    tok = AutoTokenizer.from_pretrained(FIXTURES / "tokenizer", gguf_file="tiny-spm.gguf")
    ok = True
    for name, targets in REMOTE_LINEAR.items():
        family = remote_family(name)
        model_dir = base_dir(tmp, name, tok)
        for code in family.code_dir.glob("*.py"):
            (model_dir / code.name).write_bytes(code.read_bytes())
        peft = random_lora(remote_models.reload(family, model_dir), targets)
        adapter = tmp / f"{name}-lora"
        peft.save_pretrained(adapter)
        out = tmp / f"{name}-merged"
        hone_merge(hone, model_dir, adapter, out)
        copied = sorted(p.name for p in out.glob("*.py"))
        assert copied == sorted(p.name for p in family.code_dir.glob("*.py")), copied
        ids = load_file(FIXTURES / "models" / name / "golden.safetensors")["input_ids"]
        merged = remote_models.full_logits(family, peft.merge_and_unload(safe_merge=True).eval(), ids)
        ours = remote_models.full_logits(family, load_remote(out), ids)
        ok &= report(name, {"vs PEFT merged": (ours - merged).abs().max().item()})
    return ok


def load_remote(path):
    """A merged remote-code checkpoint through its own config.json and `auto_map` classes, from the
    modeling files beside it (loaded as a package, as scripts/golden/remote_models.py does:
    transformers' dynamic-module loader insists on importing Qwen's optional
    transformers_stream_generator, which transformers 5 breaks), with transformers 5's generation
    settings put back on the config."""
    import json

    import remote_models
    from safetensors.torch import load_file as load_weights

    auto_map = json.loads((path / "config.json").read_text())["auto_map"]
    package = f"merged_{path.name.replace('-', '_')}"
    remote_models.load_package(package, path)

    def auto_class(reference):
        module_name, class_name = reference.split(".")
        return getattr(remote_models.module(package, module_name), class_name)

    config_class = auto_class(auto_map["AutoConfig"])
    model_class = auto_class(auto_map["AutoModelForCausalLM"])
    if (path / "modeling_qwen.py").exists():
        remote_models.shim_qwen(remote_models.module(package, "modeling_qwen"))
    config = config_class.from_pretrained(path)
    config.max_length = getattr(config, "seq_length", 2048)
    config.use_cache = True
    model = model_class(config)
    missing, unexpected = model.load_state_dict(load_weights(path / "model.safetensors"), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model.eval()


def real_model_case(hone, gguf, tmp):
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    base = load_fp32(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    peft = get_peft_model(base, config)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:  # PEFT starts B at zero, which would make the check vacuous
                p.copy_(0.02 * torch.randn(p.shape))
    adapter = tmp / "smollm2-lora"
    peft.save_pretrained(adapter)
    out = tmp / "smollm2-merged"
    hone_merge(hone, gguf, adapter, out)

    ids = tok(["The capital of France is", "def fibonacci(n):"], padding=True, return_tensors="pt").input_ids
    merged = logits(peft.merge_and_unload(safe_merge=True), ids)
    ours = logits(load_fp32(out), ids)
    plain = logits(load_fp32(gguf.parent, gguf_file=gguf.name), ids)
    diffs = {
        "vs PEFT merged": (ours - merged).abs().max().item(),
    }
    print(f"(the adapter moves SmolLM2's logits by up to {(merged - plain).abs().max().item():.2f})")
    print(f"generation_config.json: {(out / 'generation_config.json').read_text().strip()}")
    chat = check_tokenizer(tok, out)
    print(f"chat template through AutoTokenizer: {chat!r}")
    return report("SmolLM2 GGUF + LoRA", diffs)


def check_args(doc):
    """The checks' command line (`--hone`, `--gguf`), and one quiet torch thread."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--hone", default=str(ROOT / "target" / "debug" / "hone"))
    parser.add_argument("--gguf", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.disable_progress_bar()
    return args


def main():
    args = check_args(__doc__)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ok = fixture_cases(args.hone, tmp)
        ok &= family_cases(args.hone, tmp)
        if Path(os.environ.get("REMOTE_CODE", "/work/refcode")).exists():
            ok &= remote_cases(args.hone, tmp)
        else:
            print("REMOTE_CODE is absent: remote-code families skipped")
        gguf = Path(args.gguf)
        if gguf.exists():
            ok &= real_model_case(args.hone, gguf, tmp)
        else:
            print(f"{gguf} is absent: real-model case skipped")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
