"""Golden fixture: the guide's perplexity, as Hugging Face `evaluate`'s "perplexity" metric computes
it (`evaluate.load("perplexity").compute(predictions=texts, model_id=...)`, defaults
batch_size=16, add_start_token=True, max_length=None), on fixtures/smollm2/ppl.jsonl and the default
model. The metric's script lives on the Hub (unreachable here), so its `_compute` is reproduced
step for step: texts tokenized without special tokens and right-padded (the pad token assigned from
the first special token when the tokenizer has none), BOS prepended to every row with an attention
of 1, logits shifted by one, each row's cross-entropy summed under the shifted attention mask and
divided by its sum, exponentiated; the mean of those. Also written: the same figures one text at a
time in f64 (`*_unbatched_f64`), free of the padded batch's float32 noise (~1e-4 relative).

Writes fixtures/smollm2/evaluate_perplexity.json. Usage (from the repository root, the default model
fetched by scripts/fetch-model.sh):
  /opt/ref/venv/bin/python scripts/golden/evaluate_perplexity.py
"""
import json

import numpy as np
import torch
from torch.nn import CrossEntropyLoss

from models import FIXTURES, GGUF_NAME, VERSIONS, load_smollm2

BATCH_SIZE = 16


@torch.no_grad()
def main():
    tok, model = load_smollm2()
    texts = [json.loads(line)["text"] for line in open(FIXTURES / "smollm2" / "ppl.jsonl")]
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": list(tok.special_tokens_map_extended.values())[0]})
    assert tok.bos_token is not None
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt",
              return_attention_mask=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert torch.all(mask.sum(1) >= 1)
    ppls = []
    loss_fct = CrossEntropyLoss(reduction="none")
    for start in range(0, len(texts), BATCH_SIZE):
        batch, attn = ids[start:start + BATCH_SIZE], mask[start:start + BATCH_SIZE]
        bos = torch.tensor([[tok.bos_token_id]] * batch.size(0))
        batch = torch.cat([bos, batch], dim=1)
        attn = torch.cat([torch.ones(bos.size(), dtype=torch.int64), attn], dim=1)
        logits = model(batch, attention_mask=attn).logits
        shift_logits, shift_labels = logits[..., :-1, :], batch[..., 1:]
        shift_mask = attn[..., 1:]
        ppl = torch.exp((loss_fct(shift_logits.transpose(1, 2), shift_labels) * shift_mask).sum(1)
                        / shift_mask.sum(1))
        ppls += ppl.tolist()
    # The same definition one text at a time, log-softmax in f64: evaluate's padded batch itself
    # moves the figures by ~1e-4 relative (float32 reduction order), which this pins down.
    unbatched = []
    for row, n in zip(ids, mask.sum(1).tolist()):
        seq = torch.cat([torch.tensor([tok.bos_token_id]), row[:n]])[None]
        logits = model(seq).logits.double()[0, :-1]
        nll = -torch.log_softmax(logits, -1).gather(1, seq[0, 1:, None])[:, 0]
        unbatched.append(nll.mean().exp().item())
    doc = {
        "model": GGUF_NAME,
        "dataset": "ppl.jsonl",
        "definition": "evaluate's perplexity metric, defaults (see scripts/golden/evaluate_perplexity.py)",
        "bos_token_id": tok.bos_token_id,
        "text_tokens": mask.sum(1).tolist(),
        "perplexities": ppls,
        "mean_perplexity": float(np.mean(ppls)),
        "perplexities_unbatched_f64": unbatched,
        "mean_perplexity_unbatched_f64": float(np.mean(unbatched)),
        **VERSIONS,
    }
    out = FIXTURES / "smollm2" / "evaluate_perplexity.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}: mean_perplexity {doc['mean_perplexity']:.6f}")


if __name__ == "__main__":
    main()
