"""Reference logits for checking, in llama.cpp, Hone's GGUF exports of the remote-code families'
tiny models (by hand, with scripts/check/gguf_logits_llama_cpp.py), where the fixtures' own
goldens do not apply:

- Qwen v1 without logn scaling and dynamic NTK (llama.cpp's qwen has neither; the fixture's
  11-token goldens pass its seq_length of 8, where they act);
- Baichuan 2 7B at 32 layers and 13B at 40, the layer counts llama.cpp knows them by (the export
  test repeats the 2 fixture layers, as `deepen` in crates/hone/tests/export_gguf.rs).

Each is run by the family's published modeling file (REMOTE_CODE, see
scripts/golden/remote_models.py). ChatGLM3's export compares with its fixture golden directly.

    HONE_KEEP_EXPORTS=/tmp/ggufs cargo test -p hone --test export_gguf remote_code
    OMP_NUM_THREADS=2 /opt/ref/venv/bin/python scripts/check/remote_gguf_goldens.py /tmp/ggufs
    OMP_NUM_THREADS=2 /opt/ref/venv/bin/python scripts/check/gguf_logits_llama_cpp.py \\
        /tmp/ggufs/qwen.gguf /tmp/ggufs/qwen.golden.safetensors \\
        /tmp/ggufs/baichuan2.gguf /tmp/ggufs/baichuan2.golden.safetensors \\
        /tmp/ggufs/baichuan2-alibi.gguf /tmp/ggufs/baichuan2-alibi.golden.safetensors \\
        /tmp/ggufs/chatglm3.gguf fixtures/models/chatglm3/golden.safetensors
"""

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "golden"))
import remote_models  # noqa: E402


def deepened(state, layers):
    """The 2-layer state dict with layer l a copy of layer l % 2, up to `layers`."""
    out = {}
    for name, value in state.items():
        if not name.startswith("model.layers."):
            out[name] = value
            continue
        index, rest = name[len("model.layers."):].split(".", 1)
        for to in range(int(index), layers, 2):
            out[f"model.layers.{to}.{rest}"] = value
    return out


@torch.no_grad()
def write(out, name, model, fixture):
    ids = load_file(ROOT / "fixtures" / "models" / fixture / "golden.safetensors")["input_ids"]
    logits = model.eval()(input_ids=ids).logits.float().contiguous()
    save_file({"input_ids": ids, "logits": logits}, out / f"{name}.golden.safetensors")
    print(f"{name}: {tuple(logits.shape)}")


def main():
    out = Path(sys.argv[1])
    code = Path(os.environ.get("REMOTE_CODE", "/work/refcode"))
    torch.set_num_threads(1)

    qwen = remote_models.qwen_v1(code)
    model = remote_models.reload(qwen, ROOT / "fixtures" / "models" / "qwen")
    model.transformer.use_dynamic_ntk = False
    for block in model.transformer.h:
        block.attn.use_logn_attn = False
    write(out, "qwen", model, "qwen")

    for size, name, layers in [("7b", "baichuan2", 32), ("13b", "baichuan2-alibi", 40)]:
        family = remote_models.baichuan(code, size)
        model, config = family.build()
        config.num_hidden_layers = layers
        model = type(model)(config)
        state = load_file(ROOT / "fixtures" / "models" / name / "model.safetensors")
        model.load_state_dict(deepened(state, layers))
        write(out, name, model, name)


if __name__ == "__main__":
    main()
