// The lmgen playground: the next-token distribution, one step at a time, streaming, beam trees.
// Plain JavaScript, no build step, nothing from the network but this server's own API.
// controls.js (the settings' controls), pipeline.js (the strip and the draws), branches.js
// (force and branch) and compare.js (side by side) load before this file, which starts it all.
"use strict";

const $ = (id) => document.getElementById(id);
const TOP = 15; // candidates shown
const RULE_NAMES = { TopK: "top-k", TopP: "top-p", MinP: "min-p", TypicalP: "typical-p" };

const state = {
  baseSeed: Math.floor(Math.random() * 1e9),
  abort: null, // AbortController of a running generation
  refreshTimer: null,
  refreshSeq: 0,
};

const chat = {
  messages: [], // {role, content}, as sent to /v1/chat/completions (the system message apart)
  tokens: {}, // message index -> the reply's tokens with their logprobs
  selected: null, // [message index, token index] whose distribution the chart shows
  prefix: "", // the text the chart's distribution follows in chat mode
};

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

// -- helpers ------------------------------------------------------------------------------------

function strategy() {
  return currentStrategy();
}

function showToken(s) {
  // Whitespace and control characters made visible.
  return s.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥")
    .replace(/[\u0000-\u0008\u000b-\u001f\u007f]/g,
      (c) => "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0")) || "∅";
}

function fmtPct(p) {
  if (p >= 0.1) return (100 * p).toFixed(1) + "%";
  if (p >= 0.001) return (100 * p).toFixed(2) + "%";
  if (p > 0) return (100 * p).toExponential(1) + "%";
  return "0%";
}

// `source` names who set an error, so that only the chart's own refresh clears the chart's
// error: an action's error (generate, beam search, a chat reply) stays until the next action
function setStatus(msg, isError = false, source = "") {
  const el = $("status");
  el.textContent = msg;
  el.classList.toggle("error", isError);
  el.dataset.source = isError ? source : "";
}

// The text box grows with its text (never below its rows, at most 60% of the window) and,
// where the model adds to it, shows the end, where the new tokens are.
function fitText(toEnd = false) {
  const el = $("text");
  el.style.height = "auto";
  el.style.height = Math.min(el.scrollHeight + 2, Math.round(window.innerHeight * 0.6)) + "px";
  if (toEnd) el.scrollTop = el.scrollHeight;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, body, signal) {
  const res = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: headers(),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (!res.ok) {
    let message = res.status + " " + res.statusText;
    try {
      const data = await res.json();
      if (data.error && data.error.message) message = data.error.message;
    } catch (e) { /* not JSON */ }
    if (res.status === 401) {
      $("connection").open = true;
      message = "this server needs an API key: " + message;
    }
    throw new ApiError(res.status, message);
  }
  return res;
}

// The seed the settings give (or the page's random one), and the one of step `step`.
function baseSeed() {
  const s = $("seed") ? $("seed").value.trim() : "";
  return s === "" ? state.baseSeed : Number(s);
}

function seedFor(step) {
  const base = baseSeed();
  // a seed the server refuses goes as typed, so that its message names the value typed
  return Number.isInteger(base) && base >= 0 ? base + step : base;
}

function maxTokens() {
  return snapshot().values.max_new_tokens;
}

function syncControls() {
  syncSettingControls();
  const s = strategy();
  const search = s === "beam" || s === "contrastive";
  $("step").disabled = search || state.abort !== null;
  $("step").title = search ? `${s} search does not go one sampled token at a time: press Generate`
    : "append one token (Ctrl+Enter)";
  $("generate").textContent = state.abort ? "Stop" : (s === "beam" ? "Run beam search" : "Generate");
  $("generate").classList.toggle("stop", state.abort !== null);
  $("undo").disabled = currentNode().parent === null || state.abort !== null;
  $("draw").disabled = search || state.abort !== null;
}

// -- the distribution chart -----------------------------------------------------------------------

function renderDistribution(data, chosen) {
  const chart = $("chart");
  chart.replaceChildren();
  const cands = data.candidates.slice().sort((a, b) => b.pre_filter_prob - a.pre_filter_prob ||
    b.prob - a.prob);
  const maxP = Math.max(1e-9, ...cands.map((c) => Math.max(c.pre_filter_prob, c.processed_prob)));
  const marked = new Set();
  const filters = (data.filters || []).filter((f) => f.name in RULE_NAMES);
  const chosenId = chosen ? chosen.token_id : null;
  let chosenShown = false;
  for (const c of cands) {
    if (c.removed_by && RULE_NAMES[c.removed_by] && !marked.has(c.removed_by)) {
      marked.add(c.removed_by);
      const f = filters.find((x) => x.name === c.removed_by);
      const li = document.createElement("li");
      li.className = "cutoff";
      li.setAttribute("role", "separator");
      li.textContent = `${RULE_NAMES[c.removed_by]} cut-off: ${f ? f.description : c.removed_by}` +
        (f ? ` removes ${f.removed} of ${data.vocab_size} tokens` : "");
      chart.append(li);
    }
    const li = document.createElement("li");
    li.className = "bar " + (c.kept ? "kept" : "removed");
    if (c.token_id === chosenId) {
      li.classList.add("chosen");
      chosenShown = true;
    }
    const tok = document.createElement("span");
    tok.className = "tok";
    tok.textContent = showToken(c.token);
    tok.title = `token ${c.token_id}: ${JSON.stringify(c.token)}`;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("aria-hidden", "true");
    const pre = document.createElement("span");
    pre.className = "pre";
    pre.style.width = (100 * c.pre_filter_prob / maxP).toFixed(2) + "%";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = (100 * c.processed_prob / maxP).toFixed(2) + "%";
    track.append(pre, fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = c.kept ? fmtPct(c.processed_prob) : "removed";
    const small = document.createElement("small");
    small.textContent = "model " + fmtPct(c.prob);
    pct.append(small);
    const sr = document.createElement("span");
    sr.className = "visually-hidden";
    sr.textContent = (c.kept ? "" : ` removed by ${RULE_NAMES[c.removed_by] || c.removed_by}`) +
      (c.token_id === chosenId ? " (chosen)" : "");
    li.append(tok, track, pct, sr);
    const shown = (data.tokens || []).find((t) => t.token_id === c.token_id);
    if (shown && forceEnabled()) addForce(li, shown, data.prompt);
    chart.append(li);
  }
  for (const f of filters) {
    if (!marked.has(f.name) && f.removed > 0) {
      const li = document.createElement("li");
      li.className = "cutoff";
      li.setAttribute("role", "separator");
      li.textContent = `${RULE_NAMES[f.name]} cut-off (${f.description}) lies below these: ` +
        `removes ${f.removed} of ${data.vocab_size} tokens`;
      chart.append(li);
    }
  }
  if (chosen && !chosenShown) {
    const li = document.createElement("li");
    li.className = "bar kept chosen";
    const tok = document.createElement("span");
    tok.className = "tok";
    tok.textContent = showToken(chosen.token);
    const track = document.createElement("span");
    track.className = "track";
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = fmtPct(chosen.processed_prob);
    li.append(tok, track, pct);
    chart.append(li);
  }
  const more = document.createElement("li");
  more.className = "more";
  more.textContent = `${data.kept_count} of ${data.vocab_size} tokens can be chosen`;
  chart.append(more);
  const tail = data.prompt.length > 40 ? "…" + data.prompt.slice(-40) : data.prompt;
  $("dist-caption").textContent = chosen
    ? `After “${tail}” the ${chosen.strategy === "sample" ? "sampler (seed " + chosen.seed + ")" : "greedy rule"} chose “${showToken(chosen.token)}”.`
    : `What could follow “${tail}” (${data.prompt_token_ids.length} tokens).`;
  $("chain").textContent = "Processor chain: " + (data.chain.length ? data.chain.join(" → ") : "none (the model's own distribution)");
}

// A /v1/lmgen/pipeline body: the chain's settings of `snap` (as the controls hold them, unless
// given: a side-by-side column's) for `prompt` (the current step's, unless given).
function nextBody(extra, snap = snapshot(), prompt = mode() === "chat" ? chat.prefix : $("text").value) {
  return {
    model: $("model").value || undefined,
    prompt,
    top: TOP,
    ...requestFields(snap, "next"),
    strategy: snap.strategy === "sample" ? "sample" : "greedy",
    ...extra,
  };
}

// The chart, the strip and the draws' reset for one /v1/lmgen/pipeline answer.
function renderStep(data, chosen) {
  renderDistribution(data, chosen);
  renderPipeline(data);
  $("draws").hidden = true;
  $("draws-caption").textContent = "";
}

function clearDistribution() {
  $("chart").replaceChildren();
  $("chain").textContent = "";
  $("pipeline").replaceChildren();
  $("draws").hidden = true;
  $("draws-caption").textContent = "";
}

async function refreshDistribution() {
  const seq = ++state.refreshSeq;
  if (mode() === "chat" && chat.prefix === "") {
    clearDistribution();
    $("dist-caption").textContent = "Send a message: the chart shows what the model could say.";
    return;
  }
  try {
    const res = await api("/v1/lmgen/pipeline", nextBody({}));
    const data = await res.json();
    if (seq !== state.refreshSeq) return; // a newer request is on its way
    renderStep(data, null);
    if (mode() === "chat") chatCaption(data);
    // a fresh chart answers its own earlier error; it leaves "done", "step 2" and the
    // errors of actions in place
    const status = $("status");
    if (status.classList.contains("error") && status.dataset.source === "chart") setStatus("");
  } catch (e) {
    if (seq === state.refreshSeq) setStatus(e.message, true, "chart");
  }
}

function scheduleRefresh(delay = 250) {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refreshDistribution, delay);
}

// -- step ------------------------------------------------------------------------------------------

async function step() {
  if ($("step").disabled || state.abort) return;
  clearTimeout(state.refreshTimer);
  const seq = ++state.refreshSeq;
  const before = $("text").value;
  const seed = seedFor(stepDepth());
  $("step").disabled = true;
  try {
    const res = await api("/v1/lmgen/pipeline", nextBody({ choose: true, seed }));
    const data = await res.json();
    if (seq !== state.refreshSeq && $("text").value !== before) return;
    renderStep(data, data.chosen);
    branchAdvance(before + data.chosen.text, data.chosen.token, "step");
    setStatus(`step ${stepDepth()}: appended “${showToken(data.chosen.token)}” ` +
      `(p = ${fmtPct(data.chosen.processed_prob)})`);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    syncControls();
  }
}

function undo() {
  branchUp();
}

// -- generate (streaming) and beam search -----------------------------------------------------------

async function generate() {
  if (state.abort) {
    state.abort.abort();
    return;
  }
  if (strategy() === "beam") return beamSearch();
  const controller = new AbortController();
  state.abort = controller;
  syncControls();
  const before = $("text").value;
  let body;
  try {
    body = {
      model: $("model").value || undefined,
      prompt: before,
      max_tokens: maxTokens(),
      stream: true,
      ...requestFields(snapshot(), "completions"),
    };
  } catch (e) {
    state.abort = null;
    syncControls();
    setStatus(e.message, true);
    return;
  }
  setStatus("generating…");
  let finish = null;
  try {
    const res = await api("/v1/completions", body, controller.signal);
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const payload = event.slice(6);
        if (payload === "[DONE]") continue;
        const data = JSON.parse(payload);
        if (data.error) throw new ApiError(400, data.error.message);
        for (const c of data.choices) {
          $("text").value += c.text;
          fitText(true);
          if (c.finish_reason) finish = c.finish_reason;
        }
      }
    }
    setStatus(`done (${finish === "length" ? "reached max new tokens" : "stopped"})`);
  } catch (e) {
    if (e.name === "AbortError") setStatus("stopped");
    else setStatus(e.message, true);
  } finally {
    const after = $("text").value;
    if (after !== before) branchAdvance(after, after.slice(before.length), "generated");
    state.abort = null;
    syncControls();
    scheduleRefresh();
  }
}

async function beamSearch() {
  const controller = new AbortController();
  state.abort = controller;
  syncControls();
  setStatus("running beam search…");
  const before = $("text").value;
  try {
    const res = await api("/v1/lmgen/beam", {
      model: $("model").value || undefined,
      prompt: before,
      ...requestFields(snapshot(), "beam"),
      max_tokens: Math.min(maxTokens(), 40), // a tree wider than that is unreadable
    }, controller.signal);
    const data = await res.json();
    renderTree(data);
    branchAdvance(before + data.choices[0].text, data.choices[0].text, "beam");
    setStatus(`beam search with ${data.num_beams} beams: best score ${data.choices[0].score.toFixed(3)}`);
  } catch (e) {
    setStatus(e.name === "AbortError" ? "stopped" : e.message, e.name !== "AbortError");
  } finally {
    state.abort = null;
    syncControls();
    scheduleRefresh();
  }
}

const SVG = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, parent) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.append(el);
  return el;
}

function renderTree(data) {
  $("beam-section").hidden = false;
  const svg = $("tree");
  svg.replaceChildren();
  const colW = 118, rowH = 34, nodeW = 100, nodeH = 26, padX = 8, padY = 8;
  const rows = Math.max(1, ...data.steps.map((s) => s.candidates.length));
  const width = padX * 2 + (data.steps.length + 1) * colW;
  const height = padY * 2 + rows * rowH;
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const pos = { root: { x: padX, y: padY + (rows * rowH) / 2 - nodeH / 2 } };
  const onPath = new Set(data.choices[0] ? data.choices[0].path : []);
  onPath.add("root");
  data.steps.forEach((s, i) => {
    s.candidates.forEach((c, k) => {
      pos[c.id] = { x: padX + (i + 1) * colW, y: padY + k * rowH };
    });
  });
  const edges = svgEl("g", {}, svg);
  const nodes = svgEl("g", {}, svg);
  const drawNode = (id, label, score, cls) => {
    const p = pos[id];
    const g = svgEl("g", { class: cls }, nodes);
    svgEl("rect", { x: p.x, y: p.y, width: nodeW, height: nodeH, rx: 5 }, g);
    const t = svgEl("text", { x: p.x + 6, y: p.y + 12 }, g);
    t.textContent = label.length > 12 ? label.slice(0, 11) + "…" : label;
    if (score !== null) {
      const st = svgEl("text", { x: p.x + 6, y: p.y + 23, class: "score" }, g);
      st.textContent = score.toFixed(2);
    }
    const title = svgEl("title", {}, g);
    title.textContent = label + (score !== null ? ` (score ${score.toFixed(3)}, ${cls})` : "");
  };
  const prompt = data.prompt.length > 12 ? "…" + data.prompt.slice(-11) : data.prompt;
  drawNode("root", showToken(prompt), null, "root path");
  for (const s of data.steps) {
    for (const c of s.candidates) {
      const from = pos[c.parent_id];
      const to = pos[c.id];
      if (from) {
        const path = onPath.has(c.id) && onPath.has(c.parent_id);
        const x1 = from.x + nodeW, y1 = from.y + nodeH / 2, x2 = to.x, y2 = to.y + nodeH / 2;
        svgEl("path", {
          d: `M${x1},${y1} C${x1 + 12},${y1} ${x2 - 12},${y2} ${x2},${y2}`,
          class: "edge " + c.status + (path ? " path" : ""),
        }, edges);
      }
      drawNode(c.id, showToken(c.token), c.score, c.status + (onPath.has(c.id) ? " path" : ""));
    }
  }
  $("beam-caption").textContent = `Beam search, ${data.num_beams} beams, ${data.steps.length} ` +
    "steps: each column is a step; solid boxes kept, green finished, dashed pruned; " +
    "the best sequence is outlined.";
  const list = $("beam-results");
  list.replaceChildren();
  for (const c of data.choices) {
    const li = document.createElement("li");
    li.textContent = `score ${c.score.toFixed(3)} (${c.finish_reason}): ${JSON.stringify(c.text)}`;
    list.append(li);
  }
}

// -- chat ------------------------------------------------------------------------------------------

function chatMessages(upTo = chat.messages.length) {
  const system = $("system").value.trim();
  return (system ? [{ role: "system", content: system }] : []).concat(chat.messages.slice(0, upTo));
}

// The conversation's first `upTo` messages as the model sees them (a generation prompt after).
async function chatPrompt(upTo = chat.messages.length) {
  const res = await api("/v1/lmgen/chat_prompt", {
    model: $("model").value || undefined,
    messages: chatMessages(upTo),
    add_generation_prompt: true,
  });
  return res.json();
}

function renderPromptTokens(data) {
  const box = $("prompt-tokens");
  box.replaceChildren();
  for (const t of data.tokens) {
    const span = document.createElement("span");
    span.textContent = showToken(t.text);
    span.title = `token ${t.id}` + (t.special ? " (special)" : "");
    if (t.special) span.className = "special";
    box.append(span);
  }
  const specials = data.tokens.filter((t) => t.special).length;
  $("prompt-caption").textContent = `${data.token_ids.length} tokens, ${specials} of them ` +
    `special, rendered by ${data.template}.`;
}

function renderConversation() {
  const list = $("conversation");
  list.replaceChildren();
  chat.messages.forEach((m, i) => {
    const li = document.createElement("li");
    li.className = m.role;
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = m.role;
    li.append(role);
    const tokens = chat.tokens[i];
    if (!tokens) {
      li.append(document.createTextNode(m.content));
    } else {
      tokens.forEach((t, k) => {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "tok";
        if (chat.selected && chat.selected[0] === i && chat.selected[1] === k) {
          b.classList.add("selected");
        }
        b.textContent = t.token.trim() ? t.token : showToken(t.token); // whitespace shown
        b.dataset.text = t.token;
        b.title = `token “${showToken(t.token)}”, p = ${fmtPct(Math.exp(t.logprob))}`;
        b.addEventListener("click", () => selectReplyToken(i, k));
        li.append(b);
      });
    }
    list.append(li);
  });
  list.scrollTop = list.scrollHeight;
}

// The chart at reply token k of message i: the distribution that token was drawn from.
async function selectReplyToken(i, k) {
  try {
    const data = await chatPrompt(i);
    chat.prefix = data.prompt + chat.tokens[i].slice(0, k).map((t) => t.token).join("");
    chat.selected = [i, k];
    renderConversation();
    await refreshDistribution();
  } catch (e) {
    setStatus(e.message, true);
  }
}

function chatCaption(data) {
  if (!chat.selected) {
    $("dist-caption").textContent = "What the model could say first in its next reply.";
    return;
  }
  const [i, k] = chat.selected;
  const t = chat.tokens[i][k];
  const c = data.candidates.find((x) => x.token === t.token);
  for (const li of $("chart").querySelectorAll("li.bar")) {
    if (c && li.querySelector(".tok").textContent === showToken(c.token)) li.classList.add("chosen");
  }
  $("dist-caption").textContent = `Reply token ${k + 1}, “${showToken(t.token)}”, was drawn ` +
    `with p = ${fmtPct(Math.exp(t.logprob))} from this distribution.`;
}

async function refreshChat() {
  chat.selected = null;
  renderConversation();
  if (!chatMessages().length) {
    chat.prefix = "";
    $("prompt-tokens").replaceChildren();
    $("prompt-caption").textContent = "";
    return refreshDistribution();
  }
  try {
    const data = await chatPrompt();
    renderPromptTokens(data);
    chat.prefix = data.prompt;
    await refreshDistribution();
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function send() {
  if (state.abort) {
    state.abort.abort();
    return;
  }
  const text = $("message").value;
  if (!text.trim()) return;
  const controller = new AbortController();
  state.abort = controller;
  chat.messages.push({ role: "user", content: text });
  $("message").value = "";
  syncChat();
  await refreshChat();
  setStatus("the model is replying…");
  try {
    const body = {
      model: $("model").value || undefined,
      messages: chatMessages(),
      max_tokens: maxTokens(),
      ...requestFields(snapshot(), "chat"),
    };
    if (strategy() !== "beam") Object.assign(body, { logprobs: true, top_logprobs: 1 });
    const res = await api("/v1/chat/completions", body, controller.signal);
    const data = await res.json();
    const c = data.choices[0];
    chat.messages.push({ role: "assistant", content: c.message.content });
    if (c.logprobs) chat.tokens[chat.messages.length - 1] = c.logprobs.content;
    const why = c.finish_reason === "length" ? "reached max new tokens" : "end of turn";
    setStatus(`reply of ${data.usage.completion_tokens} tokens (${why})`);
  } catch (e) {
    chat.messages.pop(); // no reply: the message goes back to the box
    $("message").value = text;
    setStatus(e.name === "AbortError" ? "stopped" : e.message, e.name !== "AbortError");
  } finally {
    state.abort = null;
    syncChat();
    await refreshChat();
  }
}

function syncChat() {
  $("send").textContent = state.abort ? "Stop" : "Send";
  $("send").classList.toggle("stop", state.abort !== null);
  $("clear-chat").disabled = state.abort !== null || chat.messages.length === 0;
}

function setMode() {
  const chatMode = mode() === "chat";
  $("text-mode").hidden = chatMode;
  $("chat-mode").hidden = !chatMode;
  $("prompt-section").hidden = !chatMode;
  $("force-hint").hidden = chatMode; // a chat's chart cannot be forced (forceEnabled)
  syncChat();
  if (chatMode) refreshChat();
  else scheduleRefresh();
}

// -- start -------------------------------------------------------------------------------------------

async function loadModels() {
  try {
    if (!controls.settings.length) {
      await loadControls();
      syncControls();
    }
    const res = await api("/v1/models");
    const data = await res.json();
    const select = $("model");
    select.replaceChildren();
    for (const m of data.data) {
      const opt = document.createElement("option");
      opt.value = m.id;
      opt.textContent = m.id;
      select.append(opt);
    }
    showModelInfo(data.data);
    select.onchange = () => {
      showModelInfo(data.data);
      if (mode() === "chat") refreshChat();
      else scheduleRefresh();
    };
    await refreshDistribution();
  } catch (e) {
    setStatus(e.message, true);
  }
}

function showModelInfo(models) {
  const m = models.find((x) => x.id === $("model").value);
  if (!m) return;
  const params = m.lmgen ? (m.lmgen.parameters / 1e6).toFixed(2) + "M parameters, " : "";
  const template = m.lmgen && m.lmgen.chat_template === false ? ", no chat template" : "";
  $("model-info").textContent = `${params}context ${m.max_model_len}${template}`;
}

function init() {
  const saved = sessionStorage.getItem("lmgen-api-key");
  if (saved) $("apikey").value = saved;
  $("apikey").addEventListener("change", () => {
    sessionStorage.setItem("lmgen-api-key", $("apikey").value.trim());
    loadModels();
  });
  onControlsChange(() => {
    syncControls();
    scheduleRefresh();
  });
  $("text").addEventListener("input", () => {
    fitText();
    branchReset($("text").value);
    syncControls();
    scheduleRefresh();
  });
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      if (e.shiftKey) generate();
      else step();
    }
  });
  for (const radio of document.querySelectorAll("input[name=mode]")) {
    radio.addEventListener("change", setMode);
  }
  $("message").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      send();
    }
  });
  $("send").addEventListener("click", send);
  $("clear-chat").addEventListener("click", () => {
    chat.messages = [];
    chat.tokens = {};
    syncChat();
    refreshChat();
  });
  $("system").addEventListener("change", refreshChat);
  $("step").addEventListener("click", step);
  $("generate").addEventListener("click", generate);
  $("undo").addEventListener("click", undo);
  $("draw").addEventListener("click", drawMany);
  $("pin-a").addEventListener("click", pinA);
  $("run-compare").addEventListener("click", runCompare);
  branchReset($("text").value);
  syncControls();
  loadModels();
}

init();
