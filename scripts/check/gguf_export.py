"""Checks `hone export` GGUF files with the PyPI `gguf` package (llama.cpp's gguf-py), by hand:

    OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/check/gguf_export.py model.gguf [lora.gguf ...]

For a model: gguf-py parses it; every metadata key the llama loader needs is present with gguf-py's
key names; every tensor name is one gguf-py's tensor map of the file's architecture (llama, qwen2,
qwen3, smollm3, granite, olmo2) allows, with the shape
the hyper-parameters imply; general.file_type is a LlamaFileType; and every tensor dequantizes with
gguf-py's own quants module to finite values. For a LoRA adapter (general.type = adapter): its keys
and that each lora_a/lora_b pair names a tensor of its architecture with compatible shapes. Exits non-zero on a
failure.
"""

import sys

import numpy as np
from gguf import GGUFReader, Keys, LlamaFileType, MODEL_ARCH, MODEL_ARCH_NAMES, MODEL_TENSORS, TENSOR_NAMES
from gguf.quants import dequantize


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


ARCHS = {name: arch for arch, name in MODEL_ARCH_NAMES.items() if name in ("llama", "qwen2", "qwen3", "smollm3", "granite", "olmo2")}


def allowed_names(arch, n_layers):
    names = set()
    for t in MODEL_TENSORS[ARCHS[arch]]:
        fmt = TENSOR_NAMES[t]
        for bid in range(n_layers) if "{bid}" in fmt else [None]:
            base = fmt.format(bid=bid) if bid is not None else fmt
            names |= {base + ".weight", base + ".bias"}
    return names


def check_model(reader, path):
    arch = field(reader, Keys.General.ARCHITECTURE)
    assert arch in ARCHS, f"{path}: architecture {arch}"
    llm = lambda k: k.format(arch=arch)
    for key in [Keys.LLM.CONTEXT_LENGTH, Keys.LLM.EMBEDDING_LENGTH, Keys.LLM.BLOCK_COUNT,
                Keys.LLM.FEED_FORWARD_LENGTH, Keys.Attention.HEAD_COUNT, Keys.Attention.HEAD_COUNT_KV,
                Keys.Attention.LAYERNORM_RMS_EPS, Keys.Rope.FREQ_BASE, Keys.LLM.VOCAB_SIZE]:
        assert field(reader, llm(key)) is not None, f"{path}: {llm(key)} missing"
    for key in [Keys.Tokenizer.MODEL, Keys.Tokenizer.LIST, Keys.Tokenizer.TOKEN_TYPE,
                Keys.Tokenizer.BOS_ID, Keys.Tokenizer.EOS_ID, Keys.Tokenizer.CHAT_TEMPLATE]:
        assert field(reader, key) is not None, f"{path}: {key} missing"
    file_type = LlamaFileType(field(reader, Keys.General.FILE_TYPE))
    n_layers = field(reader, llm(Keys.LLM.BLOCK_COUNT))
    h = field(reader, llm(Keys.LLM.EMBEDDING_LENGTH))
    n_vocab = len(field(reader, Keys.Tokenizer.LIST))
    assert n_vocab == field(reader, llm(Keys.LLM.VOCAB_SIZE)), "vocab size"
    allowed = allowed_names(arch, n_layers)
    types = {}
    for t in reader.tensors:
        assert t.name in allowed, f"{path}: tensor {t.name} is not a {arch} tensor"
        if t.name in ("token_embd.weight", "output.weight"):
            assert list(t.shape) == [h, n_vocab], f"{t.name}: {t.shape}"
        values = dequantize(t.data, t.tensor_type)
        assert np.isfinite(values).all(), f"{t.name}: not finite"
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    print(f"{path}: ok, {arch}, {file_type.name}, {len(reader.tensors)} tensors {types}, "
          f"tokenizer {field(reader, Keys.Tokenizer.MODEL)}/{field(reader, Keys.Tokenizer.PRE)} "
          f"({n_vocab} tokens), eos {field(reader, Keys.Tokenizer.EOS_ID)}")


def check_adapter(reader, path):
    assert field(reader, Keys.Adapter.TYPE) == "lora", "adapter.type"
    alpha = field(reader, Keys.Adapter.LORA_ALPHA)
    assert alpha is not None, "adapter.lora.alpha"
    tensors = {t.name: t for t in reader.tensors}
    arch = field(reader, Keys.General.ARCHITECTURE)
    assert arch in ARCHS, f"{path}: architecture {arch}"
    allowed = allowed_names(arch, 1000)
    for name, t in tensors.items():
        base, _, part = name.rpartition(".")
        assert part in ("lora_a", "lora_b") and base in allowed, f"{name}: not a {arch} LoRA tensor"
        if part == "lora_a":
            b = tensors[base + ".lora_b"]
            # ggml order: a is [in, r], b is [r, out].
            assert t.shape[1] == b.shape[0], f"{base}: rank of lora_a {t.shape} and lora_b {b.shape}"
    print(f"{path}: ok, LoRA adapter, alpha {alpha}, {len(tensors) // 2} modules")


def main():
    for path in sys.argv[1:]:
        reader = GGUFReader(path)
        if field(reader, Keys.General.TYPE) == "adapter":
            check_adapter(reader, path)
        else:
            check_model(reader, path)


if __name__ == "__main__":
    main()
