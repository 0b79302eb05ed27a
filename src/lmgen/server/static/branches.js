// Force and branch: every step, forced token and generation is a node of a tree whose root is
// the prompt as typed; clicking a node goes back to its text, and a new step or a forced token
// from there starts another branch. Undo goes to the parent.
"use strict";

const branches = {
  nodes: [], // {id, parent, text, label, how, children}
  current: 0,
};

function branchReset(text) {
  branches.nodes = [{ id: 0, parent: null, text, label: "prompt", how: "typed", children: [] }];
  branches.current = 0;
  renderBranches();
}

function currentNode() {
  return branches.nodes[branches.current];
}

// The depth of the current node: the step number, which picks the step's seed.
function stepDepth() {
  let d = 0;
  for (let n = currentNode(); n && n.parent !== null; n = branches.nodes[n.parent]) d += 1;
  return d;
}

// Moves to the child of the current node with `text` (made if new) and shows it.
function branchAdvance(text, label, how) {
  const cur = currentNode();
  let child = cur.children.map((i) => branches.nodes[i]).find((n) => n.text === text);
  if (!child) {
    child = { id: branches.nodes.length, parent: cur.id, text, label, how, children: [] };
    branches.nodes.push(child);
    cur.children.push(child.id);
  }
  branches.current = child.id;
  $("text").value = text;
  fitText(true);
  renderBranches();
}

function branchGoto(id) {
  branches.current = id;
  $("text").value = branches.nodes[id].text;
  fitText(true);
  renderBranches();
  syncControls();
  clearDistribution(); // no candidate of another text may be forced here
  scheduleRefresh(0);
}

function branchUp() {
  const cur = currentNode();
  if (cur.parent !== null) branchGoto(cur.parent);
}

function renderBranches() {
  const root = $("branches");
  root.replaceChildren(branchItem(branches.nodes[0]));
}

function branchItem(node) {
  const li = document.createElement("li");
  const b = document.createElement("button");
  b.type = "button";
  b.className = "node " + node.how;
  b.dataset.node = node.id;
  // a generation's or a beam's label is its whole text: its start, the rest in the title
  const label = node.how === "typed" ? "prompt" : showToken(node.label);
  b.textContent = label.length > 24 ? label.slice(0, 23) + "…" : label;
  b.title = `${node.how}: …${node.text.slice(-60)}`;
  if (node.id === branches.current) {
    b.classList.add("current");
    b.setAttribute("aria-current", "true");
  }
  b.addEventListener("click", () => branchGoto(node.id));
  li.append(b);
  if (node.children.length) {
    const ul = document.createElement("ul");
    for (const c of node.children) ul.append(branchItem(branches.nodes[c]));
    li.append(ul);
  }
  return li;
}

// Forcing: a candidate of the chart or the strip, clicked (or Enter/Space on it).
function forceEnabled() {
  return mode() === "text" && state.abort === null;
}

function addForce(el, candidate, prompt) {
  el.classList.add("forceable");
  el.tabIndex = 0;
  el.setAttribute("role", "button");
  el.setAttribute("aria-label", `force “${showToken(candidate.token)}”`);
  const go = () => forceToken(candidate, prompt);
  el.addEventListener("click", go);
  el.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      go();
    }
  });
}

// `prompt` is the text the clicked distribution belongs to: after a step, the chart still
// shows the step's distribution, and forcing another of its candidates branches beside the
// token the step chose.
function forceToken(candidate, prompt) {
  if (!forceEnabled()) return;
  for (let n = currentNode(); n; n = n.parent === null ? null : branches.nodes[n.parent]) {
    if (n.text === prompt) {
      branches.current = n.id;
      break;
    }
  }
  const before = currentNode().text === prompt ? prompt : $("text").value;
  branchAdvance(before + candidate.text, candidate.token, "forced");
  setStatus(`forced “${showToken(candidate.token)}”: the next step continues from it`);
  syncControls();
  scheduleRefresh(0);
}
