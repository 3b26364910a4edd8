// Hone board: the runs table, one run's live curves, and runs compared. Plain DOM and inline SVG,
// no libraries: the page must work offline from the binary alone. Text from runs is only ever
// set as textContent, never parsed as HTML.
"use strict";

const view = document.getElementById("view");
const connection = document.getElementById("connection");
const COLORS = ["#2f5bd3", "#d9480f", "#2b8a3e", "#9c36b5", "#e8590c", "#0b7285", "#c2255c", "#5c940d"];
const AXES = { step: "step", epoch: "epoch", tokens: "tokens seen", wall: "wall time (s)" };
let cleanup = [];  // what the current view must stop when another one opens
let axis = "step";

// el("td", {class: "num"}, "1.25", child…): an element with attributes and children.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    // Through the CSSOM: the page's policy forbids style attributes.
    else if (k === "style") Object.assign(node.style, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

// A change (start, stop): JSON from this page, which is what the board accepts.
async function postJson(url, body) {
  const response = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

const fmt = {
  num(x, digits = 4) {
    if (x === undefined || x === null) return "–";
    if (typeof x === "string") return x;  // NaN / Infinity, as the log wrote them
    if (Math.abs(x) >= 1e5 || (x !== 0 && Math.abs(x) < 1e-3)) return x.toExponential(2);
    return Number(x.toFixed(digits)).toString();
  },
  seconds(s) {
    if (s === undefined || s === null) return "–";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? `${h}h ${String(m).padStart(2, "0")}m` : m ? `${m}m ${String(r).padStart(2, "0")}s` : `${r}s`;
  },
  when(unix) { return unix ? new Date(unix * 1000).toLocaleString() : "–"; },
  value(v) { return v === null || v === undefined ? "–" : typeof v === "number" ? fmt.num(v) : String(v); },
};

const baseName = path => (path ? path.split(/[\\/]/).filter(Boolean).pop() : "–");

function badge(status) { return el("span", { class: `badge ${status}` }, status); }
function runLink(id) { return `#/run/${encodeURIComponent(id)}`; }

// "H:MM:SS" or "N days, H:MM:SS" → seconds.
function hms(text) {
  if (typeof text !== "string") return undefined;
  let days = 0, clock = text;
  const comma = text.indexOf(", ");
  if (comma >= 0) { days = parseInt(text, 10); clock = text.slice(comma + 2); }
  const [h, m, s] = clock.split(":").map(Number);
  return days * 86400 + h * 3600 + m * 60 + s;
}

// ---- charts ---------------------------------------------------------------------------------

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map(f => f * mag).find(s => s >= raw);
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

function tickLabel(t) {
  if (axis === "wall") return fmt.seconds(t);
  if (Math.abs(t) >= 1e4 || (t !== 0 && Math.abs(t) < 1e-2)) return t.toExponential(1);
  return String(t);
}

// A line chart of `series` ([{name, color, dashed, points: [[x, y]…]}]) drawn into `box`.
function drawChart(box, title, series) {
  // Drawn at the box's own size, so that text is never stretched.
  const W = Math.max(320, box.clientWidth - 16) || 520, H = box.classList.contains("wide") ? 300 : 220;
  const L = 54, R = 12, T = 10, B = 30;
  const all = series.flatMap(s => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, "data-points": all.length });
  if (!all.length) {
    chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "no points yet"));
  } else {
    let [x0, x1] = [Math.min(...all.map(p => p[0])), Math.max(...all.map(p => p[0]))];
    let [y0, y1] = [Math.min(...all.map(p => p[1])), Math.max(...all.map(p => p[1]))];
    if (x1 === x0) x1 = x0 + 1;
    const pad = (y1 - y0) * 0.06 || Math.abs(y0) * 0.05 || 1;
    y0 -= pad; y1 += pad;
    const sx = x => L + (x - x0) / (x1 - x0) * (W - L - R);
    const sy = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    for (const t of niceTicks(y0, y1, 4)) {
      chart.append(svg("line", { x1: L, x2: W - R, y1: sy(t), y2: sy(t), class: "grid" }));
      chart.append(svg("text", { x: L - 6, y: sy(t) + 3, "text-anchor": "end", class: "tick" }, tickLabel(t)));
    }
    for (const t of niceTicks(x0, x1, 6)) {
      chart.append(svg("text", { x: sx(t), y: H - B + 14, "text-anchor": "middle", class: "tick" }, tickLabel(t)));
    }
    chart.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
    chart.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
    chart.append(svg("text", { x: (L + W - R) / 2, y: H - 3, "text-anchor": "middle", class: "tick" }, AXES[axis]));
    for (const s of series) {
      const pts = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
      if (!pts.length) continue;
      const d = pts.map(([x, y], i) => `${i ? "L" : "M"}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join("");
      chart.append(svg("path", {
        d, fill: "none", stroke: s.color, "stroke-width": 1.8, "vector-effect": "non-scaling-stroke",
        "stroke-dasharray": s.dashed ? "5 4" : "none", "data-series": s.name,
      }));
      if (pts.length < 40 || s.dashed) {
        for (const [x, y] of pts) chart.append(svg("circle", { cx: sx(x), cy: sy(y), r: 2.2, fill: s.color }));
      }
    }
  }
  const legend = el("div", { class: "legend" },
    series.map(s => el("span", {}, el("i", { style: { background: s.color } }), s.name)));
  box.replaceChildren(el("div", { class: "title" }, title), chart, legend);
}

// ---- one run's log, live ---------------------------------------------------------------------

// Follows /api/log for `id`: every record, in order, with its x positions; `onChange` after each
// batch of events. The browser's EventSource reconnects by itself and sends Last-Event-ID, so
// the server replays only what was missed.
function followLog(id, onChange, onStatus) {
  const state = { records: [], alerts: [] };
  let last = { epoch: 0, tokens: 0, wall: 0 };
  let pending = false;
  const changed = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; onChange(state); });
  };
  const source = new EventSource(`/api/log?id=${encodeURIComponent(id)}`);
  source.addEventListener("log", event => {
    const data = JSON.parse(event.data);
    const r = data.record || {};
    const wall = hms(r.elapsed_time);
    last = {
      epoch: typeof r.epoch === "number" ? r.epoch : last.epoch,
      tokens: typeof r.total_tokens === "number" ? r.total_tokens : last.tokens,
      wall: wall !== undefined && !Number.isNaN(wall) ? wall : last.wall,
    };
    state.records.push({ step: data.step, x: { step: data.step, ...last }, r, received: performance.now() });
    state.alerts.push(...data.alerts);
    changed();
  });
  source.addEventListener("reset", () => { state.records = []; state.alerts = []; last = { epoch: 0, tokens: 0, wall: 0 }; changed(); });
  source.addEventListener("status", event => onStatus && onStatus(JSON.parse(event.data)));
  source.onopen = () => { connection.textContent = "live"; };
  source.onerror = () => { connection.textContent = "reconnecting…"; };
  cleanup.push(() => source.close());
  return state;
}

// A value of the record as a plotted number: strings (NaN, Infinity) are left out.
const num = v => (typeof v === "number" ? v : undefined);
// Evaluation lines repeat the step's progress fields (throughput…): only eval_loss is theirs.
const pointsOf = (records, key) => records
  .filter(rec => num(rec.r[key]) !== undefined && (key === "eval_loss" || rec.r.eval_loss === undefined))
  .map(rec => [rec.x[axis], rec.r[key]]);

function axisPicker(onPick) {
  return el("label", {}, "x axis ",
    el("select", { id: "axis", onchange: e => { axis = e.target.value; onPick(); } },
      Object.entries(AXES).map(([k, label]) => el("option", { value: k, selected: k === axis }, label))));
}

// ---- views ----------------------------------------------------------------------------------

const selected = new Set();

function runsView() {
  const table = el("table", { id: "runs" });
  const compare = el("button", { id: "compare", disabled: true, onclick: () => {
    location.hash = `#/compare/${[...selected].map(encodeURIComponent).join(",")}`;
  } }, "Compare selected");
  view.replaceChildren(
    el("div", { class: "toolbar" }, el("h1", {}, "Runs"), compare, el("span", { class: "muted", id: "count" })),
    table);
  const head = el("tr", {}, ["", "run", "status", "method", "model", "dataset", "steps", "loss", "best eval", "wall", "started", "alerts"]
    .map(h => el("th", {}, h)));
  const render = runs => {
    document.getElementById("count").textContent = `${runs.length} run${runs.length === 1 ? "" : "s"}`;
    for (const id of [...selected]) if (!runs.some(r => r.id === id)) selected.delete(id);
    compare.disabled = selected.size < 2;
    const rows = runs.map(run => {
      const pct = run.total_steps ? Math.min(100, 100 * run.step / run.total_steps) : 0;
      const box = el("input", { type: "checkbox", checked: selected.has(run.id), "data-id": run.id, onchange: e => {
        e.target.checked ? selected.add(run.id) : selected.delete(run.id);
        compare.disabled = selected.size < 2;
      } });
      return el("tr", { "data-id": run.id },
        el("td", {}, box),
        el("td", {}, el("a", { href: runLink(run.id) }, run.id)),
        el("td", { title: run.message || "" }, badge(run.status)),
        el("td", {}, run.method),
        el("td", { title: run.model || "" }, baseName(run.model)),
        el("td", {}, run.dataset || "–"),
        el("td", { class: "num" }, el("span", { class: "progress" }, el("span", { style: { width: `${pct}%` } })), `${run.step}/${run.total_steps}`),
        el("td", { class: "num" }, fmt.num(run.last_loss)),
        el("td", { class: "num" }, fmt.num(run.best_eval_loss)),
        el("td", { class: "num" }, fmt.seconds(run.wall_seconds)),
        el("td", {}, fmt.when(run.started)),
        el("td", { class: "num" }, run.alerts ? el("b", { class: "bad" }, run.alerts) : "0"));
    });
    table.replaceChildren(head, ...rows);
    if (!runs.length) table.append(el("tr", {}, el("td", { colspan: 12, class: "muted" }, "No runs yet under the board's folders.")));
  };
  const refresh = () => getJson("/api/runs").then(b => render(b.runs)).catch(e => { connection.textContent = e.message; });
  refresh();
  // New runs and their progress appear without a reload; the server reads only new log bytes.
  const timer = setInterval(refresh, 2000);
  cleanup.push(() => clearInterval(timer));
}

function factsOf(run) {
  return el("div", { class: "facts" },
    [["status", badge(run.status)], ["method", run.method], ["model", baseName(run.model)], ["dataset", run.dataset || "–"],
     ["steps", `${run.step}/${run.total_steps}`], ["last loss", fmt.num(run.last_loss)],
     ["best eval loss", fmt.num(run.best_eval_loss)], ["wall time", fmt.seconds(run.wall_seconds)],
     ["checkpoints", run.checkpoints.length ? run.checkpoints.join(", ") : "–"]]
      .map(([k, v]) => el("div", {}, el("span", {}, k), el("b", {}, v))));
}

// The summary's log-derived fields from the lines received so far.
function progressOf(records) {
  const last = records[records.length - 1];
  if (!last) return {};
  const losses = records.filter(rec => rec.r.loss !== undefined && rec.r.eval_loss === undefined);
  const evals = records.map(rec => rec.r.eval_loss).filter(v => typeof v === "number");
  return {
    step: last.step, total_steps: last.r.total_steps ?? 0,
    last_loss: losses.length ? losses[losses.length - 1].r.loss : null,
    best_eval_loss: evals.length ? Math.min(...evals) : null,
    wall_seconds: last.x.wall,
  };
}

function keyValueTable(entries) {
  return el("table", { class: "kv" }, entries.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, fmt.value(v)))));
}

async function runView(id) {
  view.replaceChildren(el("p", { class: "muted" }, "loading…"));
  let detail;
  try { detail = await getJson(`/api/run?id=${encodeURIComponent(id)}`); }
  catch (e) {
    // A run just started from the board has no folder until hone train has read its data.
    const launch = await getJson("/api/launches").then(b => b.launches.find(l => l.run === id)).catch(() => null);
    if (launch && launch.running) {
      view.replaceChildren(el("h1", {}, id), el("p", { class: "muted" }, "starting: hone train is reading the data…"), el("pre", {}, launch.output));
      const retry = setTimeout(() => runView(id), 1000);
      cleanup.push(() => clearTimeout(retry));
    } else {
      view.replaceChildren(el("p", {}, `${id}: ${e.message}`), launch ? el("pre", { class: "error" }, launch.output) : "");
    }
    return;
  }
  const facts = el("div", {}, factsOf(detail.run));
  const alerts = el("ul", { class: "alerts", id: "alerts" });
  const boxes = { loss: el("div", { class: "chart", id: "chart-loss" }), lr: el("div", { class: "chart", id: "chart-lr" }),
    grad: el("div", { class: "chart", id: "chart-grad" }), speed: el("div", { class: "chart", id: "chart-speed" }) };
  let log = { records: [], alerts: [] };
  const draw = () => {
    drawChart(boxes.loss, "Loss", [
      { name: "train loss", color: COLORS[0], points: pointsOf(log.records, "loss") },
      { name: "eval loss", color: COLORS[1], dashed: true, points: pointsOf(log.records, "eval_loss") }]);
    drawChart(boxes.lr, "Learning rate", [{ name: "lr", color: COLORS[2], points: pointsOf(log.records, "lr") }]);
    drawChart(boxes.grad, "Gradient norm", [{ name: "grad_norm", color: COLORS[3], points: pointsOf(log.records, "grad_norm") }]);
    drawChart(boxes.speed, "Throughput (tokens/s)", [{ name: "throughput", color: COLORS[5], points: pointsOf(log.records, "throughput") }]);
    alerts.replaceChildren(...log.alerts.map(a => el("li", { class: a.kind }, a.message)));
  };
  const configRows = Object.entries(detail.config);
  const filter = el("input", { type: "search", placeholder: "filter keys", oninput: e => {
    const q = e.target.value.toLowerCase();
    configBox.replaceChildren(keyValueTable(configRows.filter(([k, v]) => (k + " " + v).toLowerCase().includes(q))));
  } });
  const configBox = el("div", {}, keyValueTable(configRows));
  const results = Object.entries(detail.results);
  const message = el("p", { class: "muted" }, detail.run.message || "");
  const stop = detail.stoppable ? el("button", { class: "danger", id: "stop", onclick: async () => {
    stop.disabled = true;
    try { await postJson(`/api/stop?id=${encodeURIComponent(id)}`); stop.textContent = "stopping: saving a checkpoint…"; }
    catch (e) { message.textContent = e.message; stop.disabled = false; }
  } }, "Stop (save a checkpoint)") : null;
  view.replaceChildren(
    el("div", { class: "toolbar" }, el("h1", {}, id), stop || "",
      el("a", { href: `#/samples/${encodeURIComponent(id)}`, id: "samples-link" }, "samples across checkpoints")),
    facts, message, alerts,
    el("div", { class: "toolbar" }, axisPicker(draw), el("span", { class: "muted", id: "points" })),
    el("div", { class: "charts" }, Object.values(boxes)),
    el("div", { class: "split" },
      el("div", {}, el("h2", {}, "Config (training_args.yaml)"), filter, el("div", { class: "scroll" }, configBox)),
      el("div", {}, el("h2", {}, "Results"), results.length ? keyValueTable(results) : el("p", { class: "muted" }, "none yet"))));
  const run = detail.run;
  log = followLog(id, state => {
    log = state;
    draw();
    Object.assign(run, progressOf(state.records));
    facts.replaceChildren(factsOf(run));
    document.getElementById("points").textContent = `${state.records.length} log lines`;
  }, async status => {
    run.status = status.status;
    if (stop && status.status !== "running") stop.remove();
    message.textContent = status.message || "";
    facts.replaceChildren(factsOf(run));
    // Checkpoints and results come with the end of a run: read the summary again.
    try { Object.assign(run, (await getJson(`/api/run?id=${encodeURIComponent(id)}`)).run); }
    catch (_) { return; /* the run went away; the page keeps what it has */ }
    facts.replaceChildren(factsOf(run));
  });
  draw();
}

async function compareView(ids) {
  view.replaceChildren(el("p", { class: "muted" }, "loading…"));
  let cmp;
  try { cmp = await getJson(`/api/compare?${ids.map(id => `id=${encodeURIComponent(id)}`).join("&")}`); }
  catch (e) { view.replaceChildren(el("p", {}, e.message)); return; }
  const color = i => COLORS[i % COLORS.length];
  const header = () => el("tr", {}, el("th", {}, "key"), cmp.runs.map((r, i) => el("th", { class: "run", style: { color: color(i) } }, r.id)));
  const diff = el("table", { id: "diff" }, header(), cmp.diff.map(d => {
    // Highlight the values that differ from the first run's.
    return el("tr", {}, el("td", {}, d.key), d.values.map(v => el("td", { class: v !== d.values[0] ? "differs" : "" }, v === null ? "(unset)" : v)));
  }));
  const metrics = el("table", { id: "metrics" }, header(),
    [["best eval loss", cmp.runs.map(r => r.best_eval_loss)], ["last loss", cmp.runs.map(r => r.last_loss)],
     ["steps", cmp.runs.map(r => r.step)], ["wall time (s)", cmp.runs.map(r => r.wall_seconds)], ...Object.entries(cmp.results)]
      .map(([k, values]) => el("tr", {}, el("td", {}, k), values.map(v => el("td", { class: "num" }, fmt.value(v))))));
  const reports = cmp.reports.length
    ? el("ul", {}, cmp.reports.map(r => el("li", {}, el("a", { href: `/api/report?id=${encodeURIComponent(r.id)}`, target: "_blank" }, r.id),
        ` — covers ${r.runs.map(i => cmp.runs[i].id).join(", ")}`)))
    : el("p", { class: "muted" }, "No hone compare report under the board's folders covers these runs.");
  const lossBox = el("div", { class: "chart wide", id: "chart-compare" });
  const logs = cmp.runs.map(() => ({ records: [] }));
  const draw = () => drawChart(lossBox, "Loss (solid: train, dashed: eval)", cmp.runs.flatMap((r, i) => [
    { name: `${r.id} train`, color: color(i), points: pointsOf(logs[i].records, "loss") },
    { name: `${r.id} eval`, color: color(i), dashed: true, points: pointsOf(logs[i].records, "eval_loss") }]));
  view.replaceChildren(
    el("h1", {}, `Comparing ${cmp.runs.length} runs`),
    el("div", { class: "toolbar" }, axisPicker(draw)),
    el("div", { class: "charts" }, lossBox),
    el("h2", {}, `Config: ${cmp.diff.length} keys differ, ${cmp.same} the same`), diff,
    el("h2", {}, "Final numbers"), metrics,
    el("h2", {}, "hone compare reports"), reports);
  cmp.runs.forEach((r, i) => followLog(r.id, state => { logs[i] = state; draw(); }));
  draw();
}

// ---- launch --------------------------------------------------------------------------------

const STARTER = `### model
model_name_or_path: models/SmolLM2-135M-Instruct.Q4_1.gguf

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_alpha: 16
lora_target: all

### dataset
dataset: identity
dataset_dir: examples/identity
cutoff_len: 512
val_size: 0.05

### output
logging_steps: 5
save_steps: 100

### train
per_device_train_batch_size: 4
gradient_accumulation_steps: 1
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1

### eval
eval_strategy: steps
eval_steps: 20
`;

// The form's keys (LLaMA-Factory's), each kept in step with its line of the YAML below it.
const FIELDS = [
  ["model_name_or_path", "model"], ["dataset", "dataset"], ["dataset_dir", "dataset_dir"],
  ["stage", "stage", ["sft", "pt", "dpo", "kto", "rm"]], ["finetuning_type", "method", ["lora", "full", "freeze"]],
  ["lora_rank", "LoRA rank"], ["lora_alpha", "LoRA alpha"], ["lora_target", "LoRA targets"],
  ["learning_rate", "learning rate"], ["num_train_epochs", "epochs"],
  ["per_device_train_batch_size", "batch size"], ["gradient_accumulation_steps", "gradient accumulation"],
  ["cutoff_len", "cutoff length"], ["template", "chat template"],
];

const lineOf = key => new RegExp(`^${key}:[^\\n]*$`, "m");
const yamlValue = (yaml, key) => { const m = yaml.match(lineOf(key)); return m ? m[0].slice(key.length + 1).trim() : ""; };
function setYamlValue(yaml, key, value) {
  if (lineOf(key).test(yaml)) return value === "" ? yaml.replace(new RegExp(`^${key}:[^\\n]*\\n?`, "m"), "") : yaml.replace(lineOf(key), `${key}: ${value}`);
  return value === "" ? yaml : `${yaml.replace(/\n*$/, "\n")}${key}: ${value}\n`;
}

async function launchView(from) {
  let yaml = STARTER;
  let runs = [];
  try { runs = (await getJson("/api/runs")).runs; } catch (_) { /* the starter config will do */ }
  const source = from || (runs.length ? [...runs].sort((a, b) => (b.started || 0) - (a.started || 0))[0].id : null);
  if (source) {
    try {
      const detail = await getJson(`/api/run?id=${encodeURIComponent(source)}`);
      if (detail.config_yaml) yaml = detail.config_yaml.replace(/^output_dir:[^\n]*\n?/m, "").replace(/^[a-z_]+: null\n/gm, "");
    } catch (_) { /* keep the starter */ }
  }
  const textarea = el("textarea", { id: "yaml", spellcheck: "false" });
  textarea.value = yaml;
  const inputs = {};
  const form = el("form", { class: "launch", onsubmit: e => e.preventDefault() },
    el("label", {}, "run name (folder under the first --runs folder)", el("input", { id: "name", value: `run-${new Date().toISOString().slice(0, 19).replace(/[-:T]/g, "")}` })),
    FIELDS.map(([key, label, options]) => {
      const input = options
        ? el("select", { "data-key": key }, options.map(o => el("option", { value: o }, o)))
        : el("input", { "data-key": key });
      input.value = yamlValue(yaml, key);
      input.addEventListener("input", () => { textarea.value = setYamlValue(textarea.value, key, input.value.trim()); });
      inputs[key] = input;
      return el("label", {}, label, input);
    }));
  textarea.addEventListener("input", () => { for (const [key, input] of Object.entries(inputs)) input.value = yamlValue(textarea.value, key); });
  const fromPicker = el("select", { id: "from", onchange: e => { location.hash = e.target.value ? `#/launch/${encodeURIComponent(e.target.value)}` : "#/launch"; } },
    el("option", { value: "" }, "the starter config"), runs.map(r => el("option", { value: r.id, selected: r.id === source }, r.id)));
  const review = el("div", { id: "review" });
  const launches = el("div", { id: "launches" });
  const request = () => ({ name: document.getElementById("name").value.trim(), yaml: textarea.value });
  const check = el("button", { class: "secondary", id: "check", onclick: async () => {
    review.replaceChildren(el("p", { class: "muted" }, "checking: reading the data and planning memory…"));
    try { showReview(review, await postJson("/api/launch/check", request())); }
    catch (e) { review.replaceChildren(el("p", { class: "error" }, e.message)); }
  } }, "Check: plan and data");
  const start = el("button", { id: "start", onclick: async () => {
    start.disabled = true;
    try { location.hash = runLink((await postJson("/api/launch", request())).run); }
    catch (e) { review.replaceChildren(el("p", { class: "error" }, e.message)); start.disabled = false; }
  } }, "Start");
  view.replaceChildren(
    el("h1", {}, "New run"),
    el("div", { class: "toolbar" }, el("label", {}, "start from ", fromPicker)),
    form,
    el("h2", {}, "The config it will run (hone train YAML; output_dir is set from the name)"), textarea,
    el("div", { class: "toolbar" }, check, start),
    review,
    el("h2", {}, "Started from this board"), launches);
  const refresh = async () => {
    try {
      const list = (await getJson("/api/launches")).launches;
      launches.replaceChildren(list.length ? el("table", {}, list.map(l => el("tr", {},
        el("td", {}, el("a", { href: runLink(l.run) }, l.run)),
        el("td", {}, l.running ? badge("running") : `exited ${l.exit_code}`),
        el("td", {}, l.running || l.exit_code === 0 ? "" : el("pre", {}, l.output.split("\n").slice(-6).join("\n")))))) : el("p", { class: "muted" }, "none yet"));
    } catch (_) { /* shown on the next refresh */ }
  };
  refresh();
  const timer = setInterval(refresh, 3000);
  cleanup.push(() => clearInterval(timer));
}

function showReview(box, r) {
  box.replaceChildren(
    el("h2", {}, "Memory plan ", el("span", { class: `badge ${r.plan.fits ? "finished" : "failed"}` }, r.plan.fits ? "fits" : "does not fit")),
    el("pre", { id: "plan" }, r.plan.table),
    r.exists ? el("p", { class: "error" }, `${r.output_dir} exists already: pick another name`) : el("p", { class: "muted" }, `output: ${r.output_dir}`),
    el("h2", {}, "Data"), el("pre", {}, r.data.stats),
    el("h2", {}, "First rows as the model sees them (trained tokens highlighted)"),
    ...r.data.samples.map(s => el("div", { class: "sample" }, el("div", { class: "muted" }, s.origin),
      s.pieces.map(p => el("span", { class: p.trained ? "trained" : "" }, p.text)))),
    el("details", {}, el("summary", {}, "resolved config"), el("pre", {}, r.yaml)));
}

// ---- answers from the board's model (arena, samples) ---------------------------------------

// Streams one chat completion from the board's own OpenAI route; `onText` gets the text so far.
async function streamChat(model, messages, settings, onText) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model, messages, stream: true, ...settings }),
  });
  if (!response.ok) throw new Error((await response.json().catch(() => ({}))).error?.message || response.statusText);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "", text = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const delta = JSON.parse(line.slice(6)).choices?.[0]?.delta?.content;
        if (delta) { text += delta; onText(text); }
      }
    }
  }
  return text;
}

async function arenaInfo() {
  const info = await getJson("/api/arena");
  if (!info.available) throw new Error(info.why);
  return info;
}

function shuffled(items) {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

async function arenaView() {
  let info;
  try { info = await arenaInfo(); }
  catch (e) { view.replaceChildren(el("h1", {}, "Arena"), el("p", { class: "muted" }, e.message)); return; }
  const names = info.candidates.map(c => c.name);
  const picker = (id, chosen) => el("select", { id }, el("option", { value: "" }, "(none)"),
    names.map(n => el("option", { value: n, selected: n === chosen }, n)));
  const adapters = names.slice(1);
  const pickers = [picker("model-1", names[0]), picker("model-2", adapters[adapters.length - 1] || ""), picker("model-3", "")];
  const system = el("input", { id: "system", placeholder: "system prompt (optional)", style: { width: "100%" } });
  const prompt = el("textarea", { id: "prompt", placeholder: "a prompt", rows: 3, style: { width: "100%" } });
  const temperature = el("input", { id: "temperature", type: "number", step: "0.1", min: "0", value: "0.7" });
  const maxTokens = el("input", { id: "max-tokens", type: "number", min: "1", value: "256" });
  const answers = el("div", { id: "answers", class: "split" });
  const status = el("p", { class: "muted", id: "arena-status" });
  const ask = el("button", { id: "ask", onclick: async () => {
    const models = [...new Set(pickers.map(p => p.value).filter(Boolean))];
    if (models.length < 2) { status.textContent = "pick two or three different models"; return; }
    if (!prompt.value.trim()) { status.textContent = "write a prompt"; return; }
    ask.disabled = true;
    status.textContent = "loading the adapters…";
    try { await postJson("/api/arena/load", { models }); }
    catch (e) { status.textContent = e.message; ask.disabled = false; return; }
    status.textContent = "answering (the order is hidden until you rate)…";
    const messages = [...(system.value.trim() ? [{ role: "system", content: system.value }] : []), { role: "user", content: prompt.value }];
    const settings = { temperature: Number(temperature.value), max_tokens: Number(maxTokens.value) };
    const slots = shuffled(models).map((model, i) => ({ model, text: "", box: el("div", { class: "sample answer", "data-slot": i }) }));
    answers.replaceChildren(...slots.map((slot, i) => el("div", { class: "card" }, el("h2", { class: "slot-name" }, `Answer ${i + 1}`), slot.box)));
    await Promise.all(slots.map(slot => streamChat(slot.model, messages, settings, text => { slot.text = text; slot.box.textContent = text; })
      .catch(e => { slot.error = e.message; slot.box.textContent = e.message; })));
    ask.disabled = false;
    if (slots.some(s => s.error)) { status.textContent = "an answer failed: rate again after asking again"; return; }
    status.textContent = "rate each answer on the guide's checklist, pick the better one, then save";
    showRatingForm(slots, { system: system.value.trim() || null, prompt: prompt.value }, info.criteria, status);
  } }, "Ask");
  view.replaceChildren(
    el("h1", {}, "Arena"),
    el("p", { class: "muted" }, "The same prompt answered by the base model and the runs' adapters or checkpoints, in a hidden order: rate, then see who wrote what. Ratings go to arena/ratings.jsonl; a preferred answer makes preference pairs for stage: dpo (dataset arena_dpo)."),
    el("div", { class: "toolbar" }, ...pickers.map((p, i) => el("label", {}, `model ${i + 1} `, p))),
    system, prompt,
    el("div", { class: "toolbar" }, el("label", {}, "temperature ", temperature), el("label", {}, "max tokens ", maxTokens), ask),
    status, answers);
}

function showRatingForm(slots, asked, criteria, status) {
  for (const [i, slot] of slots.entries()) {
    slot.scores = {};
    const rows = criteria.map(c => el("label", {}, `${c} `, el("select", { "data-criterion": c, "data-slot": i, onchange: e => { slot.scores[c] = Number(e.target.value); } },
      el("option", { value: "" }, "–"), [1, 2, 3, 4, 5].map(n => el("option", { value: n }, n)))));
    slot.box.after(el("div", { class: "toolbar rating" }, ...rows,
      el("label", {}, el("input", { type: "radio", name: "preferred", value: i, "data-slot": i }), " better")));
  }
  const tie = el("label", {}, el("input", { type: "radio", name: "preferred", value: "tie" }), " tie (no pair)");
  const save = el("button", { id: "save-rating", onclick: async () => {
    const picked = document.querySelector("input[name=preferred]:checked");
    if (!picked) { status.textContent = "pick the better answer, or tie"; return; }
    save.disabled = true;
    const body = {
      ...asked,
      answers: slots.map(s => ({ model: s.model, text: s.text, scores: s.scores })),
      preferred: picked.value === "tie" ? null : Number(picked.value),
    };
    try {
      const saved = await postJson("/api/arena/rate", body);
      document.querySelectorAll(".slot-name").forEach((h, i) => { h.textContent = `Answer ${i + 1}: ${slots[i].model}`; });
      status.textContent = `saved: ${saved.pairs} preference pair${saved.pairs === 1 ? "" : "s"} for dataset ${saved.dataset} in ${saved.dataset_dir}`;
    } catch (e) { status.textContent = e.message; save.disabled = false; }
  } }, "Save rating");
  document.getElementById("answers").after(el("div", { class: "toolbar" }, tie, save));
}

async function samplesView(id) {
  let info;
  try { info = await arenaInfo(); }
  catch (e) { view.replaceChildren(el("h1", {}, `Samples: ${id}`), el("p", { class: "muted" }, e.message)); return; }
  const models = [info.candidates[0], ...info.candidates.filter(c => c.run === id && c.step !== null).sort((a, b) => a.step - b.step),
    ...info.candidates.filter(c => c.run === id && c.step === null)];
  const stored = localStorage.getItem(`hone-samples:${id}`);
  const prompts = el("textarea", { id: "sample-prompts", rows: 4, style: { width: "100%" } });
  prompts.value = stored || "Who are you?\nWhat can you help me with?\nWrite one sentence about the sea.";
  const maxTokens = el("input", { id: "sample-max-tokens", type: "number", min: "1", value: "96" });
  const grid = el("table", { id: "samples" });
  const status = el("p", { class: "muted" });
  const run = el("button", { id: "answer-all", onclick: async () => {
    const list = prompts.value.split("\n").map(p => p.trim()).filter(Boolean);
    localStorage.setItem(`hone-samples:${id}`, prompts.value);
    run.disabled = true;
    status.textContent = "loading the checkpoints…";
    try { await postJson("/api/arena/load", { models: models.map(m => m.name) }); }
    catch (e) { status.textContent = e.message; run.disabled = false; return; }
    const cells = list.map(() => models.map(() => el("td", { class: "sample" }, "…")));
    grid.replaceChildren(el("tr", {}, el("th", {}, "prompt"), models.map(m => el("th", { class: "run" }, m.step !== null ? `checkpoint-${m.step}` : m.run ? "final" : "base"))),
      ...list.map((p, i) => el("tr", {}, el("td", {}, p), cells[i])));
    status.textContent = "answering at temperature 0…";
    const jobs = list.flatMap((p, i) => models.map((m, j) => ({ p, cell: cells[i][j], model: m.name })));
    // A few requests at a time: the server batches them; the rest wait their turn here.
    const workers = Array.from({ length: 4 }, async () => {
      for (let job = jobs.shift(); job; job = jobs.shift()) {
        await streamChat(job.model, [{ role: "user", content: job.p }], { temperature: 0, max_tokens: Number(maxTokens.value) },
          text => { job.cell.textContent = text; }).catch(e => { job.cell.textContent = e.message; });
      }
    });
    await Promise.all(workers);
    status.textContent = `${list.length} prompts × ${models.length} models answered`;
    run.disabled = false;
  } }, "Answer at every checkpoint");
  view.replaceChildren(
    el("h1", {}, `Samples across checkpoints: ${id}`),
    el("p", { class: "muted" }, "The same prompts answered by the base model, each saved checkpoint and the final adapter (greedy)."),
    prompts, el("div", { class: "toolbar" }, el("label", {}, "max tokens ", maxTokens), run), status, grid);
}

function route() {
  for (const stop of cleanup) stop();
  cleanup = [];
  connection.textContent = "";
  const hash = location.hash || "#/";
  if (hash.startsWith("#/run/")) return runView(decodeURIComponent(hash.slice(6)));
  if (hash === "#/arena") return arenaView();
  if (hash.startsWith("#/samples/")) return samplesView(decodeURIComponent(hash.slice(10)));
  if (hash === "#/launch") return launchView(null);
  if (hash.startsWith("#/launch/")) return launchView(decodeURIComponent(hash.slice(9)));
  if (hash.startsWith("#/compare/")) return compareView(hash.slice(10).split(",").map(decodeURIComponent));
  return runsView();
}

window.addEventListener("hashchange", route);
route();
