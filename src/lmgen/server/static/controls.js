// The decoding controls, generated from the settings' declarations (GET /v1/lmgen/settings):
// one control per setting, grouped as docs/settings.md groups them, the references' names in
// the tooltip. A setting added to lmgen.settings appears here without a line of page code.
// Which request carries a setting, and under which name, comes from the declarations too.
"use strict";

const controls = {
  settings: [], // the declarations, in order
  byName: {},
  // where the page starts elsewhere than the declared default: sampling first, 3 beams
  pageDefaults: { strategy: "sample", num_beams: 3 },
  // contrastive search compares top_k candidates: the page's k where top_k is off (0), as in
  // transformers' examples (penalty_alpha 0.6, top_k 4)
  contrastiveTopK: 4,
};

const REFERENCE_NAMES = { transformers: "transformers", vllm: "vLLM", llama_cpp: "llama.cpp",
  openai: "OpenAI" };
// a list of strings, one a line (the sampler order also as llama.cpp writes it: a;b;c)
const LINES = new Set(["texts", "choices", "one_or_more_texts", "sampler_order"]);

async function loadControls() {
  const res = await api("/v1/lmgen/settings");
  const data = await res.json();
  controls.settings = data.settings;
  controls.byName = Object.fromEntries(data.settings.map((s) => [s.name, s]));
  const box = $("controls");
  box.replaceChildren();
  for (const g of data.groups) {
    const members = data.settings.filter((s) => s.group === g.name);
    if (!members.length) continue;
    const details = document.createElement("details");
    details.className = "group";
    details.dataset.group = g.name;
    details.open = g === data.groups[0];
    const summary = document.createElement("summary");
    summary.textContent = g.title[0].toUpperCase() + g.title.slice(1) + ` (${members.length})`;
    details.append(summary);
    for (const s of members) details.append(controlFor(s));
    box.append(details);
  }
}

function tooltip(s) {
  const refs = Object.entries(s.references)
    .map(([k, v]) => `${REFERENCE_NAMES[k] || k}: ${v}`).join(" · ");
  const served = Object.values(s.requests).some((v) => v !== null);
  return [s.name + ": " + s.help,
    s.allowed ? "allowed: " + s.allowed : "",
    refs ? "elsewhere — " + refs : "",
    s.processor ? "processor: " + s.processor : "",
    typedAsJson(s) && s.json_schema ? "typed as JSON: " + JSON.stringify(s.json_schema) : "",
    served ? "" : "no request field of the server takes it (Python API and command line only)",
  ].filter(Boolean).join("\n");
}

function initialValue(s) {
  return s.name in controls.pageDefaults ? controls.pageDefaults[s.name] : s.default;
}

// A range slider where the range is short and closed, a number box otherwise; a check box for
// a bool; radio buttons for a choice; a text box or a text area (one item a line) for the rest.
function controlFor(s) {
  const row = document.createElement("div");
  row.className = "control";
  row.dataset.setting = s.name;
  row.title = tooltip(s);
  const label = document.createElement("label");
  label.htmlFor = s.name;
  label.textContent = s.name;
  const out = document.createElement("output");
  out.id = s.name + "-out";
  out.htmlFor = s.name;
  let input;
  const value = initialValue(s);
  const r = s.range;
  if (s.kind === "choice" || s.kind === "early_stopping") {
    const choices = s.kind === "early_stopping" ? [false, true, "never"] : s.choices;
    input = document.createElement("fieldset");
    input.className = "choices";
    const legend = document.createElement("legend");
    legend.textContent = s.name;
    input.append(legend);
    for (const c of choices) {
      const l = document.createElement("label");
      const radio = document.createElement("input");
      radio.type = "radio";
      radio.name = s.name;
      radio.value = String(c);
      radio.checked = c === value;
      l.append(radio, " " + String(c));
      input.append(l);
    }
    row.classList.add("wide");
    row.append(input);
    return row;
  }
  if (s.kind === "bool") {
    input = document.createElement("input");
    input.type = "checkbox";
    input.checked = value === true;
  } else if (r) {
    input = document.createElement("input");
    const span = r.low !== null && r.high !== null ? r.high - r.low : Infinity;
    if (span <= 10 && !r.also.length) {
      const step = r.integer ? 1 : 10 ** Math.floor(Math.log10(span / 100));
      input.type = "range";
      input.step = String(step);
      input.min = String(r.low_open ? r.low + step : r.low);
      input.max = String(r.high_open ? r.high - step : r.high);
    } else {
      input.type = "number";
      input.step = r.integer ? "1" : "0.05";
      if (r.integer && r.low !== null) input.min = String(r.low);
      if (r.integer && r.high !== null) input.max = String(r.high_open ? r.high - 1 : r.high);
      input.inputMode = r.integer ? "numeric" : "decimal";
    }
    if (value !== null) input.value = String(value);
    else input.placeholder = "none";
  } else if (s.kind !== "text") { // lists, token biases, JSON and kinds added later
    input = document.createElement("textarea");
    input.rows = 2;
    input.spellcheck = false;
    input.placeholder = placeholder(s);
    row.classList.add("wide");
  } else {
    input = document.createElement("input");
    input.type = "text";
    input.spellcheck = false;
    input.placeholder = "none";
  }
  input.id = s.name;
  input.dataset.setting = s.name;
  row.append(label, input, out);
  return row;
}

// Kinds the page has no widget of its own for (added after it was written) take JSON; text
// that is not JSON is sent as a string.
function typedAsJson(s) {
  return !s.range && !LINES.has(s.wire) &&
    !["bool", "choice", "early_stopping", "text", "json", "token_bias", "token_lists"].includes(s.kind);
}

function placeholder(s) {
  if (s.wire === "sampler_order") return "one name a line, or separated by ;";
  if (LINES.has(s.wire)) return "one a line";
  if (s.kind === "token_bias") return "ID=BIAS, one a line";
  if (s.kind === "token_lists") return "ids separated by commas, one list a line";
  if (s.kind === "json") return "a JSON schema";
  return "JSON (its shape is in the tooltip)";
}

// The value a control holds, or undefined where it is left at the default (not sent).
function controlValue(s) {
  if (s.kind === "choice" || s.kind === "early_stopping") {
    const v = choiceValue(s);
    return v === s.default ? undefined : v;
  }
  const el = $(s.name);
  if (!el) return undefined;
  if (s.kind === "bool") return el.checked === s.default ? undefined : el.checked;
  const text = el.value.trim();
  if (text === "") return undefined;
  if (s.range) {
    const v = Number(text);
    return v === s.default ? undefined : v;
  }
  if (s.kind === "text" || s.kind === "json") return text;
  const lines = text.split("\n").map((x) => x.trim()).filter(Boolean);
  if (s.wire === "sampler_order") {
    return lines.flatMap((x) => x.split(";")).map((x) => x.trim()).filter(Boolean);
  }
  if (LINES.has(s.wire)) return lines;
  if (s.kind === "token_bias") {
    const out = {};
    for (const line of lines) {
      const m = line.match(/^(\d+)\s*[=:]\s*(-?[\d.eE+-]+)$/);
      if (!m) throw new Error(`${s.name}: each line is ID=BIAS, got “${line}”`);
      out[m[1]] = Number(m[2]);
    }
    return out;
  }
  if (s.kind === "token_lists") return lines.map((l) => l.split(",").map(Number));
  try {
    return JSON.parse(text);
  } catch (e) {
    return text; // the server says what is wrong with it, naming the setting
  }
}

// The choice whose text the checked radio button holds (choices may be numbers or bools).
function choiceValue(s) {
  const radio = document.querySelector(`input[name="${s.name}"]:checked`);
  const choices = s.kind === "early_stopping" ? [false, true, "never"] : s.choices;
  const c = radio ? choices.find((x) => String(x) === radio.value) : undefined;
  return c === undefined ? initialValue(s) : c;
}

function currentStrategy() {
  const s = controls.byName.strategy;
  return s ? choiceValue(s) : controls.pageDefaults.strategy;
}

// Which settings apply under a strategy: the sampling-only ones when sampling (contrastive
// search takes top_k as its candidates), beams with beam search, penalty_alpha with
// contrastive search.
function applies(s, strategy) {
  if (s.name === "strategy") return false;
  if (s.name === "num_beams") return strategy === "beam";
  if (s.name === "penalty_alpha") return strategy === "contrastive";
  if (s.sampling_only) return strategy === "sample" || (strategy === "contrastive" && s.name === "top_k");
  return true;
}

// The settings as they are now: {strategy, values: {name: value}} (defaults left out).
function snapshot() {
  const strategy = currentStrategy();
  const values = {};
  for (const s of controls.settings) {
    if (!applies(s, strategy)) continue;
    const v = controlValue(s);
    if (v !== undefined) values[s.name] = v;
  }
  if (strategy === "contrastive" && !("penalty_alpha" in values)) {
    values.penalty_alpha = controls.byName.penalty_alpha.default;
  }
  if (strategy === "contrastive" && !values.top_k) values.top_k = controls.contrastiveTopK;
  // the server's default length differs by endpoint (completions: 16): always say it
  if (!("max_new_tokens" in values)) values.max_new_tokens = controls.byName.max_new_tokens.default;
  return { strategy, values };
}

// The fields of request `endpoint` ("next", "completions", "chat", "beam") for a snapshot,
// under that request's names.
function requestFields(snap, endpoint) {
  const body = {};
  for (const [name, v] of Object.entries(snap.values)) {
    const field = controls.byName[name].requests[endpoint];
    if (field) body[field] = v;
  }
  if (snap.strategy === "greedy" && controls.byName.temperature.requests[endpoint]) {
    body[controls.byName.temperature.requests[endpoint]] = 0;
  }
  return body;
}

function describeSnapshot(snap) {
  const parts = Object.entries(snap.values).map(([k, v]) => `${k}=${JSON.stringify(v)}`);
  return snap.strategy + (parts.length ? ": " + parts.join(", ") : " (defaults)");
}

function controlText(s) {
  const el = $(s.name);
  if (!el || !s.range) return "";
  if (el.value === "") return "none";
  const v = Number(el.value);
  if (s.off && v === s.default) return "off";
  return s.range.integer ? String(v) : String(Number(v.toPrecision(4)));
}

// Outputs, and which controls the strategy uses (the others are disabled, not hidden).
function syncSettingControls() {
  const strategy = currentStrategy();
  for (const s of controls.settings) {
    const row = document.querySelector(`.control[data-setting="${s.name}"]`);
    if (!row) continue;
    const out = $(s.name + "-out");
    if (out) out.textContent = controlText(s);
    if (out && s.name === "top_k" && strategy === "contrastive" && !controlValue(s)) {
      out.textContent = `${controls.contrastiveTopK} (contrastive)`;
    }
    const served = Object.values(s.requests).some((v) => v !== null);
    const on = s.name === "strategy" || (served && applies(s, strategy));
    row.classList.toggle("off", !on);
    for (const input of row.querySelectorAll("input, textarea")) {
      if (s.name !== "strategy") input.disabled = !on;
    }
  }
}

function onControlsChange(handler) {
  $("controls").addEventListener("input", handler);
  $("controls").addEventListener("change", handler);
}
