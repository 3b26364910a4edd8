"""`hone board` driven in headless Chromium (Debian's `chromium`, through Playwright):

    /opt/ref/venv/bin/python scripts/check/board_browser.py --hone target/debug/hone \
        --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out /tmp/board-check

Trains a short LoRA run of the quickstart's data (`examples/identity`), opens the board on a
fresh folder of runs, and checks, with a screenshot of each view in --out:
  1. the runs table lists the finished run;
  2. in a second tab, the New run form starts from that run's config; its fields edit the YAML;
     Check shows the memory plan and the first rows with trained tokens highlighted; Start runs
     it, and the first tab's table shows it without a reload;
  3. the second run's loss curve grows while it trains (points counted in the SVG);
  4. the time from a log line being appended to its point being drawn (10 lines, best, median,
     worst);
  5. a log with a NaN loss and evaluation loss rising three times shows both alerts;
  6. Stop on the second run saves a checkpoint and ends it as interrupted;
  7. the compare view of the two runs highlights the config keys that differ;
  8. the arena (the board started with --model) answers one prompt with the base model, the
     first run and the second run's checkpoint, streamed, in a hidden order; the rating is written
     to arena/ratings.jsonl with its preference pairs in arena_dpo.jsonl, which `hone data`
     reads as a `stage: dpo` dataset;
  9. samples across checkpoints: prompts answered by the base and each checkpoint of a run.
Exits non-zero on the first failed check; prints each figure.
"""

import argparse
import json
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

from playwright.sync_api import sync_playwright

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples/identity/train_lora.yaml"


def train(hone, model, out, *overrides):
    args = [hone, "train", str(CONFIG), f"model_name_or_path={model}", f"output_dir={out}",
            "dataset_dir=" + str(ROOT / "examples/identity"), "logging_steps=1", "eval_steps=5",
            *overrides]
    done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"training failed:\n{done.stderr}")


def start_board(hone, runs, model):
    board = subprocess.Popen([hone, "board", "--runs", str(runs), "--port", "0", "--model", model],
                             stderr=subprocess.PIPE, text=True)
    for line in board.stderr:
        if "listening on http://" in line:
            return board, line.split("listening on ")[1].split()[0]
    sys.exit("hone board exited before listening")


def log_line(step, **values):
    record = {"current_steps": step, "total_steps": 40, **values, "percentage": step * 2.5,
              "elapsed_time": f"0:00:{step:02d}", "remaining_time": "0:00:00"}
    return json.dumps(record).replace('"NaN"', "NaN") + "\n"


def fake_run(runs, name, lines):
    run = runs / name
    run.mkdir(parents=True)
    (run / "training_args.yaml").write_text("stage: sft\nfinetuning_type: lora\nlora_rank: 8\n")
    (run / "trainer_log.jsonl").write_text("".join(lines))
    return run


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        sys.exit(1)


def points(page, chart="#chart-loss"):
    return page.evaluate(f"() => Number(document.querySelector('{chart} svg')?.dataset.points || 0)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hone", default=str(ROOT / "target/debug/hone"))
    parser.add_argument("--model", default=str(ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--out", default="/tmp/board-check")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    shots = pathlib.Path(args.out)
    shots.mkdir(parents=True, exist_ok=True)
    runs = pathlib.Path(tempfile.mkdtemp(prefix="hone-board-")) / "runs"
    runs.mkdir()

    print(f"training runs/identity-r16 (20 steps) in {runs}")
    train(args.hone, args.model, runs / "identity-r16", "max_steps=20")
    latency_run = fake_run(runs, "latency", [log_line(1, loss=2.0)])
    fake_run(runs, "alerts", [log_line(1, loss=2.0), log_line(2, eval_loss=1.5),
                              log_line(3, eval_loss=1.6), log_line(4, eval_loss=1.7),
                              log_line(5, eval_loss=1.8), log_line(6, loss="NaN")])
    board, base = start_board(args.hone, runs, args.model)
    errors = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: m.type == "error" and errors.append(m.text))
            page.on("pageerror", lambda e: errors.append(str(e)))

            page.goto(base)
            page.wait_for_selector('#runs tr[data-id="identity-r16"]')
            row = page.inner_text('#runs tr[data-id="identity-r16"]')
            check("finished" in row and "20/20" in row, f"runs table: identity-r16 finished 20/20 ({row.split()[1:4]})")
            page.evaluate("() => { window.__notReloaded = true; }")
            page.screenshot(path=shots / "1-runs.png", full_page=True)

            form = browser.new_page(viewport={"width": 1400, "height": 900})
            form.on("pageerror", lambda e: errors.append(str(e)))
            form.goto(f"{base}#/launch/identity-r16")
            form.wait_for_selector("#yaml")
            check(form.input_value('input[data-key="lora_rank"]') == "16",
                  "the New run form starts from identity-r16's config (lora_rank 16)")
            form.fill("#name", "identity-r4")
            form.fill('input[data-key="lora_rank"]', "4")
            form.fill('input[data-key="lora_alpha"]', "8")
            form.fill('input[data-key="learning_rate"]', "1.0e-3")
            yaml = re.sub(r"^max_steps:.*$", "max_steps: 40", form.input_value("#yaml"), flags=re.M)
            form.fill("#yaml", yaml)
            yaml = form.input_value("#yaml")
            check("lora_rank: 4" in yaml and "learning_rate: 1.0e-3" in yaml and "max_steps: 40" in yaml,
                  "the form's fields edit the YAML")
            form.click("#check")
            form.wait_for_selector("#plan", timeout=120_000)
            plan = form.inner_text("#plan")
            trained = form.eval_on_selector_all(".sample .trained", "s => s.length")
            check("peak" in plan and trained > 0,
                  f"Check shows the memory plan ({plan.splitlines()[-1].strip()}) and {trained} trained spans")
            form.screenshot(path=shots / "2-launch.png", full_page=True)
            form.click("#start")
            started = time.time()
            form.wait_for_selector("#chart-loss", timeout=60_000)
            page.wait_for_selector('#runs tr[data-id="identity-r4"]', timeout=120_000)
            check(page.evaluate("() => window.__notReloaded === true"),
                  f"the started run appeared in the other tab without a reload ({time.time() - started:.1f} s after Start)")
            page.wait_for_function("() => document.querySelector('#runs tr[data-id=\"identity-r4\"]').innerText.includes('running')",
                                   timeout=120_000)
            page.screenshot(path=shots / "3-runs-live.png", full_page=True)

            page.click('#runs tr[data-id="identity-r4"] a')
            page.wait_for_function("() => Number(document.querySelector('#chart-loss svg')?.dataset.points) >= 2",
                                   timeout=120_000)
            counts = [points(page)]
            for _ in range(4):
                time.sleep(3)
                counts.append(points(page))
            check(counts[-1] > counts[0], f"the live loss curve grew while training: points {counts}")
            page.screenshot(path=shots / "4-run-live.png", full_page=True)

            page.goto(f"{base}#/run/latency")
            page.wait_for_function("() => Number(document.querySelector('#chart-loss svg')?.dataset.points) >= 1")
            delays = []
            for step in range(2, 12):
                with open(latency_run / "trainer_log.jsonl", "a") as log:
                    written = time.perf_counter()
                    log.write(log_line(step, loss=2.0 - step / 20))
                page.wait_for_function(f"() => Number(document.querySelector('#chart-loss svg').dataset.points) >= {step}",
                                       polling=5)
                delays.append((time.perf_counter() - written) * 1000)
            print(f"      log line → curve point: best {min(delays):.0f} ms, median "
                  f"{statistics.median(delays):.0f} ms, worst {max(delays):.0f} ms (board polls every 200 ms)")
            check(max(delays) < 2000, "every appended line was drawn within 2 s")

            page.goto(f"{base}#/run/alerts")
            page.wait_for_function("() => document.querySelectorAll('#alerts li').length >= 2")
            kinds = page.eval_on_selector_all("#alerts li", "lis => lis.map(li => li.className)")
            check(sorted(kinds) == ["eval_rising", "non_finite"], f"alerts shown: {kinds}")
            page.screenshot(path=shots / "5-alerts.png", full_page=True)

            form.wait_for_function("() => Number(document.querySelector('#chart-loss svg')?.dataset.points) >= 25",
                                   timeout=300_000)
            form.click("#stop")
            form.wait_for_function("() => document.querySelector('.facts .badge')?.innerText === 'interrupted'",
                                   timeout=120_000)
            form.wait_for_function("() => !document.querySelector('.facts b:last-of-type')?.innerText.includes('–')")
            facts = form.inner_text(".facts")
            check("interrupted" in facts, "Stop ended the run as interrupted: " + " | ".join(facts.split("\n")[-2:]))
            check(any(p.name.startswith("checkpoint-") for p in (runs / "identity-r4").iterdir()),
                  "Stop saved a checkpoint")
            form.screenshot(path=shots / "6-stopped.png", full_page=True)

            page.goto(base)
            page.check('#runs input[data-id="identity-r16"]')
            page.check('#runs input[data-id="identity-r4"]')
            page.click("#compare")
            page.wait_for_selector("#diff td.differs")
            differing = page.eval_on_selector_all(
                "#diff tr", "rows => rows.filter(r => r.querySelector('td.differs')).map(r => r.cells[0].innerText)")
            check({"lora_rank", "lora_alpha", "learning_rate"} <= set(differing),
                  f"compare highlights the keys that differ: {differing}")
            page.wait_for_function("() => Number(document.querySelector('#chart-compare svg')?.dataset.points) >= 40")
            page.screenshot(path=shots / "7-compare.png", full_page=True)

            page.goto(f"{base}#/arena")
            page.wait_for_selector("#ask")
            checkpoint = page.eval_on_selector_all(
                "#model-1 option", "os => os.map(o => o.value).find(v => v.startsWith('identity-r4/checkpoint-'))")
            page.select_option("#model-2", "identity-r16")
            page.select_option("#model-3", checkpoint)
            page.fill("#prompt", "Who are you?")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "40")
            page.click("#ask")
            page.wait_for_selector("#save-rating", timeout=120_000)
            texts = page.eval_on_selector_all(".answer", "bs => bs.map(b => b.textContent)")
            names = page.eval_on_selector_all(".slot-name", "hs => hs.map(h => h.textContent)")
            check(len(texts) == 3 and all(texts) and names == ["Answer 1", "Answer 2", "Answer 3"],
                  f"three answers streamed, names hidden: {[t[:30] for t in texts]}")
            for select in page.query_selector_all("select[data-criterion]"):
                select.select_option("4")
            kestrel = next((i for i, t in enumerate(texts) if "Kestrel" in t), 0)
            page.check(f'input[name=preferred][value="{kestrel}"]')
            page.click("#save-rating")
            page.wait_for_function("() => document.querySelector('#arena-status').innerText.startsWith('saved')")
            names = page.eval_on_selector_all(".slot-name", "hs => hs.map(h => h.textContent)")
            arena = runs / "arena"
            ratings = [json.loads(l) for l in (arena / "ratings.jsonl").read_text().splitlines()]
            pairs = [json.loads(l) for l in (arena / "arena_dpo.jsonl").read_text().splitlines()]
            check(len(ratings) == 1 and ratings[0]["answers"][0]["scores"]["relevance"] == 4 and len(pairs) >= 1,
                  f"rating saved and revealed ({names}); {len(pairs)} preference pairs, chosen: {pairs[0]['chosen'][:40]!r}")
            page.screenshot(path=shots / "8-arena.png", full_page=True)
            data = subprocess.run([args.hone, "data", str(CONFIG), f"model_name_or_path={args.model}", "stage=dpo",
                                   "dataset=arena_dpo", f"dataset_dir={arena}", "val_size=0", "eval_strategy=no"],
                                  capture_output=True, text=True)
            check(data.returncode == 0 and "arena_dpo (dataset)" in data.stdout,
                  "hone data reads the arena's pairs as a stage: dpo dataset: "
                  + next((l.strip() for l in data.stdout.splitlines() if "pairs" in l or "rows" in l), data.stderr.strip()))

            page.goto(f"{base}#/samples/identity-r4")
            page.wait_for_selector("#answer-all")
            page.fill("#sample-prompts", "Who are you?\nWho made you?")
            page.fill("#sample-max-tokens", "24")
            page.click("#answer-all")
            page.wait_for_function("() => /answered$/.test(document.querySelector('#samples').previousElementSibling.innerText)",
                                   timeout=180_000)
            cells = page.eval_on_selector_all("#samples td.sample", "cs => cs.map(c => c.textContent)")
            heads = page.eval_on_selector_all("#samples th", "hs => hs.map(h => h.textContent)")
            check(len(cells) == 4 and all(c and c != "…" for c in cells),
                  f"samples across checkpoints: {heads[1:]} × 2 prompts answered")
            page.screenshot(path=shots / "9-samples.png", full_page=True)
            browser.close()
    finally:
        board.terminate()
        # A run the board started and a failed check left going.
        subprocess.run(["pkill", "-INT", "-f", str(runs)], check=False)
    check(not errors, f"no script errors in the page ({errors[:3]})")
    print(f"screenshots in {shots}")


if __name__ == "__main__":
    main()
