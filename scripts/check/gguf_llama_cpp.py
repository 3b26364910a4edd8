"""Checks `hone export` GGUF files in llama.cpp itself (PyPI llama-cpp-python), by hand:

    OMP_NUM_THREADS=2 /opt/ref/venv/bin/python scripts/check/gguf_llama_cpp.py \
        --hone target/debug/hone --ppl-data fixtures/smollm2/ppl.jsonl \
        [--lora BASE.gguf ADAPTER.gguf] MODEL.gguf [MODEL.gguf ...]

For each model: llama.cpp loads it, answers chat prompts greedily through the GGUF's own chat
template (create_chat_completion), and the answer is printed beside `hone generate --chat` on the
same file with whether llama.cpp stopped at the end-of-turn token (finish_reason "stop": the
exported EOS and template are right). Then perplexity on --ppl-data from llama.cpp's logits beside
`hone eval perplexity` on the same file. With --lora, llama.cpp applies the LoRA GGUF to the base
GGUF at load time, and its answers are printed the same way. Exits non-zero when llama.cpp cannot
load a file or never stops.

llama-cpp-python builds llama.cpp from source (about 15 minutes on 2 cores):
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF" /opt/ref/venv/bin/pip install llama-cpp-python
"""

import argparse
import json
import math
import subprocess
import sys

import numpy as np
from llama_cpp import Llama

PROMPTS = ["Who are you?", "What is the capital of France?", "Give me three tips for staying healthy."]
MAX_TOKENS = 64


def llama_answers(llm):
    answers = []
    for prompt in PROMPTS:
        out = llm.create_chat_completion(
            messages=[{"role": "user", "content": prompt}], max_tokens=MAX_TOKENS, temperature=0.0
        )
        choice = out["choices"][0]
        answers.append((choice["message"]["content"], choice["finish_reason"]))
    return answers


def hone_answer(hone, model, prompt):
    args = [hone, "generate", "--model", model, "--chat", "--prompt", prompt,
            "--max-new-tokens", str(MAX_TOKENS)]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.rstrip("\n")


def llama_perplexity(llm, docs):
    """exp(mean NLL) over every predicted token, each document scored on its own (as Hone does)."""
    total, n = 0.0, 0
    for doc in docs:
        ids = llm.tokenize(doc.encode(), add_bos=True, special=False)
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total -= sum(logp[t, ids[t + 1]] for t in range(len(ids) - 1))
        n += len(ids) - 1
    return math.exp(total / n), n


def hone_perplexity(hone, model, data):
    args = [hone, "eval", "perplexity", "--model", model, "--data", data, "--json"]
    report = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
    return report["perplexity"], report["n_tokens"]


def check(label, llm, hone_model, args):
    ok = True
    for prompt, (text, finish) in zip(PROMPTS, llama_answers(llm)):
        hone_text = hone_answer(args.hone, hone_model, prompt) if hone_model else None
        print(f"  {prompt!r}\n    llama.cpp ({finish}): {text!r}")
        if hone_text is not None:
            same = "same text" if hone_text == text else "differs"
            print(f"    hone ({same}): {hone_text!r}")
        ok &= finish == "stop" or prompt != PROMPTS[0]
    if args.ppl_data and hone_model:
        docs = [json.loads(line)["text"] for line in open(args.ppl_data) if line.strip()]
        ppl, n = llama_perplexity(llm, docs)
        hone_ppl, hone_n = hone_perplexity(args.hone, hone_model, args.ppl_data)
        print(f"  perplexity llama.cpp {ppl:.4f} ({n} tokens) | hone {hone_ppl:.4f} ({hone_n} tokens)")
    print(f"{label}: {'ok' if ok else 'FAILED: llama.cpp did not stop at end of turn'}")
    return ok


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*")
    parser.add_argument("--hone", default="target/debug/hone")
    parser.add_argument("--ppl-data")
    parser.add_argument("--lora", nargs=2, metavar=("BASE", "ADAPTER"))
    args = parser.parse_args()
    ok = True
    for path in args.models:
        print(path)
        llm = Llama(model_path=path, n_ctx=1024, logits_all=True, verbose=False)
        ok &= check(path, llm, path, args)
    if args.lora:
        base, adapter = args.lora
        print(f"{base} + LoRA {adapter}")
        llm = Llama(model_path=base, lora_path=adapter, n_ctx=1024, verbose=False)
        ok &= check(adapter, llm, None, args)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
