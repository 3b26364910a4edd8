"""Checks that llama.cpp computes the logits transformers computes on a GGUF `hone export` wrote
from one of the tiny fixture models, by hand:

    OMP_NUM_THREADS=2 /opt/ref/venv/bin/python scripts/check/gguf_logits_llama_cpp.py \
        EXPORT.gguf fixtures/models/NAME/golden.safetensors [EXPORT.gguf GOLDEN ...]

For each pair: llama.cpp (PyPI llama-cpp-python) loads the export, evaluates each row of the
golden `input_ids` from position 0 with every position's logits kept, and the largest absolute
difference from transformers' `logits` is printed beside the logits' own scale. Exits non-zero
when one exceeds --tol (default 1e-4, with an f32 KV cache; llama.cpp sums in another order than
PyTorch's). The export must be F32 (`hone export --quant f32`) for the comparison to mean much.

The tiny fixture models carry no tokenizer; `crates/hone/tests/export_gguf.rs` exports them with a
byte-level one, which is what llama.cpp needs to load the file (ids are fed directly), and keeps the
files when asked:

    HONE_KEEP_EXPORTS=/tmp/ggufs cargo test -p hone --test export_gguf every_family
    for n in llama-gqa mistral qwen2 qwen3 smollm3 granite olmo2; do
        args="$args /tmp/ggufs/$n.gguf fixtures/models/$n/golden.safetensors"; done
    OMP_NUM_THREADS=2 /opt/ref/venv/bin/python scripts/check/gguf_logits_llama_cpp.py $args

Phi-3 (`phi3`, `phi3-long`): llama.cpp's phi3 vocabulary loader needs an `<|endoftext|>` token,
which the test tokenizer lacks (rename any unused token to it; ids are fed directly, so the logits
do not change); llama.cpp ignores Phi-3's sliding window, and picks LongRoPE's long factors from
its context size (n_ctx 64 is padded past `phi3`'s original 64) where transformers picks them per
call, so compare `phi3` against transformers run without the window and with short_factor set to
long_factor.
"""

import argparse
import sys

import numpy as np
from llama_cpp import Llama
from safetensors.numpy import load_file


def llama_cpp_logits(path, ids):
    # An f32 KV cache (ggml type 0): the default f16 cache alone moves logits by ~1e-3.
    llm = Llama(
        model_path=path, n_ctx=64, n_batch=64, logits_all=True, n_threads=2, type_k=0, type_v=0, verbose=False
    )
    rows = []
    for row in ids:
        llm.reset()
        llm.eval([int(i) for i in row])
        rows.append(np.array(llm.scores[: len(row)], dtype=np.float32))
    return np.stack(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="EXPORT.gguf GOLDEN.safetensors ...")
    parser.add_argument("--tol", type=float, default=1e-4)
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give the files in pairs: EXPORT.gguf GOLDEN.safetensors")
    failed = False
    for path, golden_path in zip(args.pairs[::2], args.pairs[1::2]):
        golden = load_file(golden_path)
        want = golden["logits"]
        got = llama_cpp_logits(path, golden["input_ids"])
        diff = float(np.abs(got - want).max())
        scale = float(np.abs(want).max())
        ok = diff <= args.tol
        failed |= not ok
        print(f"{path}: max |llama.cpp - transformers| {diff:.2e} (largest logit {scale:.2f}) {'ok' if ok else 'FAIL'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
