"""Serving benchmark: `hone serve` vs llama.cpp's server (llama-cpp-python[server]) on the same GGUF,
2 threads each, streaming completions from 1, 4 and 16 concurrent clients; then Hone with 4
different LoRA adapters in one batch vs the base alone. Not a test: figures for the issue's note.

    /opt/ref/venv/bin/python scripts/bench/serve.py --hone target/release/hone \
        [--model models/SmolLM2-135M-Instruct.Q4_1.gguf] [--reps 3] [--json out.json]

Each client sends --requests-per-client requests one after another: a different ~40-token prompt
each, temperature 0, max_tokens 64, with the end-of-text tokens banned through `logit_bias` so
both servers generate exactly 64 tokens. Per configuration: throughput (completion tokens / wall
seconds), time to first token (request sent -> first text chunk) and inter-token latency (gaps
between text chunks; Hone sends text held back for a possible stop string or an incomplete
character with the next chunk) at p50 / p95. The two servers
run side by side but are measured in turn, interleaved, --reps times; best and median reported,
with each server's peak RSS (VmHWM) and the CPU model. llama-cpp-python's server decodes one
request at a time (no continuous batching): concurrency queues there (with --interrupt_requests
False; by default each new request cancels the running stream).

The 4 adapters are random LoRA (r 8, alpha 16, q_proj and v_proj, PEFT layout) written by this
script for the model's shapes, read from the GGUF header.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np

PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when",
    "In a small village at the edge of the forest there lived an old clockmaker who",
    "The three most important ideas in modern physics are",
    "Here is a recipe for a simple tomato soup. First,",
    "The rules of chess are easy to learn. Each player starts with",
    "A good way to learn a new programming language is to",
    "The ocean covers most of the Earth's surface, and its depths",
    "Once upon a time, a young fox wanted to cross the river, so",
]
MAX_TOKENS = 64
THREADS = 2


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def peak_rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_ready(url, proc, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.args}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"server not ready: {url}")


def model_shapes(path):
    from gguf import GGUFReader

    r = GGUFReader(path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    get = lambda k: int(r.fields[f"{arch}.{k}"].parts[-1][0])
    hidden, heads, layers = get("embedding_length"), get("attention.head_count"), get("block_count")
    kv = get("attention.head_count_kv")
    eos = [int(r.fields[k].parts[-1][0]) for k in ("tokenizer.ggml.eos_token_id",) if k in r.fields]
    return hidden, hidden // heads * kv, layers, eos


def write_adapter(dir, hidden, kv_dim, layers, seed):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    r = 8
    tensors = {}
    for l in range(layers):
        for name, out in (("q_proj", hidden), ("v_proj", kv_dim)):
            key = f"base_model.model.model.layers.{l}.self_attn.{name}"
            tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((r, hidden)) * 0.02).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((out, r)) * 0.02).astype(np.float32)
    os.makedirs(dir, exist_ok=True)
    save_file(tensors, os.path.join(dir, "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": 16,
              "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "bias": "none",
              "fan_in_fan_out": False, "use_rslora": False, "base_model_name_or_path": "bench"}
    with open(os.path.join(dir, "adapter_config.json"), "w") as f:
        json.dump(config, f)


async def one_request(client, url, model, prompt, ban, samples):
    body = {"model": model, "prompt": prompt, "temperature": 0, "max_tokens": MAX_TOKENS, "stream": True,
            "logit_bias": {str(t): -100 for t in ban}}
    start = time.perf_counter()
    first, last = None, None
    async with client.stream("POST", url, json=body, timeout=600) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if not chunk.get("choices") or not chunk["choices"][0].get("text"):
                continue
            now = time.perf_counter()
            if first is None:
                first = now
            else:
                samples["itl"].append(now - last)
            last = now
    samples["ttft"].append(first - start)
    # End-of-text tokens are banned: every request generates exactly MAX_TOKENS.
    samples["tokens"] += MAX_TOKENS


async def load(url, models, clients, per_client, ban):
    samples = {"ttft": [], "itl": [], "tokens": 0}
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=clients + 4)) as client:
        async def client_loop(c):
            for i in range(per_client):
                prompt = PROMPTS[(c * per_client + i) % len(PROMPTS)]
                await one_request(client, url, models[(c + i) % len(models)], prompt, ban, samples)

        start = time.perf_counter()
        await asyncio.gather(*(client_loop(c) for c in range(clients)))
        wall = time.perf_counter() - start
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")
    return {"tok_s": samples["tokens"] / wall, "wall_s": wall,
            "ttft_p50": pct(samples["ttft"], 50), "ttft_p95": pct(samples["ttft"], 95),
            "itl_p50": pct(samples["itl"], 50), "itl_p95": pct(samples["itl"], 95)}


def summarize(runs):
    best = max(runs, key=lambda r: r["tok_s"])
    med = statistics.median(r["tok_s"] for r in runs)
    return best, med


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hone", default="target/release/hone")
    p.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--no-llama", action="store_true", help="measure Hone alone")
    p.add_argument("--json")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    hidden, kv_dim, layers, eos = model_shapes(args.model)
    ban = sorted(set(eos + [0, 2]))
    tmp = tempfile.mkdtemp()
    adapters = []
    for i in range(4):
        d = os.path.join(tmp, f"a{i}")
        write_adapter(d, hidden, kv_dim, layers, seed=i)
        adapters += ["--adapter", f"a{i}={d}"]
    env = dict(os.environ, RAYON_NUM_THREADS=str(THREADS), OMP_NUM_THREADS=str(THREADS))
    hone_port, llama_port = free_port(), free_port()
    hone = subprocess.Popen([args.hone, "serve", "--model", args.model, "--served-name", "m",
                             "--port", str(hone_port), "--max-concurrency", "16", *adapters],
                            env=env, stderr=subprocess.DEVNULL)
    servers = {"hone": (hone, f"http://127.0.0.1:{hone_port}")}
    if not args.no_llama:
        llama = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", args.model,
                                  "--model_alias", "m", "--n_threads", str(THREADS), "--n_ctx", "2048",
                                  "--host", "127.0.0.1", "--port", str(llama_port),
                                  # By default a new request cancels the running stream.
                                  "--interrupt_requests", "False"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        servers["llama.cpp"] = (llama, f"http://127.0.0.1:{llama_port}")
    try:
        for proc, base in servers.values():
            wait_ready(base + "/v1/models", proc)
        print(f"CPU: {cpu_model()}; {THREADS} threads each; load average {os.getloadavg()[0]:.2f} before")
        results = {}
        for rep in range(args.reps):
            for c in levels:
                for name, (_, base) in servers.items():
                    try:
                        r = asyncio.run(load(base + "/v1/completions", ["m"], c, args.requests_per_client, ban))
                    except httpx.HTTPError as e:
                        sys.exit(f"{name} at {c} clients: {e!r}")
                    results.setdefault((name, c), []).append(r)
            for label, models in (("base x16", ["m"]), ("4 adapters x16", ["a0", "a1", "a2", "a3"])):
                r = asyncio.run(load(servers["hone"][1] + "/v1/completions", models, 16, args.requests_per_client, ban))
                results.setdefault(("hone " + label, 16), []).append(r)
        print(f"{'server':<22} {'clients':>7} {'tok/s best':>10} {'median':>8} {'TTFT p50':>9} {'p95':>7} "
              f"{'ITL p50':>8} {'p95':>7}  (ms)")
        table = []
        for (name, c), runs in results.items():
            best, med = summarize(runs)
            print(f"{name:<22} {c:>7} {best['tok_s']:>10.1f} {med:>8.1f} {best['ttft_p50']*1e3:>9.0f} "
                  f"{best['ttft_p95']*1e3:>7.0f} {best['itl_p50']*1e3:>8.1f} {best['itl_p95']*1e3:>7.1f}")
            table.append({"server": name, "clients": c, "best": best, "median_tok_s": med, "runs": runs})
        rss = {name: peak_rss_mib(proc.pid) for name, (proc, _) in servers.items()}
        print("peak RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"cpu": cpu_model(), "rss_mib": rss, "table": table}, f, indent=1)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
