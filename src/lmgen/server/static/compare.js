// Side by side: two settings on the same prompt and seed, one column each, each column a
// plain /v1/completions request, so a column's text is what that request gives alone, and
// under it the pipeline strip of its first step (the prompt's next token) with its settings,
// as /v1/lmgen/pipeline gives it alone.
"use strict";

const compare = { pinned: null };

function pinA() {
  try {
    compare.pinned = snapshot();
  } catch (e) {
    setStatus(e.message, true);
    return;
  }
  showColumn("compare-a", "A", compare.pinned, null);
  setStatus("settings pinned as A: change them, then run side by side");
}

async function runCompare() {
  let b;
  try {
    b = snapshot();
  } catch (e) {
    setStatus(e.message, true);
    return;
  }
  const a = compare.pinned || b;
  const prompt = $("text").value;
  const seed = baseSeed();
  $("run-compare").disabled = true;
  setStatus("running both settings…");
  try {
    const [ta, tb] = await Promise.all([a, b].map((snap) => completeOnce(snap, prompt, seed)));
    showColumn("compare-a", "A", a, ta);
    showColumn("compare-b", "B (the settings now)", b, tb);
    setStatus(`side by side, seed ${seed}`);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    $("run-compare").disabled = false;
  }
}

async function completeOnce(snap, prompt, seed) {
  const body = {
    model: $("model").value || undefined,
    prompt,
    ...requestFields(snap, "completions"),
  };
  if (snap.strategy === "sample") body.seed = seed;
  const [res, step] = await Promise.all([
    api("/v1/completions", body),
    api("/v1/lmgen/pipeline", nextBody({}, snap, prompt)),
  ]);
  const data = await res.json();
  return { body, choice: data.choices[0], pipeline: await step.json() };
}

function showColumn(id, title, snap, result) {
  const col = $(id);
  col.replaceChildren();
  const h = document.createElement("h3");
  h.textContent = title;
  const how = document.createElement("p");
  how.className = "muted small settings";
  how.textContent = describeSnapshot(snap);
  col.append(h, how);
  if (result) {
    const text = document.createElement("p");
    text.className = "completion";
    text.textContent = result.choice.text;
    text.dataset.request = JSON.stringify(result.body);
    const end = document.createElement("p");
    end.className = "muted small";
    end.textContent = `finish: ${result.choice.finish_reason}`;
    const caption = document.createElement("p");
    caption.className = "muted small";
    caption.textContent = "Its first step: " + stripCaption(result.pipeline);
    const strip = document.createElement("ol");
    strip.className = "strip";
    strip.setAttribute("aria-label", `${title}: the pipeline of the first step`);
    fillStrip(strip, result.pipeline, false);
    col.append(text, end, caption, strip);
  }
}
