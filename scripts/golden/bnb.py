"""Golden fixtures for Hone's bitsandbytes 4-bit quantization (crates/hone/src/quant/bnb.rs).

Writes fixtures/quant/bnb/:
  input.f32.bin      a fixed 96x256 f32 tensor (384 blocks of 64, so the nested absmax
                     quantization has one full 256-block group and one partial): weight-like
                     noise, outliers, an all-zero block, a constant block, a heavy-tailed row
  dynamic_code.f32.bin
                     bitsandbytes' signed 8-bit dynamic map (create_dynamic_map), which
                     quantizes the absmax values when double quantization is on
  {nf4,fp4}.packed.bin
                     quantize_4bit's packed nibbles (two values per byte, the first in the high
                     nibble), blocksize 64
  {nf4,fp4}.absmax.f32.bin
                     the per-block absmax without double quantization
  {nf4,fp4}.nested.absmax.u8.bin, .nested.scales.f32.bin, .nested.offset.f32.bin
                     with double quantization (compress_statistics=True): the absmax minus
                     its mean quantized with quantize_blockwise(blocksize=256) to the dynamic
                     map, that quantization's own absmax per 256 blocks, and the mean
  {nf4,fp4}[.nested].deq.f32.bin
                     dequantize_4bit of those states, as float32

bitsandbytes' CPU backend does this work (the default torch ops for the 4-bit part, the C
library's LUT quantizer for the nested blockwise part), which is what LLaMA-Factory runs on a
machine like this one. The packed bytes also equal the 4-bit kernels' by construction (nearest
code, ties to the lower one).

Run: OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/bnb.py
"""

import pathlib

import bitsandbytes
import bitsandbytes.functional as F
import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "quant" / "bnb"


def make_input():
    rng = np.random.default_rng(20261203)
    x = (rng.standard_normal((96, 256)) * 0.04).astype(np.float32)
    x[3, 17] = 0.9  # outliers
    x[50, 200] = -1.3
    x[10, 64:128] = 0.0  # an all-zero block: absmax 0, every code maps to 0
    x[11, 0:64] = 0.125  # a constant block: every value is the block's absmax
    x[90, :] = (rng.standard_t(3, 256) * 0.05).astype(np.float32)  # heavy tail
    return x


def write(name, array):
    np.ascontiguousarray(array).tofile(OUT / name)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    x = make_input()
    write("input.f32.bin", x)
    write("dynamic_code.f32.bin", F.create_dynamic_map().numpy().astype(np.float32))
    t = torch.from_numpy(x)
    for quant_type in ("nf4", "fp4"):
        packed, state = F.quantize_4bit(t, blocksize=64, quant_type=quant_type)
        assert packed.dtype == torch.uint8 and state.absmax.dtype == torch.float32
        write(f"{quant_type}.packed.bin", packed.numpy().ravel())
        write(f"{quant_type}.absmax.f32.bin", state.absmax.numpy())
        write(f"{quant_type}.deq.f32.bin", F.dequantize_4bit(packed, state).numpy())

        packed_n, nested = F.quantize_4bit(
            t, blocksize=64, quant_type=quant_type, compress_statistics=True
        )
        assert torch.equal(packed_n, packed), "double quantization changes only the absmax"
        assert nested.absmax.dtype == torch.uint8 and nested.state2.blocksize == 256
        write(f"{quant_type}.nested.absmax.u8.bin", nested.absmax.numpy())
        write(f"{quant_type}.nested.scales.f32.bin", nested.state2.absmax.numpy())
        write(f"{quant_type}.nested.offset.f32.bin", nested.offset.reshape(1).numpy())
        deq = F.dequantize_4bit(packed_n, nested).numpy()
        write(f"{quant_type}.nested.deq.f32.bin", deq)
        err = np.abs(deq - x).max()
        print(f"{quant_type}: max |dequantized - input| {err:.4f} (nested)")
    print(f"bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__}: wrote {OUT}")


if __name__ == "__main__":
    main()
