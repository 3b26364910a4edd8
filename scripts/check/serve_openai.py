"""Drives `hone serve` with the official `openai` Python client, by hand or in a session:

    /opt/ref/venv/bin/python scripts/check/serve_openai.py --hone target/release/hone \
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf [--clients 32]

Starts the server on a free loopback port with an API key, then checks through the client:
chat (plain and streamed, equal at temperature 0), n=2, a stop string, log-probabilities, the
completions API, and that each error arrives as the client's own exception class (bad key ->
AuthenticationError, unknown model -> NotFoundError with code model_not_found, over-long prompt
-> BadRequestError). Then a bounded load test: --clients concurrent streaming chat requests on
varied prompts, nothing dropped, every answer non-empty; and the same on servers started with
--batch-invariant and with --exact, where each answer must equal the same prompt's answer asked
alone. (On the default quantized path it need not: a lone sequence's step uses the single-row
kernel and a batch's the multi-row one, which sum each row in another order, so greedy answers
may part after some tokens, as llama.cpp's and vLLM's batched answers may.) Exits non-zero on
the first mismatch.
"""

import argparse
import asyncio
import re
import subprocess
import sys
import time

import openai

KEY = "check-key"
QUESTIONS = [
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Name a primary color.",
    "Who wrote Hamlet?",
    "Translate 'good morning' to Spanish.",
    "What is the boiling point of water?",
]


def start(hone, model, name, *extra):
    proc = subprocess.Popen(
        [hone, "serve", "--model", model, "--served-name", name, "--port", "0",
         "--api-key", KEY, "--max-concurrency", "16", "--max-queue", "64", *extra],
        stderr=subprocess.PIPE, text=True,
    )
    for line in proc.stderr:
        m = re.search(r"listening on (http://\S+)", line)
        if m:
            return proc, m.group(1)
    sys.exit("hone serve exited before listening")


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        sys.exit(1)


def functional(client, name):
    messages = [{"role": "user", "content": QUESTIONS[0]}]
    plain = client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=32)
    text = plain.choices[0].message.content
    check(plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens, "usage adds up")
    stream = client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=32,
                                            stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    check("".join(pieces) == text, f"stream equals plain answer: {text!r}")
    check(finish == plain.choices[0].finish_reason, f"finish_reason {finish}")
    check(usage is not None and usage.completion_tokens == plain.usage.completion_tokens, "usage chunk")

    two = client.chat.completions.create(model=name, messages=messages, n=2, temperature=1.0, seed=3, max_tokens=16)
    check([c.index for c in two.choices] == [0, 1], "n=2 gives two choices")

    words = text.split()
    if len(words) >= 3:
        stop = " " + words[2]
        cut = client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=32, stop=[stop])
        check(cut.choices[0].finish_reason == "stop" and stop not in cut.choices[0].message.content
              and text.startswith(cut.choices[0].message.content), f"stop {stop!r} cuts the text")

    lp = client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=8,
                                        logprobs=True, top_logprobs=2)
    content = lp.choices[0].logprobs.content
    check(len(content) == lp.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content),
          "logprobs: one entry per token, two alternatives each")
    check(all(t.logprob <= 0 and t.top_logprobs[0].logprob == t.logprob for t in content),
          "greedy logprobs: chosen token is the most likely")

    comp = client.completions.create(model=name, prompt="The capital of France is", temperature=0, max_tokens=8)
    check(comp.object == "text_completion" and comp.choices[0].text, f"completions: {comp.choices[0].text!r}")

    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong")
    try:
        bad.models.list()
        check(False, "a wrong key is refused")
    except openai.AuthenticationError:
        check(True, "a wrong key raises AuthenticationError")
    try:
        client.chat.completions.create(model="nope", messages=messages)
        check(False, "an unknown model is refused")
    except openai.NotFoundError as e:
        check(e.code == "model_not_found", "an unknown model raises NotFoundError (model_not_found)")
    try:
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "word " * 9000}])
        check(False, "an over-long prompt is refused")
    except openai.BadRequestError as e:
        check(e.code == "context_length_exceeded", "an over-long prompt raises BadRequestError")
    check([m.id for m in client.models.list().data] == [name], "models.list")


async def load_test(base_url, name, clients, same_as_alone):
    client = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=600)

    async def ask(question, stream):
        messages = [{"role": "user", "content": question}]
        if not stream:
            r = await client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=48)
            return r.choices[0].message.content
        pieces = []
        async for chunk in await client.chat.completions.create(
                model=name, messages=messages, temperature=0, max_tokens=48, stream=True):
            pieces.extend(c.delta.content or "" for c in chunk.choices)
        return "".join(pieces)

    alone = {q: await ask(q, False) for q in QUESTIONS}
    start = time.perf_counter()
    asked = [QUESTIONS[i % len(QUESTIONS)] for i in range(clients)]
    answers = await asyncio.gather(*(ask(q, True) for q in asked), return_exceptions=True)
    seconds = time.perf_counter() - start
    failed = [a for a in answers if isinstance(a, Exception)]
    check(not failed, f"{clients} concurrent streams, none dropped ({failed[:1]})")
    check(all(answers), f"{clients} concurrent answers, none empty ({seconds:.1f} s)")
    if same_as_alone:
        wrong = [q for q, a in zip(asked, answers) if a != alone[q]]
        check(not wrong, f"{clients} concurrent answers equal the answers asked alone ({seconds:.1f} s)")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--hone", default="target/release/hone")
    p.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--clients", type=int, default=32)
    args = p.parse_args()
    proc, base_url = start(args.hone, args.model, "smol")
    try:
        client = openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)
        functional(client, "smol")
        asyncio.run(load_test(base_url, "smol", args.clients, same_as_alone=False))
    finally:
        proc.terminate()
        proc.wait()
    for flag in ["--batch-invariant", "--exact"]:
        print(f"-- again with {flag}, where a batch must not change an answer")
        proc, base_url = start(args.hone, args.model, "smol", flag)
        try:
            asyncio.run(load_test(base_url, "smol", args.clients, same_as_alone=True))
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
