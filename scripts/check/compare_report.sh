#!/usr/bin/env bash
# Browser check of `hone compare`: the default model and the quickstart's identity adapter answer a
# few held-out questions, then headless Chromium renders the HTML report to a PNG, which must exist
# and not be blank (a page that failed to render is one flat colour).
#
# Usage: scripts/check/compare_report.sh [OUT_DIR] [ROWS]   (default outputs/compare-check, 3 rows)
# MODEL and ADAPTER override the model and the adapter directory (the adapter comes from
# `hone train examples/identity/train_lora.yaml`, which scripts/quickstart.sh runs).
set -euo pipefail
cd "$(dirname "$0")/../.."
out_dir=${1:-outputs/compare-check}
rows=${2:-3}
model=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
adapter=${ADAPTER:-outputs/identity-lora}
[ -f "$model" ] || ./scripts/fetch-model.sh
if [ ! -f "$adapter/adapter_config.json" ]; then
  echo "no adapter in $adapter: run scripts/quickstart.sh (or hone train examples/identity/train_lora.yaml)" >&2
  exit 1
fi
chromium=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$chromium" ]; then
  echo "no Chromium found (chromium, chromium-browser or google-chrome)" >&2
  exit 1
fi
cargo build --quiet -p hone-cli
hone=${CARGO_TARGET_DIR:-target}/debug/hone
mkdir -p "$out_dir"
report=$(realpath "$out_dir")/report.html
png=$(realpath "$out_dir")/report.png
rm -f "$png"

"$hone" compare --model "$model" --adapter "$adapter" --prompts examples/identity/heldout.jsonl \
  --limit "$rows" --max-new-tokens 64 --perplexity-data fixtures/smollm2/ppl.jsonl \
  --out "$report" --force

# Chromium may print GPU/dbus noise on a headless machine; the PNG is what counts.
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,2400 \
  --screenshot="$png" "file://$report" 2>/dev/null || true

python3 - "$png" <<'PY'
"""Decode the PNG with the standard library and count its colours: a rendered report has text,
tables and tinted cells, so hundreds; a blank page has one."""
import struct, sys, zlib

path = sys.argv[1]
try:
    data = open(path, "rb").read()
except FileNotFoundError:
    sys.exit(f"{path}: Chromium wrote no screenshot")
assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG"
pos, idat, header = 8, b"", None
while pos < len(data):
    length, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + length]
    if kind == b"IHDR":
        header = struct.unpack(">IIBBBBB", body)
    elif kind == b"IDAT":
        idat += body
    pos += 12 + length
width, height, depth, colour, _, _, interlace = header
assert depth == 8 and colour in (2, 6) and interlace == 0, f"{path}: unexpected PNG layout {header}"
channels = 3 if colour == 2 else 4
stride = width * channels
raw = zlib.decompress(idat)
previous, colours = bytearray(stride), set()
for y in range(height):
    kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        left = line[i - channels] if i >= channels else 0
        up, up_left = previous[i], previous[i - channels] if i >= channels else 0
        if kind == 1:
            line[i] = (line[i] + left) & 255
        elif kind == 2:
            line[i] = (line[i] + up) & 255
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 255
        elif kind == 4:
            p = left + up - up_left
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - up_left)
            line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else up_left)) & 255
    if y % 4 == 0:
        colours.update(bytes(line[i:i + 3]) for i in range(0, stride, channels * 2))
    previous = line
if len(colours) < 20:
    sys.exit(f"{path}: {width}x{height} but only {len(colours)} colours: the page looks blank")
print(f"{path}: {width}x{height}, {len(colours)} colours: rendered")
PY
