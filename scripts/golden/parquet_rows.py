"""Fixtures for reading datasets stored as parquet (what Hugging Face `datasets` keeps on the Hub),
Arrow (what `datasets` saves) and CSV.

Writes, with pyarrow (as `datasets` writes parquet: snappy-compressed, nested columns as
list<struct>), fixtures/data/parquet/{alpaca,sharegpt}.parquet and the same rows as JSON Lines
(alpaca.jsonl, sharegpt.jsonl), so a test can check that both read to the same conversations:
unicode, an empty and a null input, a history of pairs, a system column, ShareGPT turns with a
function call and a tool result, and a row whose required output is null (an error naming it).
Also alpaca.arrow (the Arrow IPC stream form, as `datasets` writes its cache and save_to_disk
files) and alpaca_file.arrow (the IPC file form); alpaca.csv (the flat columns, through pandas)
with alpaca_csv.jsonl, the rows as `datasets.load_dataset("csv")` reads them back (an empty cell
is null there).

Run: /opt/ref/venv/bin/python scripts/golden/parquet_rows.py
"""

import json
import pathlib

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "data" / "parquet"

ALPACA = [
    {"instruction": "Translate to French", "input": "Good morning", "output": "Bonjour", "system": None,
     "history": None},
    {"instruction": "你好吗？", "input": "", "output": "我很好，谢谢。", "system": "Be kind.", "history": None},
    {"instruction": "And now?", "input": None, "output": "Still fine 🦀", "system": None,
     "history": [["How are you?", "Fine."]]},
    {"instruction": "No answer here", "input": "", "output": None, "system": None, "history": None},
]
SHAREGPT = [
    {"conversations": [{"from": "human", "value": "Weather in Oslo?"},
                       {"from": "function_call", "value": "{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}"},
                       {"from": "observation", "value": "{\"temp_c\": 12}"},
                       {"from": "gpt", "value": "It is 12 °C."}],
     "tools": "[{\"name\": \"weather\", \"description\": \"Weather now\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}}}]"},
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}], "tools": ""},
]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in [("alpaca", ALPACA), ("sharegpt", SHAREGPT)]:
        pq.write_table(pa.Table.from_pylist(rows), OUT / f"{name}.parquet", compression="snappy")
        (OUT / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        print(name, pq.read_schema(OUT / f"{name}.parquet"))
    table = pa.Table.from_pylist(ALPACA)
    with pa.ipc.new_stream(OUT / "alpaca.arrow", table.schema) as stream:
        stream.write_table(table)
    with pa.ipc.new_file(OUT / "alpaca_file.arrow", table.schema) as file:
        file.write_table(table)
    flat = [{k: v for k, v in row.items() if k != "history"} for row in ALPACA]
    datasets.Dataset.from_list(flat).to_csv(OUT / "alpaca.csv", index=False)
    read = datasets.load_dataset("csv", data_files=str(OUT / "alpaca.csv"), split="train")
    (OUT / "alpaca_csv.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in read))


if __name__ == "__main__":
    main()
