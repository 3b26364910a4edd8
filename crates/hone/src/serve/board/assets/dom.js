// The page's small toolkit: building elements (text only ever as textContent, never parsed as
// HTML), the JSON API calls, number and time formats, and what a view must stop when the next
// one opens.

export const view = document.getElementById("view");
export const connection = document.getElementById("connection");

const leaving = [];

// Registers what to stop (a timer, an event stream) when another view opens.
export function onLeave(stop) { leaving.push(stop); }

// Stops everything the current view started.
export function leave() {
  for (const stop of leaving.splice(0)) stop();
}

// el("td", {class: "num"}, "1.25", child…): an element with attributes and children.
export function el(tag, attrs, ...children) {
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

export function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

// A change (start, stop): JSON from this page, which is what the board accepts.
export async function postJson(url, body) {
  const response = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}),
  });
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

export async function getJson(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

export const fmt = {
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

export const baseName = path => (path ? path.split(/[\\/]/).filter(Boolean).pop() : "–");

export function badge(status) { return el("span", { class: `badge ${status}` }, status); }
export function runLink(id) { return `#/run/${encodeURIComponent(id)}`; }

// "H:MM:SS" or "N days, H:MM:SS" → seconds.
export function hms(text) {
  if (typeof text !== "string") return undefined;
  let days = 0, clock = text;
  const comma = text.indexOf(", ");
  if (comma >= 0) { days = parseInt(text, 10); clock = text.slice(comma + 2); }
  const [h, m, s] = clock.split(":").map(Number);
  return days * 86400 + h * 3600 + m * 60 + s;
}
