// Curves: a line chart drawn as inline SVG at its box's own size, the x axis the page plots
// against (step, epoch, tokens seen, wall time), and a run's log followed live over
// server-sent events.

import { connection, el, hms, onLeave, svg, fmt } from "./dom.js";

export const COLORS = ["#2f5bd3", "#d9480f", "#2b8a3e", "#9c36b5", "#e8590c", "#0b7285", "#c2255c", "#5c940d"];
const AXES = { step: "step", epoch: "epoch", tokens: "tokens seen", wall: "wall time (s)" };
let axis = "step";

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
export function drawChart(box, title, series) {
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


// Follows /api/log for `id`: every record, in order, with its x positions; `onChange` after each
// batch of events. The browser's EventSource reconnects by itself and sends Last-Event-ID, so
// the server replays only what was missed.
export function followLog(id, onChange, onStatus) {
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
    state.records.push({ step: data.step, x: { step: data.step, ...last }, r });
    state.alerts.push(...data.alerts);
    changed();
  });
  source.addEventListener("reset", () => { state.records = []; state.alerts = []; last = { epoch: 0, tokens: 0, wall: 0 }; changed(); });
  source.addEventListener("status", event => onStatus && onStatus(JSON.parse(event.data)));
  source.onopen = () => { connection.textContent = "live"; };
  source.onerror = () => { connection.textContent = "reconnecting…"; };
  onLeave(() => source.close());
  return state;
}

// A value of the record as a plotted number: strings (NaN, Infinity) are left out.
const num = v => (typeof v === "number" ? v : undefined);
// Evaluation lines repeat the step's progress fields (throughput…): only eval_loss is theirs.
export const pointsOf = (records, key) => records
  .filter(rec => num(rec.r[key]) !== undefined && (key === "eval_loss" || rec.r.eval_loss === undefined))
  .map(rec => [rec.x[axis], rec.r[key]]);

export function axisPicker(onPick) {
  return el("label", {}, "x axis ",
    el("select", { id: "axis", onchange: e => { axis = e.target.value; onPick(); } },
      Object.entries(AXES).map(([k, label]) => el("option", { value: k, selected: k === axis }, label))));
}
