"""Golden fixtures for Hone's ggml quantization kernels (crates/hone/src/quant).

Writes fixtures/quant/:
  input.f32.bin            a fixed 2x1024 f32 tensor: weight-like noise, outliers, an all-zero
                           256-block, a constant block, a positive-only block, f16-subnormal
                           values, exact rounding ties for Q8_0 / F16 / BF16, an f16 overflow
  {T}.q.bin, {T}.deq.bin   the tensor quantized to T and gguf-py's dequantization of those bytes.
                           F16, BF16 and the 32-element types are quantized by gguf-py
                           (gguf.quants.quantize); the K-quants, which gguf-py cannot quantize,
                           by ggml's own reference quantizers quantize_row_*_ref (libggml-python)
  {T}.rand.q.bin, {T}.rand.deq.bin
                           random block bytes with sane f16 scales (reaching bit patterns a
                           quantizer never writes) and gguf-py's dequantization of them
  model_checksums.json     per-tensor checksums of gguf-py's dequantization of the default model
                           (only when models/SmolLM2-135M-Instruct.Q4_1.gguf is present)

The script also checks that ggml's C code agrees with gguf-py (dequantization of every type,
quantization of the 32-element types), so the fixtures are what llama.cpp itself computes.

Run: OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/quant.py
"""

import ctypes
import json
import pathlib

import gguf
import libggml
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "quant"
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

PY_QUANTIZED = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
C_QUANTIZED = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
BLOCK_TYPES = [t for t in PY_QUANTIZED + C_QUANTIZED if t not in (T.F16, T.BF16)]

# Byte offsets of the f16 scale fields in each block (ggml-common.h's block_* structs).
F16_FIELDS = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}

LIB = ctypes.CDLL(str(pathlib.Path(libggml.__file__).parent / "lib64" / "libggml-base.so"))


def f32_from_bits(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


def make_input():
    rng = np.random.default_rng(20240601)
    x = (rng.standard_normal((2, 1024)) * 0.05).astype(np.float32)
    x[0, 100] = 1.5  # outliers
    x[0, 700] = -2.0
    x[0, 900] = 1e5  # overflows f16
    x[1, 256:512] = 0.0  # an all-zero K-quant block (and eight all-zero 32-blocks)
    x[1, 512:544] = 0.25  # constant block: Q4_1 / Q5_1 get d = 0
    x[1, 544:576] = np.abs(x[1, 544:576]) + 0.1  # positive only: the K-quant min clamps to 0
    x[1, 576:608] = (rng.standard_normal(32) * 1e-6).astype(np.float32)  # f16-subnormal scales
    # Q8_0 ties: amax 127 gives d = 1 exactly, so x*id = k + 0.5 must round away from zero.
    x[1, 608:640] = [127.0, -127.0] + [(k // 2 + 0.5) * (1 - 2 * (k % 2)) for k in range(30)]
    # f16 ties (1 + 2^-11 rounds to even 1.0, 1 + 3*2^-11 up) and bf16 ties (low 16 bits 0x8000).
    ties = [1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 2049.0]
    x[1, 640:644] = ties
    x[1, 644:648] = f32_from_bits([0x3F808000, 0x3F818000, 0xBF808000, 0x3E208000])
    x[1, 768:1024] = (rng.standard_t(3, 256) * 0.3).astype(np.float32)  # heavy tail
    return x


def c_quantize(qtype, x):
    """ggml's quantize_row_<type>_ref over the flattened tensor (blocks are independent)."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    flat = np.ascontiguousarray(x, dtype=np.float32).ravel()
    out = np.zeros(flat.size // block * size, dtype=np.uint8)
    fn = getattr(LIB, f"quantize_row_{qtype.name.lower().replace('_k', '_K')}_ref")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn(flat.ctypes.data, out.ctypes.data, flat.size)
    return out


def c_dequantize(qtype, q):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    q = np.ascontiguousarray(q, dtype=np.uint8).ravel()
    out = np.zeros(q.size // size * block, dtype=np.float32)
    fn = getattr(LIB, f"dequantize_row_{qtype.name.lower().replace('_k', '_K')}")
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    fn(q.ctypes.data, out.ctypes.data, out.size)
    return out


def random_blocks(qtype, n_blocks, rng):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    q = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scale = rng.uniform(1e-3, 0.1, n_blocks) * rng.choice([-1.0, 1.0], n_blocks)
        q[:, off : off + 2] = scale.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    q[0, F16_FIELDS[qtype][0] : F16_FIELDS[qtype][0] + 2] = [0x37, 0x02]  # an f16 subnormal
    return q.ravel()


def same_bits(a, b):
    return np.array_equal(np.asarray(a, np.float32).view(np.uint32), np.asarray(b, np.float32).view(np.uint32))


def checksum(values):
    """sum(bits[i] * (2i+1)) mod 2^64: any change of any element changes it. Hone computes the same."""
    bits = np.ascontiguousarray(values, dtype=np.float32).ravel().view(np.uint32).astype(np.uint64)
    weights = np.arange(bits.size, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    return int(np.sum(bits * weights, dtype=np.uint64))


def write(name, array):
    (OUT / name).write_bytes(np.ascontiguousarray(array).tobytes())


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    x = make_input()
    write("input.f32.bin", x)
    rng = np.random.default_rng(7)

    for qtype in PY_QUANTIZED + C_QUANTIZED:
        name = qtype.name
        q = quantize(x, qtype).view(np.uint8) if qtype in PY_QUANTIZED else c_quantize(qtype, x)
        deq = dequantize(q.reshape(x.shape[0], -1), qtype)
        write(f"{name}.q.bin", q)
        write(f"{name}.deq.bin", deq.astype(np.float32))
        if qtype in BLOCK_TYPES:
            if qtype in PY_QUANTIZED:
                assert np.array_equal(q.ravel(), c_quantize(qtype, x)), f"{name}: gguf-py and ggml quantize differently"
            assert same_bits(deq.ravel(), c_dequantize(qtype, q)), f"{name}: gguf-py and ggml dequantize differently"
            n_blocks = 4 if qtype in C_QUANTIZED else 32
            rq = random_blocks(qtype, n_blocks, rng)
            rdeq = dequantize(rq.reshape(1, -1), qtype).ravel()
            assert same_bits(rdeq, c_dequantize(qtype, rq)), f"{name}: random blocks dequantize differently"
            write(f"{name}.rand.q.bin", rq)
            write(f"{name}.rand.deq.bin", rdeq.astype(np.float32))

    # F16 / BF16 bit patterns a quantizer never writes: subnormals, infinities, signed zeros
    # (NaNs left out: their payloads are not part of the contract).
    for qtype, specials, exp_mask in (
        (T.F16, [0x0000, 0x8000, 0x0001, 0x83FF, 0x7C00, 0xFC00], 0x7C00),
        (T.BF16, [0x0000, 0x8000, 0x0001, 0x807F, 0x7F80, 0xFF80], 0x7F80),
    ):
        bits = rng.integers(0, 1 << 16, 1024, dtype=np.uint16)
        bits[: len(specials)] = specials
        mantissa = np.uint16(0x7FFF & ~exp_mask)
        bits[(bits & exp_mask) == exp_mask] &= ~mantissa  # NaN -> infinity
        rq = bits.view(np.uint8)
        write(f"{qtype.name}.rand.q.bin", rq)
        write(f"{qtype.name}.rand.deq.bin", dequantize(rq.reshape(1, -1), qtype).astype(np.float32).ravel())

    if MODEL.exists():
        reader = gguf.GGUFReader(MODEL)
        sums = {t.name: f"{checksum(dequantize(t.data, t.tensor_type)):016x}" for t in reader.tensors}
        (OUT / "model_checksums.json").write_text(json.dumps(sums, indent=1, sort_keys=True) + "\n")
    else:
        print(f"notice: {MODEL} absent (scripts/fetch-model.sh), model_checksums.json not rewritten")

    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(list(OUT.iterdir()))} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
