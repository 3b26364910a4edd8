"""Hone vs PyTorch (transformers, f32, 2 threads) on the default model, in one run, as ratios.

Measures forward loss throughput on a 4x256 batch and greedy generation speed at batch 1, with the
peak RSS of each worker process; also llama.cpp (llama-cpp-python) generation when it is installed.
Usage: /opt/ref/venv/bin/python scripts/bench/core.py [--model models/SmolLM2-135M-Instruct.Q4_1.gguf]
The Hone worker is built first: cargo build --release --example bench_core
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HONE = os.path.join(ROOT, "target", "release", "examples", "bench_core")
PROMPT = "<|im_start|>user\nWrite a short story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n"


def run_worker(cmd):
    """Run one worker process; return its JSON line and its peak RSS in MB."""
    env = dict(os.environ, OMP_NUM_THREADS="2", RAYON_NUM_THREADS="2", MKL_NUM_THREADS="2", TQDM_DISABLE="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"worker failed: {' '.join(cmd)}")
    try:  # one pretty-printed object (hone --json), else the last line
        result = json.loads(out)
    except json.JSONDecodeError:
        result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def torch_worker(kind, model, arg, n):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    d, f = os.path.split(os.path.abspath(model))
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    if kind == "forward":
        ids = torch.tensor(json.load(open(arg)))
        best, loss = float("inf"), None
        with torch.no_grad():
            for _ in range(n):
                t0 = time.perf_counter()
                loss = m(input_ids=ids, labels=ids).loss.item()
                best = min(best, time.perf_counter() - t0)
        print(json.dumps({"loss": loss, "seconds": best, "tokens_per_s": ids.numel() / best}))
    else:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        ids = tok(arg, return_tensors="pt").input_ids
        t0 = time.perf_counter()
        with torch.no_grad():
            out = m.generate(ids, max_new_tokens=n, do_sample=False)
        secs = time.perf_counter() - t0
        new = out.shape[1] - ids.shape[1]
        print(json.dumps({"new_tokens": new, "seconds": secs, "tokens_per_s": new / secs,
                          "ids": out[0, ids.shape[1]:].tolist()}))


def llama_cpp_worker(model, prompt, n):
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_threads=2, n_ctx=1024, verbose=False)
    t0 = time.perf_counter()
    out = llm(prompt, max_tokens=n, temperature=0.0)
    secs = time.perf_counter() - t0
    new = out["usage"]["completion_tokens"]
    print(json.dumps({"new_tokens": new, "seconds": secs, "tokens_per_s": new / secs}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--worker", nargs="+")
    a = ap.parse_args()
    if a.worker:
        kind, *rest = a.worker
        if kind == "llama_cpp":
            return llama_cpp_worker(a.model, rest[0], int(rest[1]))
        return torch_worker(kind, a.model, rest[0], int(rest[1]))

    rng = random.Random(0)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([[rng.randrange(49152) for _ in range(256)] for _ in range(4)], f)
        ids_path = f.name
    me = [sys.executable, os.path.abspath(__file__), "--model", a.model, "--worker"]
    rows = []
    hone_f = run_worker([HONE, "forward", a.model, ids_path, str(a.iters)])
    torch_f = run_worker(me + ["forward", ids_path, str(a.iters)])
    rows.append(("forward loss 4x256", hone_f, torch_f))
    hone_g = run_worker([HONE, "generate", a.model, PROMPT, str(a.new_tokens)])
    torch_g = run_worker(me + ["generate", PROMPT, str(a.new_tokens)])
    rows.append(("greedy generation b=1", hone_g, torch_g))
    print(f"forward loss: hone {hone_f['loss']:.5f}  torch {torch_f['loss']:.5f}")
    same = hone_g["ids"] == torch_g["ids"][: len(hone_g["ids"])]
    print(f"greedy ids identical to transformers: {same} ({len(hone_g['ids'])} tokens)")
    print(f"{'benchmark':<24}{'hone tok/s':>12}{'torch tok/s':>13}{'ratio':>8}{'hone RSS MB':>13}{'torch RSS MB':>14}")
    for name, h, t in rows:
        print(f"{name:<24}{h['tokens_per_s']:>12.1f}{t['tokens_per_s']:>13.1f}{h['tokens_per_s'] / t['tokens_per_s']:>8.2f}"
              f"{h['peak_rss_mb']:>13.0f}{t['peak_rss_mb']:>14.0f}")
    try:
        import llama_cpp  # noqa: F401
        l = run_worker(me + ["llama_cpp", PROMPT, str(a.new_tokens)])
        print(f"{'llama.cpp generation':<24}{l['tokens_per_s']:>12.1f}  (hone/llama.cpp ratio "
              f"{hone_g['tokens_per_s'] / l['tokens_per_s']:.2f}, llama.cpp RSS {l['peak_rss_mb']:.0f} MB, Q4_1 weights)")
    except ImportError:
        print("llama.cpp: llama-cpp-python is not installed in this environment")
    os.unlink(ids_path)


if __name__ == "__main__":
    main()
