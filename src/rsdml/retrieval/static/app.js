// rsdml serve's page: search by upload or by clicking a result, mark results, re-rank
// (POST /api/rerank, Rocchio), filter by class, export the marks as CSV. No external assets.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  query: null,        // {id} for an indexed image or {vector} for an upload
  results: [],        // [{rank, id, score, path, class}]
  marks: new Map(),   // id -> {mark: "relevant" | "not relevant", path, class, score}
  maxK: 100,
  revision: "",   // /api/info's; part of thumbnail URLs so a new index never shows cached ones
};

const thumb = (id) => `/api/images/${id}?v=${state.revision}`;

function status(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function api(url, options) {
  const resp = await fetch(url, options);
  let body = null;
  try { body = await resp.json(); } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    let detail = body && body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
    throw new Error(`${resp.status}: ${detail || resp.statusText}`);
  }
  return body;
}

function k() {
  const v = parseInt($("#k").value, 10);
  return Math.max(1, Math.min(state.maxK, Number.isFinite(v) ? v : 20));
}

function showQuery(src, caption) {
  $("#query").hidden = false;
  $("#query-img").src = src;
  $("#query-caption").textContent = caption;
}

function newQuery(query) {
  state.query = query;
  state.marks.clear();
  updateMarks();
}

async function searchUpload(file) {
  if (!file) return;
  status(`searching with ${file.name}…`);
  const form = new FormData();
  form.append("file", file);
  try {
    const data = await api(`/api/search?k=${k()}`, { method: "POST", body: form });
    showQuery(URL.createObjectURL(file), file.name);
    newQuery({ vector: data.vector });
    render(data.results, `${data.results.length} results for ${file.name}`);
  } catch (e) {
    status(`search failed: ${e.message}`, true);
  }
}

async function searchId(id) {
  status(`searching with image ${id}…`);
  try {
    const data = await api(`/api/search?id=${encodeURIComponent(id)}&k=${k()}`);
    showQuery(thumb(id), `${data.query.path} (${data.query.class || "no class"})`);
    newQuery({ id });
    render(data.results, `${data.results.length} results for ${data.query.path}`);
  } catch (e) {
    status(`search failed: ${e.message}`, true);
  }
}

async function rerank() {
  if (!state.query) return;
  const relevant = [], nonRelevant = [];
  for (const [id, m] of state.marks) (m.mark === "relevant" ? relevant : nonRelevant).push(id);
  status("re-ranking…");
  try {
    const body = { ...state.query, relevant, non_relevant: nonRelevant, k: k() };
    const data = await api("/api/rerank", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    render(data.results, `re-ranked with ${relevant.length} relevant and ${nonRelevant.length} ` +
      "not relevant");
  } catch (e) {
    status(`re-rank failed: ${e.message}`, true);
  }
}

function mark(hit, which) {
  const current = state.marks.get(hit.id);
  if (current && current.mark === which) state.marks.delete(hit.id);
  else state.marks.set(hit.id, { mark: which, path: hit.path, class: hit.class, score: hit.score });
  updateMarks();
  drawGrid();
}

function updateMarks() {
  const n = state.marks.size;
  $("#marked-count").textContent = `${n} marked`;
  $("#rerank").disabled = !state.query || n === 0;
  $("#clear-marks").disabled = n === 0;
  $("#export").disabled = n === 0;
}

function render(results, message) {
  state.results = results;
  const select = $("#class-filter");
  const keep = select.value;
  const classes = [...new Set(results.map((r) => r.class).filter((c) => c !== null))].sort();
  select.replaceChildren(new Option("all", ""), ...classes.map((c) => new Option(c, c)));
  select.value = classes.includes(keep) ? keep : "";
  status(message);
  drawGrid();
}

function drawGrid() {
  const only = $("#class-filter").value;
  const shown = state.results.filter((r) => !only || r.class === only);
  const cards = shown.map((hit) => {
    const card = document.createElement("article");
    card.className = "result";
    card.dataset.id = hit.id;
    const m = state.marks.get(hit.id);
    if (m) card.classList.add(m.mark === "relevant" ? "relevant" : "not-relevant");
    const img = document.createElement("img");
    img.src = thumb(hit.id);
    img.alt = hit.path;
    img.loading = "lazy";
    img.title = "search with this image";
    img.addEventListener("click", () => searchId(hit.id));
    const meta = document.createElement("div");
    meta.className = "meta";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${hit.rank}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = hit.score.toFixed(4);
    const cls = document.createElement("span");
    cls.className = "class";
    cls.textContent = hit.class || "–";
    meta.append(rank, cls, score);
    const path = document.createElement("div");
    path.className = "path";
    path.textContent = hit.path;
    const marks = document.createElement("div");
    marks.className = "marks";
    for (const [which, label, cssClass] of [["relevant", "✓ relevant", "mark-relevant"],
                                            ["not relevant", "✗ not", "mark-not-relevant"]]) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = cssClass;
      b.textContent = label;
      b.addEventListener("click", () => mark(hit, which));
      marks.append(b);
    }
    card.append(img, meta, path, marks);
    return card;
  });
  $("#results").replaceChildren(...cards);
  if (state.results.length && !shown.length) status(`no results of class ${only}`);
}

function csvField(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function exportCsv() {
  const rows = [["id", "path", "class", "score", "mark"]];
  for (const [id, m] of state.marks) rows.push([id, m.path, m.class, m.score, m.mark]);
  const text = rows.map((r) => r.map(csvField).join(",")).join("\n") + "\n";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  a.download = "rsdml-marked.csv";
  document.body.append(a);
  a.click();
  a.remove();
}

async function init() {
  const drop = $("#drop");
  $("#file").addEventListener("change", (e) => searchUpload(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    searchUpload(e.dataTransfer.files[0]);
  });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter") $("#file").click(); });
  $("#rerank").addEventListener("click", rerank);
  $("#clear-marks").addEventListener("click", () => { state.marks.clear(); updateMarks(); drawGrid(); });
  $("#export").addEventListener("click", exportCsv);
  $("#class-filter").addEventListener("change", drawGrid);
  try {
    const info = await api("/api/info");
    state.maxK = info.limits.max_k;
    state.revision = info.revision;
    $("#k").max = info.limits.max_k;
    $("#alpha").textContent = info.rocchio.alpha;
    $("#beta").textContent = info.rocchio.beta;
    $("#gamma").textContent = info.rocchio.gamma;
    $("#info").textContent = `${info.images} images · ${info.kind} · ${info.model.backbone} ` +
      `${info.model.image_size}px · ${info.classes.length} classes`;
  } catch (e) {
    status(`cannot reach the server: ${e.message}`, true);
  }
}

init();
