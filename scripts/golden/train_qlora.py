"""Golden fixtures for QLoRA on an unquantized base (`quantization_bit: 4`): PEFT LoRA gradients on
the model whose decoder-layer matrices are replaced by bitsandbytes' dequantization of their
4-bit quantization, which is the weight transformers' bitsandbytes `Linear4bit` multiplies with.

Writes
  fixtures/models/llama-64/    a tiny Llama (GQA, untied) whose matrix widths are whole 64-value
                               blocks, as bitsandbytes' row-straddling blocks are not something
                               Hone stores (every real model's sizes are multiples of 64)
  fixtures/train/qlora_*.safetensors
                               in train_grads.py's format; the case metadata adds
                               "quantization": {"type": "nf4"|"fp4", "double": bool}
Cases: NF4 with double quantization, LoRA all-linear on llama-64; FP4 without it, LoRA q,v on
llama-64; NF4 double on a 2-layer slice of the default model (its Q4_1 weights dequantized,
then quantized to NF4 as LLaMA-Factory would quantize an f32 checkpoint of it).

The LoRA math runs in float64 on the dequantized float32 weights, as train_grads.py's cases do.

Run: OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/train_qlora.py
"""

import shutil

import bitsandbytes
import bitsandbytes.functional as F
import torch
from models import GQA, randomize
from peft import LoraConfig, get_peft_model
from train_grads import DEFAULT_GGUF, OUT, ROOT, batch, float32_gap, hone_name, randomize_b, run, save
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

MODEL_64 = ROOT / "fixtures" / "models" / "llama-64"


def build_llama_64(seed=108):
    config = LlamaConfig(
        **dict(GQA, hidden_size=64, intermediate_size=128, head_dim=16, vocab_size=96),
        rope_theta=10000.0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    randomize(model, seed)
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id)
    shutil.rmtree(MODEL_64, ignore_errors=True)
    model.save_pretrained(MODEL_64)


def quantize_base(model, quant_type, double):
    """Every decoder-layer linear weight replaced by bitsandbytes' round trip (from float32)."""
    count = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("model.layers.") and name.endswith("_proj.weight"):
                w = p.detach().float()
                packed, state = F.quantize_4bit(w, blocksize=64, quant_type=quant_type, compress_statistics=double)
                p.copy_(F.dequantize_4bit(packed, state).to(p.dtype))
                count += 1
    assert count > 0
    return count


def qlora_case(name, model, model_name, targets, quant, masked=True, seq=12, layers=None, logits_slice=None, seed=0):
    quantize_base(model, quant["type"], quant["double"])
    model = model.double()
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    randomize_b(model, seed + 1)
    init = {hone_name(n): p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    prompts = [5, 3] if masked else [0, 0]
    ids, labels = batch(model.config.vocab_size, 2, seq, prompts, [0, 3], seed + 2)
    out = run(model, ids, labels)
    case = {
        "model": model_name, "method": "lora", "r": 4, "alpha": 8, "use_rslora": False, "bias": "none",
        "targets": targets, "masked": masked, "quantization": quant,
    }
    if layers is not None:
        case["layers"] = layers
        case["logits_slice"] = logits_slice
    else:
        case["f32_gap"] = float32_gap(model, ids, labels)
    save(name, case, ids, labels, out, model, init, logits_slice=logits_slice)


def main():
    print(f"torch {torch.__version__}, bitsandbytes {bitsandbytes.__version__}")
    torch.set_num_threads(1)
    build_llama_64()
    load = lambda: AutoModelForCausalLM.from_pretrained(MODEL_64, dtype=torch.float32)
    qlora_case("qlora_nf4_llama-64", load(), "llama-64", "all-linear", {"type": "nf4", "double": True})
    qlora_case("qlora_fp4_llama-64", load(), "llama-64", ["q_proj", "v_proj"], {"type": "fp4", "double": False},
               masked=False)
    if not DEFAULT_GGUF.exists():
        raise SystemExit(f"{DEFAULT_GGUF} is missing: run scripts/fetch-model.sh")
    full = AutoModelForCausalLM.from_pretrained(DEFAULT_GGUF.parent, gguf_file=DEFAULT_GGUF.name, dtype=torch.float32)
    full.model.layers = full.model.layers[:2]
    full.config.num_hidden_layers = 2
    qlora_case("qlora_nf4_default_2layers", full, "default", ["q_proj", "v_proj"], {"type": "nf4", "double": True},
               seq=32, layers=2, logits_slice=512)
    print(f"wrote {OUT}/qlora_*.safetensors and {MODEL_64}")


if __name__ == "__main__":
    main()
