// The runs table, one run's page (live curves, alerts, config, results, Stop), and runs compared.

import { COLORS, axisPicker, drawChart, followLog, pointsOf } from "./charts.js";
import { badge, baseName, connection, el, fmt, getJson, onLeave, postJson, runLink, view } from "./dom.js";

const selected = new Set();

export function runsView() {
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
  onLeave(() => clearInterval(timer));
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

export async function runView(id) {
  view.replaceChildren(el("p", { class: "muted" }, "loading…"));
  let detail;
  try { detail = await getJson(`/api/run?id=${encodeURIComponent(id)}`); }
  catch (e) {
    // A run just started from the board has no folder until hone train has read its data.
    const launch = await getJson("/api/launches").then(b => b.launches.find(l => l.run === id)).catch(() => null);
    if (launch && launch.running) {
      view.replaceChildren(el("h1", {}, id), el("p", { class: "muted" }, "starting: hone train is reading the data…"), el("pre", {}, launch.output));
      const retry = setTimeout(() => runView(id), 1000);
      onLeave(() => clearTimeout(retry));
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

export async function compareView(ids) {
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

