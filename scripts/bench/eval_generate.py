"""`hone eval generate` vs transformers' batched `generate` on the same rows, in one run, as a ratio.

Both answer the first --rows rows of an alpaca file greedily through the model's chat template,
--batch-size rows at a time (prompts sorted by length and left-padded, the same batches on both
sides), with the peak RSS of each process; then how many answers are identical.
Usage: /opt/ref/venv/bin/python scripts/bench/eval_generate.py [--rows 32] [--batch-size 8]
The Hone binary is built first: cargo build --release -p hone-cli
"""
import argparse
import json
import os
import sys
import tempfile
import time

from core import ROOT, run_worker

HONE = os.path.join(ROOT, "target", "release", "hone")


def torch_worker(model, data, max_new_tokens, batch_size, out):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    transformers.utils.logging.disable_progress_bar()
    d, f = os.path.split(os.path.abspath(model))
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    tok.padding_side = "left"
    rows = [json.loads(line) for line in open(data)]
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": "\n".join(filter(None, [r["instruction"], r["input"]]))}],
                                tokenize=False, add_generation_prompt=True)
        for r in rows
    ]
    lengths = [len(tok(p, add_special_tokens=False).input_ids) for p in prompts]
    order = sorted(range(len(rows)), key=lambda i: lengths[i])
    answers = [None] * len(rows)
    t0 = time.perf_counter()
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        enc = tok([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = m.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        for i, ids in zip(batch, gen[:, enc.input_ids.shape[1]:]):
            answers[i] = tok.decode(ids, skip_special_tokens=True)
    seconds = time.perf_counter() - t0
    with open(out, "w") as fh:
        for r, a in zip(rows, answers):
            fh.write(json.dumps({"predict": a, "label": r["output"]}) + "\n")
    print(json.dumps({"seconds": seconds, "rows_per_second": len(rows) / seconds}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--data", default=os.path.join(ROOT, "examples", "identity", "identity.json"))
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--worker", nargs=2, metavar=("DATA", "OUT"))
    a = ap.parse_args()
    if a.worker:
        return torch_worker(a.model, a.worker[0], a.max_new_tokens, a.batch_size, a.worker[1])

    tmp = tempfile.mkdtemp()
    text = open(a.data).read()
    rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
    data = os.path.join(tmp, "rows.jsonl")
    with open(data, "w") as fh:
        for r in rows[: a.rows]:
            fh.write(json.dumps({"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}) + "\n")
    hone_out, torch_out = os.path.join(tmp, "hone.jsonl"), os.path.join(tmp, "torch.jsonl")
    hone = run_worker([HONE, "eval", "generate", "--model", a.model, "--data", data, "--json",
                       "--max-new-tokens", str(a.max_new_tokens), "--batch-size", str(a.batch_size), "--out", hone_out])
    me = [sys.executable, os.path.abspath(__file__), "--model", a.model, "--max-new-tokens", str(a.max_new_tokens),
          "--batch-size", str(a.batch_size), "--worker"]
    torch = run_worker(me + [data, torch_out])
    same = sum(json.loads(h)["predict"] == json.loads(t)["predict"]
               for h, t in zip(open(hone_out), open(torch_out)))
    print(f"{a.rows} rows, batch {a.batch_size}, max {a.max_new_tokens} new tokens; identical answers: {same}/{a.rows}")
    print(f"{'':<8}{'rows/s':>10}{'peak RSS MB':>13}")
    for name, r in [("hone", hone), ("torch", torch)]:
        print(f"{name:<8}{r['rows_per_second']:>10.3f}{r['peak_rss_mb']:>13.0f}")
    print(f"ratio {hone['rows_per_second'] / torch['rows_per_second']:.2f}x")


if __name__ == "__main__":
    main()
