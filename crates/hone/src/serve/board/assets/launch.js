// New run: a form over the config's main keys kept in step with the YAML below it, Check (the
// memory plan and the data as the model sees it), and Start.

import { badge, el, getJson, onLeave, postJson, runLink, view } from "./dom.js";

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

export async function launchView(from) {
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
  onLeave(() => clearInterval(timer));
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

