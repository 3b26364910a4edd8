"""Golden fixtures for the remote-code families' tokenizers, which ship no tokenizer.json: tiny
SentencePiece BPE models trained here with the settings of ChatGLM3's and Baichuan 2's real
`tokenizer.model`, a tiny tiktoken rank file in the format of Qwen v1's `qwen.tiktoken` (ranks of
a byte-level BPE learned here), and the ids their own tokenizer classes (tokenization_chatglm.py,
tokenization_baichuan.py, tokenization_qwen.py from REMOTE_CODE, see remote_models.py) give for
the corpus and a few texts that exercise them: byte fallback, split digits, the dummy prefix
(ChatGLM3 adds one, Baichuan 2 does not), whitespace kept as is, Baichuan's user-defined pieces
(`\\n`, `\\t`, `<reserved_106>`), ChatGLM's special tokens past the SentencePiece vocabulary,
Qwen's split regex and byte-level merges.

Also the chat format each family's own code builds (ChatGLM3's `build_chat_input`, Baichuan 2's
`generation_utils.build_chat_input`, Qwen's `make_context` in ChatML) for a few prompts, ids that
Hone's templates in crates/hone/src/tokenizer/templates/ must give rendered and encoded (with an earlier answer for
Qwen only: Hone's ChatGLM3 and Baichuan 2 templates close each answer with EOS, which those
families' own code leaves out of the history).

Writes fixtures/tokenizer/{chatglm3,baichuan2}-spm/ (tokenizer.model), fixtures/tokenizer/qwen-tiktoken/
(qwen.tiktoken), each with the tokenizer_config.json its real repository ships, and
fixtures/tokenizer/remote-spm.golden.json. Run from the repository
root:

    OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/remote_tokenizers.py
"""

import base64
import json
import os
import sys
from pathlib import Path

import sentencepiece as spm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from remote_models import load_package, module  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "tokenizer"
CODE = Path(os.environ.get("REMOTE_CODE", "/work/refcode"))

# The settings both real files share (checked with sentencepiece_model_pb2 on chatglm3-6b's and
# Baichuan2-13B-Chat's tokenizer.model): BPE, byte fallback, digits split, identity normalization,
# whitespace kept as it is.
COMMON = dict(
    model_type="bpe", byte_fallback=True, split_digits=True, normalization_rule_name="identity",
    remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2,
    pad_id=-1, character_coverage=0.98, vocab_size=600,
)
EXTRA_TEXTS = [
    "Price: 12345 yuan, 3.14159 and 2024-12-05",
    "你好，世界！今天天气很好。",
    "emoji 🙂 and rare 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "  two leading spaces\tand a tab\nnew line",
    "<reserved_106>question<reserved_107>answer</s>",
    "[gMASK]sop<|user|>\n hi<|assistant|>",
    "<SEP>x<SEP>",
]


def corpus():
    lines = (OUT / "corpus.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines] + EXTRA_TEXTS


def train(name, **settings):
    directory = OUT / name
    directory.mkdir(parents=True, exist_ok=True)
    sentences = [t for t in corpus() if t.strip()] * 3
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(directory / "tokenizer"), **COMMON, **settings
    )
    (directory / "tokenizer.vocab").unlink()
    return directory / "tokenizer.model"


def chatglm_tokenizer(model_path):
    load_package("ref_chatglm3", CODE / "chatglm3")
    tokenization = module("ref_chatglm3", "tokenization_chatglm")
    cls = tokenization.ChatGLMTokenizer
    # transformers 5 passes `padding_side` to `_pad` and dropped `batch_encode_plus`.
    original_pad = cls._pad
    cls._pad = lambda self, *a, padding_side=None, **k: original_pad(self, *a, **k)
    cls.batch_encode_plus = lambda self, *a, **k: self(*a, **k)
    return cls(vocab_file=str(model_path))


def baichuan_tokenizer(model_path):
    load_package("ref_baichuan2", CODE / "baichuan2-13b")
    tokenization = module("ref_baichuan2", "tokenization_baichuan")
    cls = tokenization.BaichuanTokenizer
    original_init = cls.__init__

    def init(self, vocab_file, *args, sp_model_kwargs=None, **kwargs):
        # transformers 5 asks for the vocabulary before the class has loaded its model.
        self.sp_model_kwargs = sp_model_kwargs or {}
        self.vocab_file = vocab_file
        self.sp_model = spm.SentencePieceProcessor(**self.sp_model_kwargs)
        self.sp_model.Load(vocab_file)
        original_init(self, vocab_file, *args, sp_model_kwargs=sp_model_kwargs, **kwargs)

    cls.__init__ = init
    # As Baichuan2-*-Chat's tokenizer_config.json: no BOS, pad is <unk>.
    return cls(vocab_file=str(model_path), add_bos_token=False, add_eos_token=False, pad_token="<unk>")


def qwen_ranks(directory):
    """A byte-level BPE learned on the corpus, written as tiktoken ranks: the 256 bytes, then each
    merge's token in merge order (as qwen.tiktoken's ranks are)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([t for t in corpus() if t] * 3, trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    ranks = [bytes([b]) for b in range(256)]
    for merge in merges:
        left, right = merge if isinstance(merge, list) else merge.split(" ")
        ranks.append(bytes(byte_of[c] for c in left + right))
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(ranks)]
    (directory / "qwen.tiktoken").write_text("\n".join(lines) + "\n")
    return directory / "qwen.tiktoken"


def bytes_to_unicode():
    """GPT-2's printable spelling of each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def qwen_tokenizer(path):
    """QWenTokenizer on the tiny ranks. Its special tokens start at SPECIAL_START_ID = 151643, the
    published file's rank count, and it checks that they follow the ranks directly: here they
    start after the tiny file's ranks, where they follow them in the published file too."""
    load_package("ref_qwen1", CODE / "qwen1")
    tokenization = module("ref_qwen1", "tokenization_qwen")
    n_ranks = len(path.read_text().splitlines())
    names = [name for _, name in tokenization.SPECIAL_TOKENS]
    tokenization.SPECIAL_TOKENS = tuple(enumerate(names, start=n_ranks))
    return tokenization.QWenTokenizer(vocab_file=str(path))


CONVERSATIONS = [
    [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me 2 jokes"},
    ],
    [{"role": "user", "content": "你好，今天天气怎么样？"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "  Why is the sky blue?  "}],
]


def chatglm_chat(tokenizer, messages):
    history, query = messages[:-1], messages[-1]["content"]
    return tokenizer.build_chat_input(query, history=history, role="user")["input_ids"][0].tolist()


def baichuan_chat(tokenizer, messages):
    from types import SimpleNamespace

    load_package("ref_baichuan2", CODE / "baichuan2-13b")
    build = module("ref_baichuan2", "generation_utils").build_chat_input
    ids = tokenizer.convert_tokens_to_ids
    generation = SimpleNamespace(
        user_token_id=ids("<reserved_106>"), assistant_token_id=ids("<reserved_107>"), max_new_tokens=0
    )
    model = SimpleNamespace(
        generation_config=generation, config=SimpleNamespace(model_max_length=4096), device="cpu"
    )
    return build(model, tokenizer, messages).tolist()[0]


def qwen_chat(tokenizer, messages):
    load_package("ref_qwen1", CODE / "qwen1")
    make_context = module("ref_qwen1", "qwen_generation_utils").make_context
    system = next((m["content"] for m in messages if m["role"] == "system"), "You are a helpful assistant.")
    turns = [m for m in messages if m["role"] != "system"]
    history = [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns) - 1, 2)]
    _, ids = make_context(tokenizer, turns[-1]["content"], history=history, system=system, chat_format="chatml")
    return ids


def main():
    glm = train("chatglm3-spm", add_dummy_prefix=True)
    baichuan = train(
        "baichuan2-spm", add_dummy_prefix=False,
        user_defined_symbols=["<SEP>", "\n", "\t", "<reserved_106>", "<reserved_107>"],
    )
    (OUT / "chatglm3-spm" / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "ChatGLMTokenizer", "remove_space": False, "do_lower_case": False,
        "auto_map": {"AutoTokenizer": ["tokenization_chatglm.ChatGLMTokenizer", None]},
    }, indent=2) + "\n")
    (OUT / "baichuan2-spm" / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BaichuanTokenizer", "add_bos_token": False, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>",
        "auto_map": {"AutoTokenizer": ["tokenization_baichuan.BaichuanTokenizer", None]},
    }, indent=2) + "\n")
    qwen = qwen_ranks(OUT / "qwen-tiktoken")
    (OUT / "qwen-tiktoken" / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 32768, "tokenizer_class": "QWenTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
    }, indent=2) + "\n")
    golden = {}
    tokenizers = [
        ("chatglm3-spm", chatglm_tokenizer(glm)),
        ("baichuan2-spm", baichuan_tokenizer(baichuan)),
        ("qwen-tiktoken", qwen_tokenizer(qwen)),
    ]
    chat = {"chatglm3-spm": chatglm_chat, "baichuan2-spm": baichuan_chat, "qwen-tiktoken": qwen_chat}
    for name, tokenizer in tokenizers:
        cases = []
        for text in corpus():
            ids = tokenizer.encode(text, add_special_tokens=True)
            plain = tokenizer.encode(text, add_special_tokens=False)
            cases.append({"text": text, "ids": ids, "ids_plain": plain, "decoded": tokenizer.decode(plain)})
        # Hone's ChatGLM3 and Baichuan 2 templates close every answer with EOS, so a model fine-tuned
        # on them learns to stop; the families' own code puts none after an answer in the history:
        # prompts with history are compared for Qwen's ChatML only.
        conversations = [
            m for m in CONVERSATIONS if name == "qwen-tiktoken" or all(t["role"] != "assistant" for t in m)
        ]
        chats = [{"messages": m, "ids": chat[name](tokenizer, m)} for m in conversations]
        golden[name] = {"vocab": tokenizer.vocab_size, "cases": cases, "chats": chats}
        print(f"{name}: {tokenizer.vocab_size} tokens, {len(cases)} texts")
    (OUT / "remote-spm.golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1) + "\n")


if __name__ == "__main__":
    main()
