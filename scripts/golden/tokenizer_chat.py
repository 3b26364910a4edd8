"""Golden fixtures for Hone's tokenizer and chat-template modules.

Run from anywhere with the reference venv:
    OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/tokenizer_chat.py [--chat-only]
(--chat-only rewrites only chat/<name>.json.)

Writes, under fixtures/:
  tokenizer/corpus.jsonl           the strings every tokenizer is checked on
  tokenizer/smollm2-tokenizer.gguf SmolLM2-135M-Instruct's GGUF metadata with no tensors (needs models/...gguf)
  tokenizer/tiny-spm.gguf          a tiny llama model with a SentencePiece BPE vocabulary trained here
  tokenizer/<name>.golden.json     transformers' ids and decodes of the corpus for each GGUF
  chat/<name>.json                 transformers' apply_chat_template(..., tokenize=False) renders

Chat template sources (each recorded again in its fixture's "origin"):
  smollm2       tokenizer.chat_template of models/SmolLM2-135M-Instruct.Q4_1.gguf
  llama3        huggingface.co/meta-llama/Meta-Llama-3-70B-Instruct tokenizer_config.json @a5a71a7 (the
                Llama-3 instruct template), as quoted in GoogleCloudPlatform/vertex-ai-samples' model garden docs
  qwen2.5       huggingface.co/Qwen/Qwen2.5-7B-Instruct tokenizer_config.json chat_template (ChatML with a
                default system prompt and tool-call branches), as quoted in public GitHub code
  gemma2        huggingface.co/google/gemma-2-2b-it chat template (no system role: raise_exception), as
                llama.cpp quotes it in models/templates/google-gemma-2-2b-it.jinja
  qwen3         huggingface.co/Qwen/Qwen3-0.6B chat template (ChatML with <think> reasoning kept only after
                the last user query), as llama.cpp quotes it in models/templates/Qwen-Qwen3-0.6B.jinja
  mistral       huggingface.co/mistralai/Mistral-7B-Instruct-v0.1 tokenizer_config.json, as quoted in
                huggingface/text-generation-inference router/src/infer/chat_template.rs
  llama2        huggingface.co/meta-llama/Llama-2-13b-chat-hf tokenizer_config.json, same TGI source; its
                bos/eos tokens are written as the AddedToken objects Llama-2's tokenizer_config.json uses
"""

import json
import os
import sys
from pathlib import Path

import gguf
import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[2]
TOK_DIR = ROOT / "fixtures" / "tokenizer"
CHAT_DIR = ROOT / "fixtures" / "chat"
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

CORPUS = [
    "Hello world",
    "Hello, world! How are you doing today?",
    "The quick brown fox jumps over the lazy dog.",
    "",
    " ",
    "   three leading spaces",
    "trailing spaces   ",
    "  both sides  ",
    "runs    of     spaces",
    "line one\nline two\n\nline four\n",
    "\n\n\n",
    "\r\nwindows\r\nline endings\r\n",
    "tabs\tand\t\tmore\ttabs",
    "def square(x):\n\treturn x * x\n",
    'fn main() {\n    println!("hi {}", 1 + 2);\n}\n',
    "if (a && b || !c) { return -1; }  // done",
    "你好，世界！",
    "我喜欢机器学习和自然语言处理。",
    "こんにちは、世界",
    "Mixed English和中文text",
    "I love 🦀 and 🐍!",
    "👨‍👩‍👧‍👦 is one family",
    "👍🏽👩🏾‍💻",
    "🇫🇷🇯🇵 flags",
    "Café naïve résumé façade Ångström",
    "Ελληνικά και русский язык",
    "3.14159265358979323846264338327950288",
    "12345678901234567890 and 007",
    "Call +1 (800) 555-0123 before 2024-12-31.",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "<s> [INST] hello [/INST] </s>",
    "<|endoftext|>",
    "<unk> and <pad>",
    "don't won't they're I'll we've",
    "https://example.com/path?q=1&x=y#frag",
    "non\u00a0breaking\u00a0space and zero\u200bwidth",
    "▁ already a metaspace ▁▁",
    "<0x41> looks like a byte token",
    "bell\x07and\x1bescape",
    "A",
    "Repeated repeated REPEATED repeated.",
    "The mitochondria is the powerhouse of the cell; it makes ATP via oxidative phosphorylation.",
]

SPM_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def dump(path, value):
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_corpus():
    with open(TOK_DIR / "corpus.jsonl", "w", encoding="utf-8") as f:
        for text in CORPUS:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def copy_metadata(src, out, overrides=None):
    """Every metadata key of `src` (some replaced by `overrides`), no tensors: a tokenizer-only GGUF."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(out, reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        value = (overrides or {}).get(name, field.contents())
        writer.add_key_value(name, value, field.types[0], sub_type=sub_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def write_smollm2_tokenizer_gguf():
    """SmolLM2's tokenizer without the 94 MB of weights."""
    return copy_metadata(MODEL, TOK_DIR / "smollm2-tokenizer.gguf")


def training_text():
    """Deterministic text for the tiny SentencePiece model: the corpus plus some stdlib docstrings."""
    import argparse, collections, difflib, json as js, re, string, textwrap  # noqa: E401

    lines = list(CORPUS) * 3
    for module in (argparse, collections, difflib, js, re, string, textwrap):
        lines += (module.__doc__ or "").splitlines()
    lines += ["机器学习是人工智能的一个分支。", "自然语言处理让计算机理解人类语言。", "今天天气很好，我们去公园散步吧。"] * 5
    return [line for line in lines if line.strip()]


def write_spm_gguf(workdir):
    """A SentencePiece BPE model (byte fallback on, Llama's settings) in a GGUF with a tiny random llama."""
    text_file = workdir / "spm_train.txt"
    text_file.write_text("\n".join(training_text()), encoding="utf-8")
    prefix = workdir / "tiny_spm"
    spm.SentencePieceTrainer.train(
        input=str(text_file), model_prefix=str(prefix), model_type="bpe", vocab_size=600, byte_fallback=True,
        character_coverage=0.995, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", user_defined_symbols=["<|im_start|>", "<|im_end|>"],
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((workdir / "tiny_spm.model").read_bytes())
    tokens = [p.piece for p in proto.pieces]
    scores = [p.score for p in proto.pieces]
    types = [int(p.type) for p in proto.pieces]  # sentencepiece's numbering is llama.cpp's: 1 normal .. 6 byte

    out = TOK_DIR / "tiny-spm.gguf"
    w = gguf.GGUFWriter(out, "llama")
    hidden, ff, heads, kv_heads, vocab = 16, 32, 2, 1, len(tokens)
    w.add_name("hone-tiny-spm")
    w.add_context_length(64)
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(SPM_CHAT_TEMPLATE)
    rng = np.random.default_rng(0)
    head_dim = hidden // heads

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(vocab, hidden))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("blk.0.attn_q.weight", rand(hidden, hidden))
    w.add_tensor("blk.0.attn_k.weight", rand(kv_heads * head_dim, hidden))
    w.add_tensor("blk.0.attn_v.weight", rand(kv_heads * head_dim, hidden))
    w.add_tensor("blk.0.attn_output.weight", rand(hidden, hidden))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("blk.0.ffn_gate.weight", rand(ff, hidden))
    w.add_tensor("blk.0.ffn_up.weight", rand(ff, hidden))
    w.add_tensor("blk.0.ffn_down.weight", rand(hidden, ff))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output.weight", rand(vocab, hidden))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # transformers must load the whole model, not just the tokenizer, from this file.
    AutoModelForCausalLM.from_pretrained(TOK_DIR, gguf_file=out.name)
    return out


def golden(tok, source):
    """What transformers gives for every corpus string: ids with and without special tokens, and decodes."""
    cases = []
    for text in CORPUS:
        ids = tok.encode(text, add_special_tokens=False)
        ids_special = tok.encode(text, add_special_tokens=True)
        cases.append({
            "text": text,
            "ids": ids,
            "ids_special": ids_special,
            "decoded": tok.decode(ids_special, skip_special_tokens=False),
            "decoded_skip_special": tok.decode(ids_special, skip_special_tokens=True),
        })
    specials = sorted((t.content, i) for i, t in tok.added_tokens_decoder.items() if t.special)
    return {
        "source": source,
        "generator": "scripts/golden/tokenizer_chat.py",
        "vocab_size": len(tok),
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "add_bos_token": tok.add_bos_token,
        "chat_template": tok.chat_template,
        "special_tokens": [[t, i] for t, i in specials],
        "cases": cases,
    }


def load_gguf_tokenizer(path):
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def write_tokenizer_goldens(smollm2_gguf, spm_gguf, workdir):
    small = load_gguf_tokenizer(smollm2_gguf)
    full = load_gguf_tokenizer(MODEL)
    for text in CORPUS:  # the tokenizer-only file must stand in for the real model
        assert small.encode(text) == full.encode(text), text
    assert small.backend_tokenizer.to_str() == full.backend_tokenizer.to_str()
    dump(TOK_DIR / "smollm2.golden.json", golden(small, smollm2_gguf.name))
    # The same vocabulary split by the Llama-3 regex, to check the `tokenizer.ggml.pre` table.
    llama_bpe = copy_metadata(smollm2_gguf, workdir / "smollm2-llama-bpe.gguf", {"tokenizer.ggml.pre": "llama-bpe"})
    source = f"{smollm2_gguf.name} with tokenizer.ggml.pre = llama-bpe"
    dump(TOK_DIR / "smollm2-llama-bpe.golden.json", golden(load_gguf_tokenizer(llama_bpe), source))
    dump(TOK_DIR / "tiny-spm.golden.json", golden(load_gguf_tokenizer(spm_gguf), spm_gguf.name))


# --- chat templates ---------------------------------------------------------------------------------

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

QWEN25 = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n    {%- for tool in tools %}\n"
    "        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == "
    "\"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

QWEN3 = (
    '{%- if tools %}\n'
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- messages[0].content + '\\n\\n' }}\n"
    '    {%- endif %}\n'
    '    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    '    {%- for tool in tools %}\n'
    '        {{- "\\n" }}\n'
    '        {{- tool | tojson }}\n'
    '    {%- endfor %}\n'
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    '{%- else %}\n'
    "    {%- if messages[0].role == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
    '    {%- endif %}\n'
    '{%- endif %}\n'
    '{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}\n'
    '{%- for message in messages[::-1] %}\n'
    '    {%- set index = (messages|length - 1) - loop.index0 %}\n'
    '    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith(\'<tool_response>\') and message.content.endswith(\'</tool_response>\')) %}\n'
    '        {%- set ns.multi_step_tool = false %}\n'
    '        {%- set ns.last_query_index = index %}\n'
    '    {%- endif %}\n'
    '{%- endfor %}\n'
    '{%- for message in messages %}\n'
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    '        {%- set content = message.content %}\n'
    "        {%- set reasoning_content = '' %}\n"
    '        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}\n'
    '            {%- set reasoning_content = message.reasoning_content %}\n'
    '        {%- else %}\n'
    "            {%- if '</think>' in message.content %}\n"
    "                {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}\n"
    "                {%- set reasoning_content = message.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}\n"
    '            {%- endif %}\n'
    '        {%- endif %}\n'
    '        {%- if loop.index0 > ns.last_query_index %}\n'
    '            {%- if loop.last or (not loop.last and reasoning_content) %}\n'
    "                {{- '<|im_start|>' + message.role + '\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}\n"
    '            {%- else %}\n'
    "                {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    '            {%- endif %}\n'
    '        {%- else %}\n'
    "            {{- '<|im_start|>' + message.role + '\\n' + content }}\n"
    '        {%- endif %}\n'
    '        {%- if message.tool_calls %}\n'
    '            {%- for tool_call in message.tool_calls %}\n'
    '                {%- if (loop.first and content) or (not loop.first) %}\n'
    "                    {{- '\\n' }}\n"
    '                {%- endif %}\n'
    '                {%- if tool_call.function %}\n'
    '                    {%- set tool_call = tool_call.function %}\n'
    '                {%- endif %}\n'
    '                {{- \'<tool_call>\\n{"name": "\' }}\n'
    '                {{- tool_call.name }}\n'
    '                {{- \'", "arguments": \' }}\n'
    '                {%- if tool_call.arguments is string %}\n'
    '                    {{- tool_call.arguments }}\n'
    '                {%- else %}\n'
    '                    {{- tool_call.arguments | tojson }}\n'
    '                {%- endif %}\n'
    "                {{- '}\\n</tool_call>' }}\n"
    '            {%- endfor %}\n'
    '        {%- endif %}\n'
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    '        {%- endif %}\n'
    "        {{- '\\n<tool_response>\\n' }}\n"
    '        {{- message.content }}\n'
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    '        {%- endif %}\n'
    '    {%- endif %}\n'
    '{%- endfor %}\n'
    '{%- if add_generation_prompt %}\n'
    "    {{- '<|im_start|>assistant\\n' }}\n"
    '    {%- if enable_thinking is defined and enable_thinking is false %}\n'
    "        {{- '<think>\\n\\n</think>\\n\\n' }}\n"
    '    {%- endif %}\n'
    '{%- endif %}'
)

GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def added_token(content):
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False}


def msg(role, content):
    return {"role": role, "content": content}


SYSTEM = msg("system", "You are a terse assistant.")
CONVERSATIONS = {
    "system_user": [SYSTEM, msg("user", "What is 2+2?")],
    "multi_turn": [SYSTEM, msg("user", "Hi!"), msg("assistant", "  Hello! How can I help?  "),
                   msg("user", "Tell me a joke about 🦀.\nKeep it short.")],
    "no_system": [msg("user", "Bonjour, ça va ?")],
    "no_system_multi": [msg("user", "One"), msg("assistant", "Two"), msg("user", "Three")],
    "wrong_order": [msg("user", "first"), msg("user", "second")],
    # Qwen3's template keeps <think> reasoning only in turns after the last user query.
    "thinking_multi": [msg("user", "What is 3*4?"), msg("assistant", "<think>\n3 fours.\n</think>\n\n12"),
                       msg("user", "And 5*6?"), msg("assistant", "<think>\nFive sixes.\n</think>\n\n30")],
    # A tool call and its result, rendered with the tools given (keys in an order that sorting would change).
    "tool_call": [msg("user", "Weather in Paris for 2 days?"),
                  {"role": "assistant", "content": "", "tool_calls": [
                      {"type": "function", "function": {"name": "get_forecast",
                                                        "arguments": {"location": "Paris", "days": 2}}}]},
                  msg("tool", '{"forecast": ["sun", "rain"]}'),
                  msg("assistant", "Sun, then rain.")],
}
# The tools each conversation is rendered with (transformers' `tools=`).
TOOLS = {
    "tool_call": [{"type": "function", "function": {
        "name": "get_forecast", "description": "Weather forecast for a city.",
        "parameters": {"type": "object", "properties": {
            "location": {"type": "string", "description": "City name"},
            "days": {"type": "integer"}}, "required": ["location"]}}}],
}


def write_chat_fixtures(smollm2_template):
    templates = {
        "smollm2": (smollm2_template, "<|im_start|>", "<|im_end|>", "tokenizer.chat_template of SmolLM2-135M-Instruct.Q4_1.gguf"),
        "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>", "meta-llama/Meta-Llama-3-70B-Instruct tokenizer_config.json @a5a71a7"),
        "qwen2.5": (QWEN25, None, "<|im_end|>", "Qwen/Qwen2.5-7B-Instruct tokenizer_config.json"),
        "gemma2": (GEMMA2, "<bos>", "<eos>", "google/gemma-2-2b-it chat template (via llama.cpp models/templates/google-gemma-2-2b-it.jinja)"),
        "qwen3": (QWEN3, None, "<|im_end|>", "Qwen/Qwen3-0.6B chat template (via llama.cpp models/templates/Qwen-Qwen3-0.6B.jinja)"),
        "mistral": (MISTRAL, "<s>", "</s>", "mistralai/Mistral-7B-Instruct-v0.1 tokenizer_config.json (via huggingface/text-generation-inference)"),
        "llama2": (LLAMA2, added_token("<s>"), added_token("</s>"), "meta-llama/Llama-2-13b-chat-hf tokenizer_config.json (via huggingface/text-generation-inference)"),
    }
    # Any tokenizer will do: its own template and special tokens are overridden by the arguments below.
    tok = load_gguf_tokenizer(TOK_DIR / "tiny-spm.gguf")
    for name, (source, bos, eos, origin) in templates.items():
        as_text = lambda t: t["content"] if isinstance(t, dict) else t  # noqa: E731
        cases = []
        for conv_name, conv in CONVERSATIONS.items():
            for gen in (False, True):
                case = {"name": conv_name, "messages": conv, "add_generation_prompt": gen}
                tools = TOOLS.get(conv_name)
                if tools:
                    case["tools"] = tools
                try:
                    case["output"] = tok.apply_chat_template(
                        conv, chat_template=source, tokenize=False, add_generation_prompt=gen,
                        bos_token=as_text(bos), eos_token=as_text(eos), tools=tools,
                    )
                except Exception as err:  # noqa: BLE001 -- a template's raise_exception is an expected outcome
                    case["error"] = str(err)
                cases.append(case)
        dump(CHAT_DIR / f"{name}.json", {"origin": origin, "generator": "scripts/golden/tokenizer_chat.py",
                                         "source": source, "bos_token": bos, "eos_token": eos, "cases": cases})


def main():
    if sys.argv[1:] == ["--chat-only"]:
        write_chat_fixtures(gguf.GGUFReader(MODEL).fields["tokenizer.chat_template"].contents())
        return
    if not MODEL.exists():
        sys.exit(f"{MODEL} is missing: run scripts/fetch-model.sh first")
    TOK_DIR.mkdir(parents=True, exist_ok=True)
    CHAT_DIR.mkdir(parents=True, exist_ok=True)
    import tempfile

    write_corpus()
    smollm2_gguf = write_smollm2_tokenizer_gguf()
    with tempfile.TemporaryDirectory() as tmp:
        spm_gguf = write_spm_gguf(Path(tmp))
        write_tokenizer_goldens(smollm2_gguf, spm_gguf, Path(tmp))
    write_chat_fixtures(gguf.GGUFReader(MODEL).fields["tokenizer.chat_template"].contents())
    for path in sorted(TOK_DIR.iterdir()) + sorted(CHAT_DIR.iterdir()):
        print(f"{path.relative_to(ROOT)}  {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
