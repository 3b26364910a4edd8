// Answers from the board's own model: the blind arena with its ratings, and samples of a run's
// checkpoints side by side.

import { el, getJson, postJson, view } from "./dom.js";

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

export async function arenaView() {
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

export async function samplesView(id) {
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

