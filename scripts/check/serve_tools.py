"""Function calling through `hone serve` with the official `openai` client:

    /opt/ref/venv/bin/python scripts/check/serve_tools.py --hone target/release/hone \
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf [--adapter DIR]

Serves the model (with `--adapter`, e.g. a LoRA trained on LLaMA-Factory's glaive_toolcall data,
served as `tools`) through Qwen2.5's chat template (fixtures/chat/qwen2.5.jinja), asks questions
that need a tool, plain and streamed at temperature 0, and checks the OpenAI shapes: a
`tool_calls` answer has `finish_reason: "tool_calls"`, each call an id, a function name offered
and JSON arguments; the streamed calls (accumulated from the deltas, as the client does) equal
the plain ones. Then sends the tool's result back and prints the final answer. Whether the model
calls a tool at all is the model's doing: the script prints each answer and counts the calls.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys

import openai

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOOLS = [
    {"type": "function", "function": {
        "name": "get_current_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "The city name"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "calculate_bmi", "description": "Calculate the Body Mass Index",
        "parameters": {"type": "object", "properties": {
            "weight": {"type": "number", "description": "Weight in kilograms"},
            "height": {"type": "number", "description": "Height in meters"}},
            "required": ["weight", "height"]}}},
]
QUESTIONS = [
    "What's the weather like in Paris right now?",
    "Can you calculate my BMI? I weigh 70 kg and I am 1.75 m tall.",
    "Hi, I need the current weather in Tokyo, please.",
    "My weight is 82 kilograms and my height is 1.8 meters. What is my BMI?",
]


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        sys.exit(1)


def streamed(client, name, messages):
    calls, content, finish = {}, [], None
    for chunk in client.chat.completions.create(model=name, messages=messages, tools=TOOLS, temperature=0,
                                                max_tokens=128, stream=True):
        for c in chunk.choices:
            content.append(c.delta.content or "")
            for d in c.delta.tool_calls or []:
                call = calls.setdefault(d.index, {"name": "", "arguments": ""})
                call["name"] += d.function.name or ""
                call["arguments"] += d.function.arguments or ""
            finish = c.finish_reason or finish
    return "".join(content), [calls[k] for k in sorted(calls)], finish


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hone", default=str(ROOT / "target" / "release" / "hone"))
    parser.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--adapter")
    args = parser.parse_args()
    command = [args.hone, "serve", "--model", args.model, "--port", "0", "--served-name", "base",
               "--chat-template", str(ROOT / "fixtures" / "chat" / "qwen2.5.jinja")]
    name = "base"
    if args.adapter:
        command += ["--adapter", f"tools={args.adapter}"]
        name = "tools"
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                break
        else:
            sys.exit("hone serve exited before listening")
        client = openai.OpenAI(base_url=m.group(1), api_key="none")
        offered = {t["function"]["name"] for t in TOOLS}
        called = 0
        for question in QUESTIONS:
            messages = [{"role": "user", "content": question}]
            plain = client.chat.completions.create(model=name, messages=messages, tools=TOOLS, temperature=0,
                                                   max_tokens=128)
            choice = plain.choices[0]
            calls = choice.message.tool_calls or []
            print(f"\n{question}\n  -> finish {choice.finish_reason}, content {choice.message.content!r}, "
                  f"calls {[(c.function.name, c.function.arguments) for c in calls]}")
            text, stream_calls, finish = streamed(client, name, messages)
            check(finish == choice.finish_reason, f"streamed finish_reason {finish}")
            check(stream_calls == [{"name": c.function.name, "arguments": c.function.arguments} for c in calls],
                  "streamed calls equal the plain ones")
            check(text == (choice.message.content or ""), "streamed content equals the plain content")
            if not calls:
                continue
            called += 1
            check(choice.finish_reason == "tool_calls", "finish_reason tool_calls")
            for c in calls:
                check(c.id.startswith("call_") and c.function.name in offered, f"call {c.function.name} offered")
                check(isinstance(json.loads(c.function.arguments), dict), "arguments are a JSON object")
            result = {"temperature_c": 18, "condition": "sunny"} if "weather" in calls[0].function.name else {"bmi": 22.9}
            follow = messages + [choice.message.model_dump(exclude_none=True),
                                 {"role": "tool", "tool_call_id": calls[0].id, "content": json.dumps(result)}]
            final = client.chat.completions.create(model=name, messages=follow, tools=TOOLS, temperature=0,
                                                   max_tokens=64)
            print(f"  -> after the result: {final.choices[0].message.content!r} ({final.choices[0].finish_reason})")
        print(f"\n{called} of {len(QUESTIONS)} questions answered with a tool call")
    finally:
        proc.kill()


if __name__ == "__main__":
    main()
