"""Write a Llama-shaped GGUF file with random quantized weights, for speed and memory benchmarks.

Usage: /opt/ref/venv/bin/python scripts/bench/random_gguf.py --shape 7b --quant q4_0 \
           --out models/random-7b.Q4_0.gguf [--seed 0] [--smoke-test]

Shapes (hidden, layers, FFN, heads, KV heads):
  1b  2048, 16,  8192, 32,  8   Llama-3.2-1B-like, rope base 500000
  3b  3072, 28,  8192, 24,  8   Llama-3.2-3B-like, rope base 500000
  7b  4096, 32, 11008, 32, 32   Llama-2-7B, rope base 10000

Quant mixes:
  q4_0    every 2-D weight Q4_0 (token_embd too); output.weight Q6_K, as llama-quantize does.
  q4_k_m  llama-quantize's Q4_K_M mix for Llama: Q4_K everywhere (token_embd too), Q6_K for
          output.weight, and Q6_K for blk.i.attn_v.weight and blk.i.ffn_down.weight in the layers
          where llama.cpp's use_more_bits(i, n) holds:
              i < n/8  or  i >= 7n/8  or  (i - n/8) % 3 == 2      (integer division)
          i.e. the first and last eighth of the layers plus every third layer between them
          (16 of 32 layers for 7b, 8 of 16 for 1b).

Norm weights are F32 near 1.0; output.weight is written (embeddings are not tied). The tokenizer
and chat template (every tokenizer.* key) are copied from the default model
models/SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch-model.sh), so the vocabulary has 49152
tokens and both llama.cpp and Hone can tokenize.

The quantized blocks are generated directly as random bytes (quantizing f32 weights in Python would
take far too long for 7B), with scales chosen so that the dequantized weights have mean 0 and
std ~0.02:
  Q4_0  d = +-0.02/4.637 (random sign per block; 4.637 = rms of q - 8 for uniform 4-bit q);
  Q4_K  6-bit sub-block scales sc uniform in [32, 63], mins m = sc, dmin = 7.5 d, so that each
        weight is d * sc * (q - 7.5); d = 0.02 / (4.610 * rms(sc));
  Q6_K  int8 sub-block scales +-[8, 15] (random sign), d = 0.02 / (18.48 * rms(|scale|)).
All f16 super-block scales are normal numbers. Tensors are written one at a time (tensor infos
first, then each tensor's data), so memory stays at a few hundred MB even for 7b. After writing,
the file is read back with gguf-py: every tensor's name, type and shape is checked, and one tensor
of each quant type is partly dequantized with gguf.quants to check that it is finite with
std ~0.02. --smoke-test also loads the file with llama-cpp-python and greedily generates 8 tokens,
checking that every logit is finite.
"""
import argparse
import os
import sys
import time

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER_SOURCE = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

SHAPES = {
    "1b": dict(hidden=2048, layers=16, ffn=8192, heads=32, kv_heads=8, rope_base=500000.0),
    "3b": dict(hidden=3072, layers=28, ffn=8192, heads=24, kv_heads=8, rope_base=500000.0),
    "7b": dict(hidden=4096, layers=32, ffn=11008, heads=32, kv_heads=32, rope_base=10000.0),
}
# llama_ftype values of llama.cpp, written as general.file_type.
FILE_TYPES = {"q4_0": 2, "q4_k_m": 15}
TARGET_STD = 0.02

# Scales of the random blocks (see the module docstring).
Q4_0_D = TARGET_STD / np.sqrt(np.mean((np.arange(16) - 8.0) ** 2))
Q4_K_SC = (32, 64)
Q4_K_D = TARGET_STD / (np.sqrt(np.mean((np.arange(16) - 7.5) ** 2))
                       * np.sqrt(np.mean(np.arange(*Q4_K_SC) ** 2.0)))
Q6_K_SC = (8, 16)
Q6_K_D = TARGET_STD / (np.sqrt(np.mean((np.arange(64) - 32.0) ** 2))
                       * np.sqrt(np.mean(np.arange(*Q6_K_SC) ** 2.0)))


def use_more_bits(i_layer, n_layers):
    """llama.cpp's rule (llama-quant.cpp) for the layers whose attn_v/ffn_down get Q6_K in Q4_K_M."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def tensor_plan(shape, quant, vocab):
    """The tensors of the model in file order: (name, numpy shape (rows, columns), type)."""
    s = SHAPES[shape]
    h, f = s["hidden"], s["ffn"]
    kv = s["kv_heads"] * (h // s["heads"])
    base = QT.Q4_0 if quant == "q4_0" else QT.Q4_K
    plan = [("token_embd.weight", (vocab, h), base)]
    for i in range(s["layers"]):
        more = QT.Q6_K if quant == "q4_k_m" and use_more_bits(i, s["layers"]) else base
        p = f"blk.{i}."
        plan += [
            (p + "attn_norm.weight", (h,), QT.F32),
            (p + "attn_q.weight", (h, h), base),
            (p + "attn_k.weight", (kv, h), base),
            (p + "attn_v.weight", (kv, h), more),
            (p + "attn_output.weight", (h, h), base),
            (p + "ffn_norm.weight", (h,), QT.F32),
            (p + "ffn_gate.weight", (f, h), base),
            (p + "ffn_up.weight", (f, h), base),
            (p + "ffn_down.weight", (h, f), more),
        ]
    plan += [("output_norm.weight", (h,), QT.F32), ("output.weight", (vocab, h), QT.Q6_K)]
    return plan


def f16_bytes(values, n_blocks):
    """Per-block f16 values as a (n_blocks, 2) uint8 array."""
    return np.asarray(values, dtype=np.float16).view(np.uint8).reshape(n_blocks, 2)


def q4_0_blocks(rng, n):
    """n random Q4_0 blocks: f16 d (random sign), 16 bytes of 4-bit quants."""
    b = np.empty((n, 18), np.uint8)
    d = np.where(rng.integers(0, 2, n, dtype=np.uint8) == 1, Q4_0_D, -Q4_0_D)
    b[:, :2] = f16_bytes(d, n)
    b[:, 2:] = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    return b


def q4_k_blocks(rng, n):
    """n random Q4_K blocks: f16 d, f16 dmin, 12 bytes of packed 6-bit scales/mins, 128 bytes of quants."""
    b = np.empty((n, 144), np.uint8)
    b[:, 0:2] = f16_bytes(np.full(n, Q4_K_D), n)
    b[:, 2:4] = f16_bytes(np.full(n, 7.5 * Q4_K_D), n)
    sc = rng.integers(*Q4_K_SC, (n, 8), dtype=np.uint8)
    m = sc  # mins equal to the scales: each weight is d * sc * (q - 7.5)
    b[:, 4:8] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    b[:, 8:12] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    b[:, 12:16] = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    b[:, 16:] = rng.integers(0, 256, (n, 128), dtype=np.uint8)
    return b


def q6_k_blocks(rng, n):
    """n random Q6_K blocks: 128 bytes low 4 bits, 64 bytes high 2 bits, 16 int8 scales, f16 d."""
    b = np.empty((n, 210), np.uint8)
    b[:, :192] = rng.integers(0, 256, (n, 192), dtype=np.uint8)
    sc = rng.integers(*Q6_K_SC, (n, 16), dtype=np.int8)
    sc[rng.integers(0, 2, (n, 16), dtype=np.uint8) == 1] *= -1
    b[:, 192:208] = sc.view(np.uint8)
    b[:, 208:210] = f16_bytes(np.full(n, Q6_K_D), n)
    return b


BLOCKS = {QT.Q4_0: q4_0_blocks, QT.Q4_K: q4_k_blocks, QT.Q6_K: q6_k_blocks}


def random_tensor(rng, shape, qtype):
    """The tensor's data: F32 values near 1.0, or random quantized blocks as (rows, row bytes) uint8."""
    if qtype == QT.F32:
        return (1.0 + 0.02 * rng.standard_normal(shape)).astype(np.float32)
    rows, cols = shape
    block, size = GGML_QUANT_SIZES[qtype]
    return BLOCKS[qtype](rng, rows * cols // block).reshape(rows, cols // block * size)


def copy_tokenizer(writer, path):
    """Copy every tokenizer.* key of the GGUF file at path (raw bytes for strings); return the vocab size."""
    reader = GGUFReader(path)
    vocab = None
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == GGUFValueType.ARRAY:
            sub = field.types[-1]
            if sub == GGUFValueType.STRING:
                value = [bytes(field.parts[i]) for i in field.data]
            else:
                value = field.contents()
            writer.add_key_value(key, value, vtype, sub_type=sub)
            if key == "tokenizer.ggml.tokens":
                vocab = len(value)
        elif vtype == GGUFValueType.STRING:
            writer.add_key_value(key, bytes(field.parts[-1]), vtype)
        else:
            writer.add_key_value(key, field.contents(), vtype)
    if vocab is None:
        sys.exit(f"{path}: no tokenizer.ggml.tokens")
    return vocab


def write_model(shape, quant, out, seed, tokenizer):
    """Write the model to out (through out.partial); return its tensor plan."""
    s = SHAPES[shape]
    head_dim = s["hidden"] // s["heads"]
    w = GGUFWriter(out + ".partial", "llama")
    w.add_name(f"random-{shape}")
    w.add_file_type(FILE_TYPES[quant])
    w.add_quantization_version(2)
    vocab = copy_tokenizer(w, tokenizer)
    w.add_vocab_size(vocab)
    w.add_context_length(4096)
    w.add_embedding_length(s["hidden"])
    w.add_block_count(s["layers"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_freq_base(s["rope_base"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)

    plan = tensor_plan(shape, quant, vocab)
    for name, tshape, qtype in plan:
        if qtype == QT.F32:
            w.add_tensor_info(name, tshape, np.float32, 4 * tshape[0])
        else:
            block, size = GGML_QUANT_SIZES[qtype]
            rows, cols = tshape
            w.add_tensor_info(name, (rows, cols // block * size), np.uint8, rows * cols // block * size,
                              raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    for name, tshape, qtype in plan:
        w.write_tensor_data(random_tensor(rng, tshape, qtype))
    w.close()
    os.replace(out + ".partial", out)
    return plan


def verify(path, plan, sample_rows=256):
    """Read the file back: the tensors must match the plan; dequantized weights finite, std ~0.02."""
    reader = GGUFReader(path)
    got = {t.name: t for t in reader.tensors}
    if len(got) != len(plan):
        sys.exit(f"{path}: {len(got)} tensors, expected {len(plan)}")
    stats, seen = {}, set()
    for name, tshape, qtype in plan:
        t = got.get(name)
        if t is None or t.tensor_type != qtype or tuple(int(x) for x in t.shape[::-1]) != tshape:
            sys.exit(f"{path}: tensor {name} is {t and (t.tensor_type.name, t.shape.tolist())}, "
                     f"expected {qtype.name} {tshape}")
        if qtype in seen:
            continue
        seen.add(qtype)
        w = dequantize(np.asarray(t.data[:sample_rows]), qtype)
        if not np.isfinite(w).all():
            sys.exit(f"{path}: {name} has non-finite values")
        stats[qtype.name] = dict(tensor=name, mean=round(float(w.mean()), 5), std=round(float(w.std()), 5))
        if qtype != QT.F32 and abs(w.std() - TARGET_STD) > 0.1 * TARGET_STD:
            sys.exit(f"{path}: {name} dequantizes to std {w.std():.4f}, expected ~{TARGET_STD}")
    return stats


def smoke_test(path, n=8):
    """Load the file with llama-cpp-python and greedily generate n tokens; every logit must be finite."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_threads=2, n_ctx=256, verbose=False)
    tokens = llm.tokenize(b"The quick brown fox", add_bos=True, special=False)
    llm.eval(tokens)
    out = []
    for _ in range(n):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        if not np.isfinite(logits).all():
            sys.exit(f"{path}: llama.cpp produced non-finite logits")
        out.append(int(logits.argmax()))
        llm.eval([out[-1]])
    return out, llm.detokenize(out).decode("utf-8", "replace")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--quant", choices=sorted(FILE_TYPES), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer-from", default=TOKENIZER_SOURCE,
                    help="GGUF file whose tokenizer.* keys are copied (default: the SmolLM2 default model)")
    ap.add_argument("--smoke-test", action="store_true",
                    help="also load the file with llama-cpp-python and generate 8 tokens")
    a = ap.parse_args()
    if not os.path.exists(a.tokenizer_from):
        sys.exit(f"{a.tokenizer_from} is missing: run scripts/fetch-model.sh")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)

    t0 = time.perf_counter()
    plan = write_model(a.shape, a.quant, a.out, a.seed, a.tokenizer_from)
    written = time.perf_counter() - t0
    stats = verify(a.out, plan)
    types = {}
    for _, _, qtype in plan:
        types[qtype.name] = types.get(qtype.name, 0) + 1
    print(f"wrote {a.out}: {os.path.getsize(a.out) / 2**30:.2f} GiB, {len(plan)} tensors {types}, "
          f"{written:.1f} s")
    for qtype, s in stats.items():
        print(f"  {qtype}: {s}")
    if a.smoke_test:
        ids, text = smoke_test(a.out)
        print(f"  llama.cpp greedy 8 tokens: {ids} {text!r}")


if __name__ == "__main__":
    main()
