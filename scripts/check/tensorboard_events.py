"""Checks `hone train`'s TensorBoard event files with TensorBoard's own reader:

    /opt/ref/venv/bin/python scripts/check/tensorboard_events.py --hone target/release/hone

Trains the tiny fixture model for a few steps with `report_to: tensorboard` and evaluations, then
loads the run directory with `EventAccumulator` and compares every scalar with the run's
`trainer_state.json` log history: `train/loss`, `train/learning_rate`, `train/grad_norm`,
`train/epoch` at each logging step, `eval/loss` at each evaluation (float32, as TensorBoard
stores them). Exits non-zero on the first difference.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROWS = [("What is Hone?", "A fine-tuning toolkit."), ("Say hi.", "Hi!"), ("2+2?", "4"), ("Colour of sky?", "Blue.")]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hone", default=str(ROOT / "target" / "release" / "hone"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        data = tmp / "data.jsonl"
        data.write_text("".join(json.dumps({"instruction": q, "input": "", "output": a}) + "\n" for q, a in ROWS * 3))
        out = tmp / "out"
        config = {
            "model_name_or_path": str(ROOT / "fixtures" / "tokenizer" / "tiny-spm.gguf"),
            "stage": "sft", "finetuning_type": "lora", "lora_target": "all", "dataset": str(data),
            "cutoff_len": 64, "output_dir": str(out), "per_device_train_batch_size": 2,
            "learning_rate": 1e-2, "logging_steps": 1, "max_steps": 6, "val_size": 2,
            "eval_strategy": "steps", "eval_steps": 3, "report_to": "tensorboard",
        }
        (tmp / "run.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
        run = subprocess.run([args.hone, "train", str(tmp / "run.yaml")], capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(run.stderr)
        runs = list((out / "runs").iterdir())
        assert len(runs) == 1, runs
        acc = EventAccumulator(str(runs[0]))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        history = json.loads((out / "trainer_state.json").read_text())["log_history"]
        expected = {}
        for entry in history:
            for key, value in entry.items():
                if key == "step":
                    continue
                tag = "eval/" + key[5:] if key.startswith("eval_") else "train/" + key
                expected.setdefault(tag, []).append((entry["step"], value))
        checked = 0
        for tag, points in expected.items():
            assert tag in tags, (tag, tags)
            got = [(e.step, e.value) for e in acc.Scalars(tag)]
            assert len(got) == len(points), (tag, got, points)
            for (step, value), (got_step, got_value) in zip(points, got):
                assert step == got_step and abs(got_value - value) <= 1e-6 * max(1.0, abs(value)), (tag, step, value, got_step, got_value)
                checked += 1
        for needed in ["train/loss", "train/learning_rate", "train/grad_norm", "train/epoch", "eval/loss"]:
            assert needed in tags, (needed, tags)
        print(f"ok: {checked} scalars under {len(expected)} tags read back by TensorBoard's EventAccumulator: {sorted(tags)}")


if __name__ == "__main__":
    main()
