"""Golden fixtures for Hone's `hone train` step arithmetic and checkpoint files.

Writes fixtures/config/:
  hf_step_plans.json   for each case (rows, per_device_train_batch_size,
                       gradient_accumulation_steps, num_train_epochs, max_steps, warmup_steps):
                       what transformers' Trainer.set_initial_training_values computes over a
                       real DataLoader (batches per epoch, update steps per epoch, epochs,
                       max_steps) and TrainingArguments.get_warmup_steps(max_steps)
  timedelta.json       [seconds, str(timedelta(seconds=int(seconds)))] pairs: the "H:MM:SS"
                       strings of LLaMA-Factory's trainer_log.jsonl elapsed/remaining times
  trainer_state.json   a transformers TrainerState with training, evaluation and summary logs,
                       written by TrainerState.save_to_json (sorted keys, indent 2)

Run: OMP_NUM_THREADS=1 /opt/ref/venv/bin/python scripts/golden/train_config.py
"""

import json
import pathlib
import tempfile
from datetime import timedelta

import torch
from transformers import Trainer, TrainerState, TrainingArguments

OUT = pathlib.Path(__file__).resolve().parents[2] / "fixtures" / "config"

# (rows, batch, grad_accum, epochs, max_steps, warmup_steps)
CASES = [
    (10, 3, 2, 1.5, -1, 0),
    (1000, 1, 8, 3.0, -1, 0.1),
    (7, 8, 4, 3.0, -1, 2),
    (100, 4, 3, 2.0, 50, 0.05),
    (33, 5, 1, 0.3, -1, 0.5),
    (64, 8, 8, 1.0, -1, 0),
]


class Tiny(torch.nn.Module):
    """The smallest module Trainer accepts; only the data loader's length matters here."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)

    def forward(self, x):
        return self.linear(x)


def step_plan(rows, batch, accum, epochs, max_steps, warmup, workdir):
    args = TrainingArguments(
        output_dir=workdir,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        num_train_epochs=epochs,
        max_steps=max_steps,
        warmup_steps=warmup,
        report_to="none",
        use_cpu=True,
    )
    trainer = Trainer(model=Tiny(), args=args, train_dataset=[{"x": torch.zeros(2)}] * rows)
    loader = trainer.get_train_dataloader()
    n_epochs, per_epoch, _, _, _, batches, total = trainer.set_initial_training_values(args, loader)
    return {
        "rows": rows,
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": accum,
        "num_train_epochs": epochs,
        "max_steps": max_steps,
        "warmup_steps": warmup,
        "batches_per_epoch": batches,
        "steps_per_epoch": per_epoch,
        "epochs": n_epochs,
        "total_steps": total,
        "warmup": args.get_warmup_steps(total),
    }


def trainer_state():
    state = TrainerState(
        epoch=1.5,
        global_step=6,
        max_steps=8,
        logging_steps=2,
        eval_steps=4,
        save_steps=3,
        train_batch_size=2,
        num_train_epochs=2,
        num_input_tokens_seen=1234,
        total_flos=5.5e9,
        best_metric=1.75,
        best_global_step=4,
        best_model_checkpoint="out/checkpoint-4",
    )
    state.log_history = [
        {"epoch": 0.5, "grad_norm": 3.25, "learning_rate": 5e-05, "loss": 2.5, "step": 2},
        {"epoch": 1.0, "eval_loss": 1.75, "eval_runtime": 0.5, "eval_samples_per_second": 8.0,
         "eval_steps_per_second": 4.0, "step": 4},
        {"epoch": 1.5, "step": 6, "total_flos": 5.5e9, "train_loss": 2.125, "train_runtime": 12.5,
         "train_samples_per_second": 0.96, "train_steps_per_second": 0.48},
    ]
    return state


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        plans = [step_plan(*case, workdir) for case in CASES]
    (OUT / "hf_step_plans.json").write_text(json.dumps(plans, indent=1) + "\n")

    seconds = [0, 0.9, 59.99, 61, 3599, 3600, 36000.5, 86399, 86400, 90061, 2 * 86400 + 5]
    pairs = [[s, str(timedelta(seconds=int(s)))] for s in seconds]
    (OUT / "timedelta.json").write_text(json.dumps(pairs, indent=1) + "\n")

    trainer_state().save_to_json(str(OUT / "trainer_state.json"))
    for p in sorted(OUT.glob("*.json")):
        print(p.relative_to(OUT.parents[1]), p.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
