"""Golden fixture for Hone's TensorBoard event files (crates/hone/src/train/checkpoint/tensorboard.rs).

Writes fixtures/tensorboard/scalars.tfevents with TensorBoard's own record writer and protocol
buffers: the version event, then scalar events as transformers' TensorBoardCallback logs them
(tags from `rewrite_logs`; step 0, which proto3 leaves out, and a value of 0.0, which a oneof keeps),
and fixtures/tensorboard/scalars.json with the same events' fields for the Rust test to rewrite.

Run: /opt/ref/venv/bin/python scripts/golden/tensorboard_events.py   (PyPI `tensorboard`)
"""

import io
import json
import pathlib

import tensorboard
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "tensorboard"

WALL_TIME = 1764843000.125
SCALARS = [
    {"tag": "train/loss", "step": 0, "value": 2.5, "wall_time": 1764843001.5},
    {"tag": "train/learning_rate", "step": 1, "value": 0.0, "wall_time": 1764843002.25},
    {"tag": "train/grad_norm", "step": 130, "value": 0.123456789, "wall_time": 1764843003.0},
    {"tag": "eval/rewards/accuracies", "step": 200000, "value": -0.0, "wall_time": 1764843004.75},
    {"tag": "train/epoch", "step": 7, "value": 1e-30, "wall_time": 1764843005.0},
]


def main():
    buffer = io.BytesIO()
    writer = RecordWriter(buffer)
    writer.write(event_pb2.Event(wall_time=WALL_TIME, file_version="brain.Event:2").SerializeToString())
    for s in SCALARS:
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=s["tag"], simple_value=s["value"])])
        event = event_pb2.Event(wall_time=s["wall_time"], step=s["step"], summary=summary)
        writer.write(event.SerializeToString())
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scalars.tfevents").write_bytes(buffer.getvalue())
    meta = {"generator": "scripts/golden/tensorboard_events.py", "tensorboard": tensorboard.__version__,
            "wall_time": WALL_TIME, "scalars": SCALARS}
    (OUT / "scalars.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(buffer.getvalue())} bytes, tensorboard {tensorboard.__version__}")


if __name__ == "__main__":
    main()
