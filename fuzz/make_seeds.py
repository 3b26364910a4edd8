#!/usr/bin/env python3
"""Writes fuzz/seeds/<target>/: each target's starting corpus, built from the repository's real files
(fixtures, examples, the tiny model exported as GGUF by Hone), in the layout the target reads
(crates/hone-fuzz: a first byte choosing the variant, files joined by the separator).

Run from the repository root after `cargo build` (the GGUF seeds are written by target/debug/hone):
    python3 fuzz/make_seeds.py
"""
import json
import pathlib
import shutil
import subprocess
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"
SEP = b"\n--8<--\n"


def read(path):
    return (ROOT / path).read_bytes()


def put(target, name, data):
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def jsonl_head(path, rows):
    return b"".join(read(path).splitlines(keepends=True)[:rows])


def json_head(path, rows):
    return json.dumps(json.loads(read(path))[:rows], ensure_ascii=False).encode()


def gguf():
    put("gguf", "tiny-spm.gguf", read("fixtures/tokenizer/tiny-spm.gguf"))
    with tempfile.TemporaryDirectory() as tmp:
        for quant in ["q8_0", "q4_k_m"]:
            out = pathlib.Path(tmp) / f"tiny-spm-{quant}.gguf"
            subprocess.run([str(ROOT / "target/debug/hone"), "export", "--model",
                            str(ROOT / "fixtures/tokenizer/tiny-spm.gguf"), "--out", str(out),
                            "--quant", quant], check=True, stdout=subprocess.DEVNULL)
            put("gguf", out.name, out.read_bytes())


def safetensors():
    put("safetensors", "llama-tied.safetensors", read("fixtures/models/llama-tied/model.safetensors"))
    put("safetensors", "adapter-qv.safetensors",
        read("fixtures/adapters/llama-tied-qv/adapter_model.safetensors"))
    put("safetensors", "llama-bf16.safetensors", read("fixtures/models/llama-bf16/model.safetensors"))


def hf_config():
    for config in sorted((ROOT / "fixtures/models").glob("*/config.json")):
        put("hf_config", config.parent.name + ".json", config.read_bytes())


def tokenizer():
    tiny = ROOT / "fuzz/tiny-tokenizer"
    put("tokenizer", "tiny-bpe", b"\x00" + (tiny / "tokenizer.json").read_bytes() + SEP
        + (tiny / "tokenizer_config.json").read_bytes())
    for name, variant, file in [("baichuan2-spm", 1, "tokenizer.model"),
                                ("chatglm3-spm", 1, "tokenizer.model"),
                                ("qwen-tiktoken", 2, "qwen.tiktoken")]:
        folder = ROOT / "fixtures/tokenizer" / name
        config = folder / "tokenizer_config.json"
        data = bytes([variant]) + (folder / file).read_bytes()
        if config.exists():
            data += SEP + config.read_bytes()
        put("tokenizer", name, data)


def chat_template():
    conversation = json.dumps([{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello!"}]).encode()
    tools = json.dumps({"tools": [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}).encode()
    for fixture in sorted((ROOT / "fixtures/chat").glob("*.json")):
        source = json.loads(fixture.read_bytes())["source"].encode()
        put("chat_template", fixture.stem, source + SEP + conversation + SEP + tools)
    put("chat_template", "qwen2.5-jinja", read("fixtures/chat/qwen2.5.jinja"))


# The dataset target's first byte: stage * 6 + extension (json, jsonl, txt, csv, parquet, arrow).
EXT = {"json": 0, "jsonl": 1, "txt": 2, "csv": 3, "parquet": 4, "arrow": 5}
STAGE = {"sft": 0, "pairs": 1, "feedback": 2, "documents": 3}


def dataset_seed(name, stage, ext, info, data):
    entry = dict(info, file_name=f"data.{ext}") if info is not None else None
    head = b"" if entry is None else json.dumps({"fuzz": entry}).encode()
    put("dataset", name, bytes([STAGE[stage] * 6 + EXT[ext]]) + head + SEP + data)


def dataset():
    lf = json.loads(read("fixtures/data/llamafactory/dataset_info.json"))
    dataset_seed("alpaca-direct", "sft", "json", None, read("fixtures/data/info/alpaca.json"))
    dataset_seed("openai-direct", "sft", "jsonl", None, read("fixtures/data/info/openai.jsonl"))
    dataset_seed("identity", "sft", "json", {}, json_head("examples/identity/identity.json", 4))
    dataset_seed("multiturn", "sft", "jsonl", {"formatting": "sharegpt"},
                 jsonl_head("examples/identity/identity_multiturn.jsonl", 3))
    dataset_seed("glaive-toolcall", "sft", "json", lf["glaive_toolcall_en_demo"],
                 json_head("fixtures/data/llamafactory/glaive_toolcall_en_demo.json", 3))
    dataset_seed("dpo", "pairs", "json", lf["dpo_en_demo"],
                 json_head("fixtures/data/llamafactory/dpo_en_demo.json", 3))
    dataset_seed("kto", "feedback", "json", lf["kto_en_demo"],
                 json_head("fixtures/data/llamafactory/kto_en_demo.json", 3))
    dataset_seed("c4", "documents", "jsonl", lf["c4_demo"],
                 jsonl_head("fixtures/data/llamafactory/c4_demo.jsonl", 3))
    dataset_seed("wiki", "documents", "txt", lf["wiki_demo"],
                 b"".join(read("fixtures/data/llamafactory/wiki_demo.txt").splitlines(True)[:3]))
    dataset_seed("alpaca-csv", "sft", "csv", {}, read("fixtures/data/parquet/alpaca.csv"))
    dataset_seed("alpaca-parquet", "sft", "parquet", {}, read("fixtures/data/parquet/alpaca.parquet"))
    dataset_seed("sharegpt-parquet", "sft", "parquet", {"formatting": "sharegpt"},
                 read("fixtures/data/parquet/sharegpt.parquet"))
    dataset_seed("alpaca-arrow", "sft", "arrow", {}, read("fixtures/data/parquet/alpaca.arrow"))
    dataset_seed("custom-columns", "sft", "json",
                 json.loads(read("fixtures/data/info/dataset_info.json"))["chat_custom"],
                 read("fixtures/data/info/chat_custom.json"))


def train_config():
    configs = sorted((ROOT / "fixtures/config").glob("*.yaml")) + \
        sorted((ROOT / "examples").glob("*/*.yaml"))
    for config in configs:
        put("train_config", config.stem, config.read_bytes() + SEP + b"num_train_epochs=2\n")


def adapter():
    for folder in sorted((ROOT / "fixtures/adapters").iterdir()):
        if folder.is_dir():
            put("adapter", folder.name, (folder / "adapter_config.json").read_bytes() + SEP
                + (folder / "adapter_model.safetensors").read_bytes())


def serve():
    messages = [{"role": "user", "content": "Hi"}]
    bodies = [
        (0, "chat", {"model": "tiny", "messages": messages, "max_tokens": 4}),
        (0, "chat-stream", {"model": "tiny", "messages": messages, "max_tokens": 3, "stream": True,
                            "stream_options": {"include_usage": True}, "logprobs": True,
                            "top_logprobs": 2}),
        (0, "chat-sampling", {"model": "tiny", "messages": messages, "max_tokens": 3, "n": 2,
                              "temperature": 0.8, "top_p": 0.9, "seed": 1, "stop": ["x", "y"]}),
        (0, "chat-tools", {"model": "tiny", "messages": messages, "max_tokens": 3,
                           "tools": [{"type": "function", "function": {"name": "f",
                                      "parameters": {"type": "object"}}}],
                           "tool_choice": "auto"}),
        (1, "completion", {"model": "tiny", "prompt": "Hello", "max_tokens": 4, "echo": True}),
        (1, "completion-batch", {"model": "tiny", "prompt": ["a"], "max_tokens": 2,
                                 "logprobs": 1}),
        (2, "score", {"model": "tiny", "messages": ["Hi", "Hello"], "max_length": 16}),
        (3, "load-adapter", {"name": "qv-fuzz", "path": "qv"}),
    ]
    for route, name, body in bodies:
        put("serve", name, bytes([route]) + json.dumps(body).encode())
    put("serve", "models", bytes([4]) + b"/v1/models/tiny")
    put("serve", "metrics", bytes([4]) + b"/metrics")


if __name__ == "__main__":
    shutil.rmtree(SEEDS, ignore_errors=True)
    for make in [gguf, safetensors, hf_config, tokenizer, chat_template, dataset, train_config,
                 adapter, serve]:
        make()
    for folder in sorted(SEEDS.iterdir()):
        files = list(folder.iterdir())
        print(f"{folder.name}: {len(files)} seeds, {sum(f.stat().st_size for f in files)} bytes")
