// The pipeline view: the step's distribution after each processor, in chain order, as a strip
// of small bar charts (POST /v1/lmgen/pipeline). A token a processor removed stays in place,
// greyed, at the probability it had before; the others show their renormalised probability.
// And theory against practice: 1,000 seeded draws with generation's own sampler, beside the
// probabilities they were drawn from, with a chi-square statistic.
"use strict";

const DRAWS = 1000;

function renderPipeline(data) {
  fillStrip($("pipeline"), data, forceEnabled());
  $("pipeline-caption").textContent = stripCaption(data);
}

// One chart per stage of `data` (a /v1/lmgen/pipeline answer) into the list `strip`; the
// single view's strip and each side-by-side column's. `forceable`: a click forces the token.
function fillStrip(strip, data, forceable) {
  strip.replaceChildren();
  const last = {}; // token id -> its probability at the last stage that kept it
  for (const stage of data.stages) {
    const li = document.createElement("li");
    li.className = "stage";
    li.dataset.name = stage.name;
    const h = document.createElement("h3");
    h.textContent = stage.name === "model" ? "model" : stage.name;
    h.title = stage.description;
    const bars = document.createElement("ol");
    bars.className = "mini";
    const shownMax = Math.max(1e-9, ...data.tokens.map((t, i) =>
      stage.kept[i] ? stage.probs[i] : (last[t.token_id] || 0)));
    data.tokens.forEach((t, i) => {
      const kept = stage.kept[i];
      const p = kept ? stage.probs[i] : (last[t.token_id] || 0);
      if (kept) last[t.token_id] = stage.probs[i];
      const row = document.createElement("li");
      row.className = "mini-bar " + (kept ? "kept" : "removed");
      row.dataset.tokenId = t.token_id;
      row.dataset.prob = kept ? stage.probs[i] : 0;
      row.title = `${showToken(t.token)}: ` + (kept ? fmtPct(p) : `removed (was ${fmtPct(p)})`);
      const tok = document.createElement("span");
      tok.className = "tok";
      tok.textContent = showToken(t.token);
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = (100 * p / shownMax).toFixed(1) + "%";
      track.append(fill);
      row.append(tok, track);
      if (forceable) addForce(row, t, data.prompt);
      bars.append(row);
    });
    const foot = document.createElement("p");
    foot.className = "stats";
    foot.textContent = `H = ${stage.entropy_bits.toFixed(2)} bits · ${stage.candidates} left`;
    li.append(h, bars, foot);
    strip.append(li);
  }
}

function stripCaption(data) {
  return `${data.stages.length - 1} processor` +
    `${data.stages.length === 2 ? "" : "s"} in chain order, left to right; the same ` +
    `${data.tokens.length} tokens in each chart (grey: removed by then). H is the entropy of ` +
    "the renormalised distribution.";
}

// The draws come with the step's pipeline in one answer, which replaces what is shown, so
// the table always sits beside the distribution it was drawn from.
async function drawMany() {
  clearTimeout(state.refreshTimer);
  const seq = ++state.refreshSeq; // a refresh still on its way is dropped
  const seed = seedFor(stepDepth());
  $("draw").disabled = true;
  setStatus(`drawing ${DRAWS} tokens…`);
  try {
    const res = await api("/v1/lmgen/pipeline", nextBody({ draws: DRAWS, seed }));
    const data = await res.json();
    if (seq !== state.refreshSeq) return;
    renderStep(data, null);
    renderDraws(data);
    setStatus(`drew ${DRAWS} tokens with seed ${seed}`);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    $("draw").disabled = false;
  }
}

// Each shown token with a probability, then "every other token"; chi-square over the bins
// expected at least 5 times, the rest pooled into one.
function renderDraws(data) {
  const final = data.stages[data.stages.length - 1];
  const counts = data.draws.counts;
  const n = data.draws.n;
  const rows = [];
  let restP = 1, restC = n;
  data.tokens.forEach((t, i) => {
    const p = final.probs[i];
    const c = counts[t.token_id] || 0;
    if (p <= 0 && c === 0) return;
    rows.push({ label: showToken(t.token), p, c, id: t.token_id });
    restP -= p;
    restC -= c;
  });
  restP = restP < 1e-6 ? 0 : restP; // what float rounding leaves of 1 - the sum
  if (restP > 0 || restC > 0) rows.push({ label: "every other token", p: restP, c: restC, id: "" });
  const body = $("draws").querySelector("tbody");
  body.replaceChildren();
  let chi = 0, bins = 0, poolP = 0, poolC = 0;
  for (const r of rows) {
    const tr = document.createElement("tr");
    tr.dataset.prob = r.p;
    tr.dataset.count = r.c;
    tr.dataset.tokenId = r.id;
    for (const text of [r.label, fmtPct(r.p), fmtPct(r.c / n), String(r.c)]) {
      const td = document.createElement("td");
      td.textContent = text;
      tr.append(td);
    }
    body.append(tr);
    if (n * r.p >= 5) {
      chi += (r.c - n * r.p) ** 2 / (n * r.p);
      bins += 1;
    } else {
      poolP += r.p;
      poolC += r.c;
    }
  }
  if (n * poolP >= 5) {
    chi += (poolC - n * poolP) ** 2 / (n * poolP);
    bins += 1;
  }
  $("draws").hidden = false;
  if (data.draws.strategy !== "sample") {
    $("draws-caption").textContent = `${n} draws with the ${data.draws.strategy} rule: it ` +
      "picks the most likely token every time, whatever the probabilities beside it say.";
    return;
  }
  $("draws-caption").textContent = `${n} draws with seed ${data.draws.seed} from the ` +
    `distribution after the chain: chi-square ${chi.toFixed(2)} on ${Math.max(0, bins - 1)} ` +
    "degrees of freedom (about as large as the degrees of freedom when theory and practice agree).";
}
