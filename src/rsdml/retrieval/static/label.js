// rsdml label: the labelling page. Every change is a POST answered only once it is on disk;
// changes are sent one after another (a queue), so the order on the page is the order saved.
"use strict";

const $ = (id) => document.getElementById(id);
let state = null;       // the last /api/state answer
let current = null;     // the image being labelled: {id, path}
let similar = [];       // results of the similarity search: [{id, path, label, score}]
let ticked = new Set(); // ids ticked among `similar`
let queryId = null;     // the image the similarity search started from
let chain = Promise.resolve();
const done = new Set(); // ids labelled or skipped here: the queue moves on before the answer
let geo = false;        // a tile folder (`rsdml tile`): tiles shown among their neighbours
// This tab's id: undo reverts only the changes made here (not another tab's).
const client = Array.from(crypto.getRandomValues(new Uint8Array(12)),
  (b) => b.toString(16).padStart(2, "0")).join("");

function nextInQueue() {
  return state ? state.queue.find((q) => !done.has(q.id)) || null : null;
}

function status(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

function saved(text, ok = true) {
  const s = $("saved");
  s.textContent = text;
  s.className = ok ? "ok" : "error";
}

async function api(method, url, body) {
  const opts = { method, headers: { "X-Rsdml-Client": client } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(url, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const d = data.detail;
    throw new Error(typeof d === "string" ? d : (d ? JSON.stringify(d) : `HTTP ${r.status}`));
  }
  return data;
}

// One change at a time, in order; the page shows "saved" only after the server answered.
function change(url, body, done) {
  saved("saving...");
  chain = chain.then(async () => {
    try {
      const data = await api("POST", url, body);
      render(data);
      saved(`saved (${data.labelled})`);
      if (done) done(data);
    } catch (e) {
      saved("NOT saved", false);
      status(e.message, true);
    }
  });
  return chain;
}

function img(id) {
  const el = document.createElement("img");
  el.src = `/api/images/${id}`;
  el.alt = "";
  el.loading = "lazy";
  return el;
}

function render(data) {
  state = data;
  $("count").textContent = data.labelled;
  $("total").textContent = data.total;
  const sg = data.suggestions || { total: 0, done: 0, finished: false };
  $("progress").textContent = !sg.total ? "no suggestions: folder order"
    : sg.finished ? `suggestions done (${sg.total} of ${sg.total}); now in folder order`
    : `suggestion ${sg.done + 1} of ${sg.total}`;
  $("file").textContent = data.file;
  const list = $("class-list");
  list.replaceChildren(...data.classes.map((c) => {
    const o = document.createElement("option");
    o.value = c.name;
    return o;
  }));
  $("classes").replaceChildren(...data.classes.map((c, i) => {
    const li = document.createElement("li");
    li.dataset.name = c.name;
    li.innerHTML = `${i < 9 ? `<kbd>${i + 1}</kbd> ` : ""}<span></span> <span class="n"></span>`;
    li.children[i < 9 ? 1 : 0].textContent = c.name;
    li.querySelector(".n").textContent = c.count;
    li.addEventListener("click", () => labelCurrent(c.name));
    return li;
  }));
  if (!current || done.has(current.id) || !data.queue.some((q) => q.id === current.id)) {
    current = nextInQueue();
  }
  showCurrent();
  $("recent").replaceChildren(...data.recent.map((r) => {
    const card = document.createElement("div");
    card.className = "card";
    card.title = "click to remove this label";
    card.append(img(r.id));
    const m = document.createElement("div");
    m.className = "meta";
    m.innerHTML = '<span class="label"></span>';
    m.firstChild.textContent = r.label;
    card.append(m);
    card.addEventListener("click", () => change("/api/unlabel", { id: r.id }));
    return card;
  }));
  $("review-count").textContent = data.review.length ? `(${data.review.length})` : "";
  renderReview();
  if (similar.length) renderSimilar();
}

function showCurrent() {
  if (current) {
    $("current-img").src = geo ? `/api/geo/context/${current.id}` : `/api/images/${current.id}`;
    $("current-path").textContent = current.path;
  } else {
    $("current-img").removeAttribute("src");
    $("current-path").textContent = "nothing left to label";
  }
}

function className() {
  return $("class").value.trim();
}

function labelCurrent(name) {
  name = (name || className()).trim();
  if (!current) { status("nothing left to label", true); return; }
  if (!name) { status("type a class first (a new name makes a new class)", true); $("class").focus(); return; }
  const target = current;
  status(`${target.path} -> ${name}`);
  done.add(target.id);
  current = nextInQueue(); // move on at once; the next answer's queue agrees
  showCurrent();
  change("/api/label", { ids: [target.id], class: name });
}

function skip() {
  if (!current) return;
  const target = current;
  done.add(target.id);
  current = nextInQueue();
  showCurrent();
  change("/api/skip", { id: target.id });
  status(`skipped ${target.path}`);
}

function undo() {
  change("/api/undo", undefined, (data) => {
    if (!data.undone.length) { status("nothing to undo"); return; }
    const first = data.undone[0];
    status(`undone: ${data.undone.length} image(s), ${first.path} is ${first.label || "unlabelled"} again`);
    for (const u of data.undone) done.delete(u.id);
    if (!first.label) current = { id: first.id, path: first.path };
    render(data);
    showCurrent();
  });
}

async function findSimilar() {
  if (!current) return;
  queryId = current.id;
  ticked = new Set();
  try {
    const data = await api("GET", `/api/similar?id=${queryId}&k=60`);
    similar = data.results;
    $("similar-panel").hidden = false;
    renderSimilar();
    status(`${similar.length} images like ${current.path}: tick those of the class`);
  } catch (e) { status(e.message, true); }
}

async function rerank() {
  if (queryId === null) { status("find similar images first (f)", true); return; }
  const relevant = [...ticked];
  const nonRelevant = similar.filter((r) => !ticked.has(r.id)).map((r) => r.id);
  try {
    const data = await api("POST", "/api/rerank", { id: queryId, relevant, non_relevant: nonRelevant, k: 60 });
    const before = new Set(similar.map((r) => r.id));
    // the ticked stay first, then the new ranking (images not shown before included)
    const keep = similar.filter((r) => ticked.has(r.id));
    similar = keep.concat(data.results.filter((r) => !ticked.has(r.id)));
    const fresh = data.results.filter((r) => !before.has(r.id)).length;
    renderSimilar();
    status(`re-ranked: ${fresh} image(s) not shown before`);
  } catch (e) { status(e.message, true); }
}

function tickAll() {
  for (const r of similar) if (!r.label) ticked.add(r.id);
  renderSimilar();
}

function labelTicked() {
  const name = className();
  if (!name) { status("type the class first", true); $("class").focus(); return; }
  if (!ticked.size) { status("tick some images first", true); return; }
  const ids = [...ticked];
  change("/api/label", { ids, class: name }, () => status(`${ids.length} image(s) -> ${name}`));
  ticked = new Set();
}

function renderSimilar() {
  const labels = new Map();
  if (state) for (const r of state.recent) labels.set(r.id, r.label);
  $("results").replaceChildren(...similar.map((r) => {
    const card = document.createElement("div");
    card.className = "card" + (ticked.has(r.id) ? " ticked" : "");
    card.dataset.id = r.id;
    card.append(img(r.id));
    const m = document.createElement("div");
    m.className = "meta";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = ticked.has(r.id);
    box.setAttribute("aria-label", `tick ${r.path}`);
    const lab = document.createElement("span");
    lab.className = "label";
    lab.textContent = labels.get(r.id) || r.label || "";
    const sc = document.createElement("span");
    sc.textContent = r.score !== undefined ? r.score.toFixed(3) : "";
    m.append(box, lab, sc);
    card.append(m);
    const toggle = () => {
      if (ticked.has(r.id)) ticked.delete(r.id); else ticked.add(r.id);
      renderSimilar();
    };
    card.querySelector("img").addEventListener("click", toggle);
    box.addEventListener("change", toggle);
    return card;
  }));
  $("ticked-count").textContent = `${ticked.size} ticked`;
}

function renderReview() {
  if (!state) return;
  $("review").replaceChildren(...state.review.map((r) => {
    const card = document.createElement("div");
    card.className = "card";
    card.append(img(r.id));
    const m = document.createElement("div");
    m.className = "meta";
    m.innerHTML = '<span class="label"></span><span></span>';
    m.children[0].textContent = r.predicted;
    m.children[1].textContent = `p ${r.probability.toFixed(2)}, kNN ${r.knn_agreement.toFixed(2)}`;
    const accept = document.createElement("button");
    accept.textContent = "Accept";
    accept.addEventListener("click", () => change("/api/label", { ids: [r.id], class: r.predicted }));
    const fix = document.createElement("input");
    fix.type = "text";
    fix.placeholder = "correct class, Enter";
    fix.setAttribute("list", "class-list");
    fix.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && fix.value.trim()) change("/api/label", { ids: [r.id], class: fix.value.trim() });
    });
    const p = document.createElement("div");
    p.className = "path";
    p.textContent = r.path;
    card.append(m, accept, fix, p);
    return card;
  }));
}

function showTab(name) {
  $("label-view").hidden = name !== "label";
  $("review-view").hidden = name !== "review";
  $("tab-label").classList.toggle("active", name === "label");
  $("tab-review").classList.toggle("active", name === "review");
}

document.addEventListener("keydown", (e) => {
  const inClass = e.target === $("class");
  const typing = e.target.tagName === "INPUT" && e.target.type === "text" || inClass;
  if (inClass && e.key === "Enter") { e.preventDefault(); labelCurrent(); return; }
  if (typing && e.key === "Escape") { e.target.blur(); return; }
  if (typing || e.ctrlKey && e.key !== "z" || e.metaKey || e.altKey) return;
  if (e.ctrlKey && e.key === "z") { e.preventDefault(); undo(); return; }
  const k = e.key;
  if (k >= "1" && k <= "9" && state) {
    const c = state.classes[Number(k) - 1];
    if (c) { e.preventDefault(); labelCurrent(c.name); }
  } else if (k === "s") skip();
  else if (k === "u") undo();
  else if (k === "f") findSimilar();
  else if (k === "r") rerank();
  else if (k === "a") tickAll();
  else if (k === "l") labelTicked();
  else if (k === "Enter") labelCurrent();
  else if (k === "/") { e.preventDefault(); $("class").focus(); }
});

$("label-btn").addEventListener("click", () => labelCurrent());
$("skip-btn").addEventListener("click", skip);
$("undo-btn").addEventListener("click", undo);
$("similar-btn").addEventListener("click", findSimilar);
$("rerank-btn").addEventListener("click", rerank);
$("tickall-btn").addEventListener("click", tickAll);
$("labelticked-btn").addEventListener("click", labelTicked);
$("tab-label").addEventListener("click", () => showTab("label"));
$("tab-review").addEventListener("click", () => showTab("review"));

api("GET", "/api/state").then((data) => { render(data); saved(""); $("class").focus(); })
  .catch((e) => status(e.message, true));
// A tile folder: each tile is shown with its 8 neighbours on the ground around it (the context
// land use needs), and the map view is linked.
fetch("/api/geo/info").then((r) => {
  if (!r.ok) return;
  geo = true;
  $("map-link").hidden = false;
  showCurrent();
}).catch(() => {});
