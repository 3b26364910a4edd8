"""Batch-1 decode and prefill speed: Hone vs llama.cpp (llama-cpp-python), 2 threads, as ratios.

Per model: decode (a 100-token prompt, then exactly 128 greedy new tokens, EOS ignored) gives the
prompt and decode tok/s; prefill (a 512-token prompt, 1 new token) gives the prefill tok/s; plus
the load time and the peak RSS of each process. Each measurement runs in its own process, the
engines interleaved, --reps times each; best and median are reported.
Usage: /opt/ref/venv/bin/python scripts/bench/decode.py [--model FILE.gguf]... [--reps 3]
           [--hone-exact] [--no-hone] [--json results.json]
The Hone binary is built first: cargo build --release (or pass --hone PATH).
Self-check of the timings parser: python3 scripts/bench/decode.py --self-test

Hone runs as `hone generate --model M --prompt TEXT --max-new-tokens N --ignore-eos --timings
[--exact]` with RAYON_NUM_THREADS set, and reports on stderr (the first new token comes from the
prompt pass, each decode step is one more single-token forward):
    timings: load 0.052 s; prompt 100 tokens in 0.123 s (813.0 tok/s); 127 decode steps in 0.456 s (278.5 tok/s)
llama.cpp runs through llama-cpp-python's low-level path with the same phases timed by wall clock:
the Llama constructor (load), eval(prompt tokens) (prompt/prefill), then 127 x (argmax of the last
logits, eval([token])) (decode). Its own perf counters (llama_perf_context) go in the JSON too.
The prompts are English text cut to exactly 100 and 512 tokens by llama.cpp's tokenizer (BOS added
only when the model asks for it); Hone's own prompt token count is checked against it.
Peak RSS (ru_maxrss) counts the pages of an mmap-ed model file that were touched: llama.cpp maps the
file and keeps a repacked copy of its Q4_0/Q4_K weights, so it shows about twice the file size, plus
~40 MB for its Python interpreter and numpy. Run on an idle machine: with a busy core, llama.cpp's
OpenMP threads spin at every barrier and its speed drops many times over.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
HONE = os.path.join(ROOT, "target", "release", "hone")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")
DECODE_PROMPT_TOKENS, NEW_TOKENS, PREFILL_TOKENS = 100, 128, 512
PARAGRAPH = (
    "The lighthouse stood at the end of a long stone pier, and every evening the keeper climbed its "
    "one hundred and twelve steps to light the lamp. Ships passing in the night relied on its beam to "
    "find the narrow channel between the rocks. In winter the storms came from the north, bringing "
    "waves that broke over the pier and sent spray as high as the gallery. The keeper kept a careful "
    "log of the weather, the ships he saw, and the hours the lamp burned, and once a month a boat "
    "brought oil, bread, letters and news from the town across the bay. "
)
TIMINGS = re.compile(
    r"timings: load (?P<load_s>[0-9.]+) s; "
    r"prompt (?P<prompt_tokens>\d+) tokens in (?P<prompt_s>[0-9.]+) s \((?P<prompt_tps>[^ )]+) tok/s\); "
    r"(?P<decode_steps>\d+) decode steps in (?P<decode_s>[0-9.]+) s \((?P<decode_tps>[^ )]+) tok/s\)"
)


def parse_timings(stderr):
    """The numbers of the last `timings:` line in Hone's stderr, or None.

    >>> t = parse_timings("note: x\\ntimings: load 0.052 s; prompt 100 tokens in 0.123 s (813.0 tok/s); "
    ...                   "127 decode steps in 0.456 s (278.5 tok/s)\\n")
    >>> t == {"load_s": 0.052, "prompt_tokens": 100, "prompt_s": 0.123, "prompt_tps": 813.0,
    ...       "decode_steps": 127, "decode_s": 0.456, "decode_tps": 278.5}
    True
    >>> parse_timings("timings: load 1.5 s; prompt 512 tokens in 2.000 s (256.0 tok/s); "
    ...               "0 decode steps in 0.000 s (NaN tok/s)")["prompt_tps"]
    256.0
    >>> parse_timings("error: no such file") is None
    True
    """
    matches = list(TIMINGS.finditer(stderr))
    if not matches:
        return None
    m = matches[-1].groupdict()
    return {k: int(v) if k in ("prompt_tokens", "decode_steps") else float(v) for k, v in m.items()}


def cpu_info():
    """The CPU model name and which of CPU_FLAGS it has, from /proc/cpuinfo."""
    name, flags = "unknown", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {"model_name": name, "cores": os.cpu_count(), "flags": {f: f in flags for f in CPU_FLAGS}}


def fit_prompt(llm, n_tokens):
    """ASCII text that llama.cpp's tokenizer turns into exactly n_tokens tokens (BOS as the model does)."""
    text = "".join(f"Part {i + 1}. {PARAGRAPH}" for i in range(n_tokens // 60 + 2))
    tokens = llm.tokenize(text.encode(), add_bos=True, special=False)
    bos = len(tokens) - len(llm.tokenize(text.encode(), add_bos=False, special=False))
    for cut in sorted(range(n_tokens - 8, n_tokens + 8), key=lambda c: abs(c - n_tokens)):
        candidate = llm.detokenize(tokens[bos:cut]).decode()
        if len(llm.tokenize(candidate.encode(), add_bos=True, special=False)) == n_tokens:
            return candidate
    sys.exit(f"could not build a {n_tokens}-token prompt")


def llama_cpp_worker(model, text, n_new, threads):
    """Time load, prompt eval and n_new - 1 greedy single-token evals; print one JSON line."""
    import llama_cpp
    import numpy as np

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=1024,
                          n_batch=512, seed=0, verbose=False)
    load_s = time.perf_counter() - t0
    tokens = llm.tokenize(text.encode(), add_bos=True, special=False)
    n_vocab = llm.n_vocab()

    def argmax():
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).argmax())

    t0 = time.perf_counter()
    llm.eval(tokens)
    ids = [argmax()]
    prompt_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n_new - 1):
        llm.eval([ids[-1]])
        ids.append(argmax())
    decode_s = time.perf_counter() - t0
    perf = llama_cpp.llama_perf_context(llm.ctx)
    print(json.dumps({
        "load_s": load_s, "prompt_tokens": len(tokens), "prompt_s": prompt_s,
        "prompt_tps": len(tokens) / prompt_s, "decode_steps": n_new - 1, "decode_s": decode_s,
        "decode_tps": (n_new - 1) / decode_s if n_new > 1 else None, "ids": ids[:16],
        "perf": {k: getattr(perf, k) for k in ("t_load_ms", "t_p_eval_ms", "n_p_eval", "t_eval_ms", "n_eval")},
    }))


def run_process(cmd, threads):
    """Run cmd with the thread count pinned; return (exit status, stdout, stderr, peak RSS in MB)."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), usage.ru_maxrss / 1024


def measure(engine, a, model, text, n_new):
    """One measurement in a fresh process: the timings dict plus peak_rss_mb."""
    if engine == "llama.cpp":
        cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(a.threads),
               "--worker", model, text, str(n_new)]
    else:
        cmd = [a.hone, "generate", "--model", model, "--prompt", text, "--max-new-tokens", str(n_new),
               "--ignore-eos", "--timings"] + (["--exact"] if engine == "hone --exact" else [])
    rc, out, err, rss = run_process(cmd, a.threads)
    if rc != 0:
        sys.exit(f"{engine} failed (exit {rc}) on {model}:\n{err[-2000:]}")
    if engine == "llama.cpp":
        result = json.loads(out.strip().splitlines()[-1])
    else:
        result = parse_timings(err)
        if result is None:
            sys.exit(f"{engine}: no timings line on stderr:\n{err[-2000:]}")
    result["peak_rss_mb"] = rss
    return result


def warm_page_cache(path):
    """Read the file once so that no engine pays for the first read from disk."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def summarize(runs):
    """Per engine: medians of load and prompt speed, best/median decode and prefill, max peak RSS."""
    out = {}
    for engine in dict.fromkeys(r["engine"] for r in runs):
        mine = [r for r in runs if r["engine"] == engine]
        dec = [r for r in mine if r["kind"] == "decode"]
        pre = [r for r in mine if r["kind"] == "prefill"]
        out[engine] = {
            "load_s_median": statistics.median(r["load_s"] for r in mine),
            "prompt_tps_median": statistics.median(r["prompt_tps"] for r in dec),
            "decode_tps_best": max(r["decode_tps"] for r in dec),
            "decode_tps_median": statistics.median(r["decode_tps"] for r in dec),
            "prefill_tps_best": max(r["prompt_tps"] for r in pre),
            "prefill_tps_median": statistics.median(r["prompt_tps"] for r in pre),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
        }
    return out


def print_table(model, summary):
    """The per-model table and the Hone/llama.cpp ratios."""
    print(f"\n{os.path.basename(model)}")
    print(f"{'engine':<14}{'load s':>8}{'prompt t/s':>12}{'decode best':>13}{'decode med':>12}"
          f"{'prefill best':>14}{'prefill med':>13}{'peak RSS MB':>13}")
    for engine, s in summary.items():
        print(f"{engine:<14}{s['load_s_median']:>8.3f}{s['prompt_tps_median']:>12.1f}{s['decode_tps_best']:>13.1f}"
              f"{s['decode_tps_median']:>12.1f}{s['prefill_tps_best']:>14.1f}{s['prefill_tps_median']:>13.1f}"
              f"{s['peak_rss_mb']:>13.0f}")
    ref = summary.get("llama.cpp")
    for engine, s in summary.items():
        if ref is None or engine == "llama.cpp":
            continue
        print(f"{engine}/llama.cpp: decode {s['decode_tps_best'] / ref['decode_tps_best']:.2f} best, "
              f"{s['decode_tps_median'] / ref['decode_tps_median']:.2f} median; "
              f"prefill-512 {s['prefill_tps_best'] / ref['prefill_tps_best']:.2f} best, "
              f"{s['prefill_tps_median'] / ref['prefill_tps_median']:.2f} median")


def bench_model(a, model, engines):
    """All measurements of one model, interleaved by repetition; return its record for the JSON."""
    from llama_cpp import Llama

    vocab = Llama(model_path=model, vocab_only=True, verbose=False)
    prompts = {"decode": (fit_prompt(vocab, DECODE_PROMPT_TOKENS), NEW_TOKENS),
               "prefill": (fit_prompt(vocab, PREFILL_TOKENS), 1)}
    del vocab
    warm_page_cache(model)
    runs = []
    for rep in range(a.reps):
        for engine in engines:
            for kind, (text, n_new) in prompts.items():
                r = measure(engine, a, model, text, n_new)
                r.update(engine=engine, kind=kind, rep=rep)
                runs.append(r)
                expected = DECODE_PROMPT_TOKENS if kind == "decode" else PREFILL_TOKENS
                if r["prompt_tokens"] != expected or r["decode_steps"] != n_new - 1:
                    print(f"WARNING: {engine} {kind}: {r['prompt_tokens']} prompt tokens and "
                          f"{r['decode_steps']} decode steps, expected {expected} and {n_new - 1}")
                print(f"  rep {rep} {engine:<13} {kind:<8} load {r['load_s']:.3f} s, prompt "
                      f"{r['prompt_tps']:.1f} tok/s" + (f", decode {r['decode_tps']:.1f} tok/s" if n_new > 1 else "")
                      + f", RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    summary = summarize(runs)
    print_table(model, summary)
    perf = [r["perf"] for r in runs if r["engine"] == "llama.cpp" and r["kind"] == "decode"]
    if perf:
        best = max(perf, key=lambda p: p["n_eval"] / p["t_eval_ms"])
        print(f"llama.cpp's own counters (best decode run): prompt {best['n_p_eval'] / best['t_p_eval_ms'] * 1e3:.1f} "
              f"tok/s, decode {best['n_eval'] / best['t_eval_ms'] * 1e3:.1f} tok/s")
    return {"model": model, "size_bytes": os.path.getsize(model), "prompts": {k: v[0] for k, v in prompts.items()},
            "runs": runs, "summary": summary}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help=f"GGUF file, repeatable (default: {DEFAULT_MODEL})")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hone", default=HONE, help="the hone binary (default: target/release/hone)")
    ap.add_argument("--hone-exact", action="store_true", help="also measure `hone generate --exact` (the f32 path)")
    ap.add_argument("--no-hone", action="store_true", help="measure llama.cpp only")
    ap.add_argument("--json", help="write every raw number to this file")
    ap.add_argument("--self-test", action="store_true", help="run the doctests of this script and exit")
    ap.add_argument("--worker", nargs=3, metavar=("MODEL", "TEXT", "N_NEW"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return llama_cpp_worker(a.worker[0], a.worker[1], int(a.worker[2]), a.threads)
    if a.self_test:
        import doctest

        failed, tried = doctest.testmod()
        print(f"self-test: {tried - failed}/{tried} passed")
        return sys.exit(1 if failed else 0)
    if a.reps < 1:
        sys.exit("--reps must be at least 1")
    if a.reps < 3:
        print(f"note: {a.reps} repetition(s): a scale check, not a comparison (best and median need 3 or more)")
    models = a.model or [DEFAULT_MODEL]
    for m in models:
        if not os.path.exists(m):
            sys.exit(f"{m} is missing (the default model comes from scripts/fetch-model.sh)")
    engines = [] if a.no_hone else ["hone"] + (["hone --exact"] if a.hone_exact else [])
    if engines and not os.access(a.hone, os.X_OK):
        sys.exit(f"{a.hone} is missing: cargo build --release (or pass --no-hone)")
    engines.append("llama.cpp")

    cpu = cpu_info()
    print(f"cpu: {cpu['model_name']}, {cpu['cores']} cores; "
          + ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in cpu["flags"].items()))
    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    if load_before[0] > 0.5:
        print("WARNING: the 1-minute load average is above 0.5: the machine is not idle, numbers will be noisy")
    print(f"threads {a.threads}, reps {a.reps}, engines {engines}; decode: {DECODE_PROMPT_TOKENS}-token prompt + "
          f"{NEW_TOKENS} new tokens; prefill: {PREFILL_TOKENS}-token prompt + 1 new token")
    results = [bench_model(a, m, engines) for m in models]
    load_after = os.getloadavg()
    print(f"\nload average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} "
          f"(this benchmark's own {a.threads} threads count in it)")
    print("llama.cpp's peak RSS includes its Python interpreter and numpy (~40 MB) and the mmap-ed model file")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu": cpu, "threads": a.threads, "reps": a.reps, "loadavg_before": load_before,
                       "loadavg_after": load_after, "models": results}, f, indent=1)
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
