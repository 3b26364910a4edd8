"""Golden fixture for Hone's training-data masking (crates/hone/src/data/encode.rs).

Run from anywhere with the reference venv:
    OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/data_masking.py

Writes fixtures/data/masking.json: for each (tokenizer, chat template) pair and each conversation,
the rendered text, the token ids and the labels, computed here independently of Hone:

- text: transformers' apply_chat_template(messages, tokenize=False) (Jinja2, not minijinja);
- assistant spans: for each assistant message, the characters between the render of the messages
  before it with add_generation_prompt=True and the render through it without; each render is
  asserted to be a prefix of the whole. When the render through it is not (Qwen3 drops the
  <think> block of turns answered before the last user query, and gives a tool call an empty one
  only when it is last), the span ends where the next messages' own render (the messages up to
  the next assistant turn, alone and without tools) ends the render through those messages;
- ids: the `tokenizers` engine transformers builds from the GGUF, on the text, with
  add_special_tokens=False, and its character offsets;
- labels: the id of every token whose offsets overlap a span (a zero-width token: whose start lies
  in one), else -100. No truncation (cutoff large).

Pairs: tiny-spm.gguf (SentencePiece BPE with byte fallback) and smollm2-tokenizer.gguf (byte-level
BPE) with their own ChatML templates, and smollm2 with the Llama-2 chat template of
fixtures/chat/llama2.json (BOS per user turn, content stripped, response after a space) and with
Qwen3's template of fixtures/chat/qwen3.json (single-turn conversations), and with Qwen2.5's of
fixtures/chat/qwen2.5.json; the `tool_calls` conversation (assistant `tool_calls`, two tool results)
is rendered with its tools (`tools=`) through Qwen2.5's and Qwen3's templates.
"""

import json
from pathlib import Path

from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "data" / "masking.json"
IGNORE_INDEX = -100


def msg(role, content):
    return {"role": role, "content": content}


CONVERSATIONS = {
    "single": [msg("user", "What is your name?"), msg("assistant", "I am Kestrel, made by the Hone project.")],
    "system_zh": [
        msg("system", "你是一个乐于助人的助手。"),
        msg("user", "你是谁？"),
        msg("assistant", "我是 Kestrel，由 Hone 项目开发。"),
    ],
    "multi_turn": [
        msg("system", "You are terse."),
        msg("user", "Hi!"),
        msg("assistant", "  Hello! How can I help?  "),
        msg("user", "List two crabs 🦀.\nKeep it short."),
        msg("assistant", "Two lines:\n- king crab\n  - hermit crab 🦀"),
    ],
    "thinking": [
        msg("user", "What is 3*4?"),
        msg("assistant", "<think>\nThree fours.\n</think>\n\n12"),
        msg("user", "And 5*6?"),
        msg("assistant", "<think>\nFive sixes.\n</think>\n\n30"),
    ],
    "tool": [
        msg("user", "Weather in Paris?"),
        msg("assistant", '{"name": "weather", "arguments": {"city": "Paris"}}'),
        msg("tool", '{"temp_c": 21}'),
        msg("assistant", "It is 21 °C in Paris."),
    ],
    # Real tool calls, rendered with the tools the conversation lists (TOOLS).
    "tool_calls": [
        msg("user", "Weather in Paris and Oslo?"),
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}]},
        msg("tool", '{"temp_c": 21}'),
        msg("tool", '{"temp_c": 12}'),
        msg("assistant", "Paris 21 °C, Oslo 12 °C."),
    ],
}
TOOLS = {
    "tool_calls": [{"type": "function", "function": {
        "name": "weather", "description": "Current weather.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
}

PAIRS = {
    # name: (tokenizer GGUF, template source or None for the tokenizer's own, conversations)
    # Their own ChatML templates render no tools or tool calls (Hone refuses such rows).
    "tiny-spm": ("tiny-spm.gguf", None, [c for c in CONVERSATIONS if c not in TOOLS]),
    "smollm2": ("smollm2-tokenizer.gguf", None, [c for c in CONVERSATIONS if c not in TOOLS]),
    # Llama-2's template knows only system/user/assistant turns.
    "smollm2-llama2": ("smollm2-tokenizer.gguf", "llama2", ["single", "system_zh", "multi_turn"]),
    # Qwen3's template gives the final assistant turn a <think></think> block, which the labels
    # cover, and renders earlier assistant turns without it once a later user turn follows.
    "smollm2-qwen3": ("smollm2-tokenizer.gguf", "qwen3",
                      ["single", "system_zh", "multi_turn", "thinking", "tool", "tool_calls"]),
    # Qwen2.5's template lists the tools in the system turn and renders calls as <tool_call> blocks.
    "smollm2-qwen2.5": ("smollm2-tokenizer.gguf", "qwen2.5", ["single", "tool_calls"]),
}


def overlaps(offset, span):
    start, end = offset
    if start == end:
        return span[0] <= start < span[1]
    return start < span[1] and end > span[0]


def encode(tok, template, messages, tools):
    render = lambda ms, gen, tools=tools: tok.apply_chat_template(  # noqa: E731
        ms, chat_template=template, tokenize=False, add_generation_prompt=gen, tools=tools
    )
    text = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt, through = render(messages[:i], True), render(messages[: i + 1], False)
        assert text.startswith(prompt), (i, prompt, text)
        if text.startswith(through):
            end = len(through)
        else:
            # The messages up to the next assistant turn, rendered alone without the tools (which a
            # template lists in a header of its own).
            nxt = next((k for k in range(i + 1, len(messages)) if messages[k]["role"] == "assistant"), len(messages))
            with_next, alone = render(messages[:nxt], False), render(messages[i + 1 : nxt], False, None)
            assert text.startswith(with_next) and with_next.endswith(alone), (i, with_next, alone)
            end = len(with_next) - len(alone)
        spans.append((len(prompt), end))
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = [
        tid if any(overlaps(off, s) for s in spans) else IGNORE_INDEX
        for tid, off in zip(enc["input_ids"], enc["offset_mapping"])
    ]
    return {"text": text, "spans": spans, "input_ids": enc["input_ids"], "labels": labels}


def main():
    fixture = {"generator": "scripts/golden/data_masking.py", "pairs": {}}
    for name, (gguf_name, template_name, conv_names) in PAIRS.items():
        tok = AutoTokenizer.from_pretrained(ROOT / "fixtures" / "tokenizer", gguf_file=gguf_name)
        template = None
        if template_name is not None:
            chat = json.loads((ROOT / "fixtures" / "chat" / f"{template_name}.json").read_text(encoding="utf-8"))
            template = chat["source"]
        cases = []
        for conv_name in conv_names:
            case = {"name": conv_name, "messages": CONVERSATIONS[conv_name]}
            if conv_name in TOOLS:
                case["tools"] = TOOLS[conv_name]
            case.update(encode(tok, template, CONVERSATIONS[conv_name], TOOLS.get(conv_name)))
            n_labelled = sum(label != IGNORE_INDEX for label in case["labels"])
            assert 0 < n_labelled < len(case["labels"]), (name, conv_name)
            cases.append(case)
            print(f"{name:16} {conv_name:12} {len(case['input_ids']):4} tokens, {n_labelled:3} labelled")
        fixture["pairs"][name] = {"tokenizer": f"tokenizer/{gguf_name}", "template": template_name, "cases": cases}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{OUT.relative_to(ROOT)}  {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
