// rsdml map: a tile folder's scene with its class map over it (labels where given, else
// predictions). Click a tile to see it among its neighbours, its class, the tiles most like it
// in embedding space, and to label it; labels go through the labelling page's API (on disk
// before the answer).
"use strict";

const $ = (id) => document.getElementById(id);
let data = null;      // /api/geo/scenes
let scene = null;     // the scene shown
let selected = null;  // the tile shown in the panel
const colour = {};    // class -> #rrggbb

async function api(method, url, body) {
  const r = await fetch(url, { method, headers: body ? { "Content-Type": "application/json" } : {},
                               body: body ? JSON.stringify(body) : undefined });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.detail ? String(j.detail) : `${r.status} ${r.statusText}`);
  return j;
}

function saved(text, ok = true) {
  $("saved").textContent = text;
  $("saved").className = ok ? "ok" : "error";
}

function tileClass(t) { return t.label || t.predicted; }

async function load() {
  data = await api("GET", "/api/geo/scenes");
  $("crs").textContent = data.crs;
  for (const c of data.classes) colour[c.name] = c.colour;
  const sel = $("scene");
  if (!sel.options.length) {
    sel.replaceChildren(...data.scenes.map((s) => new Option(s.name, s.name)));
    sel.hidden = data.scenes.length < 2;
  }
  scene = data.scenes.find((s) => s.name === sel.value) || data.scenes[0];
  const img = $("overview");
  if (img.dataset.scene !== scene.name) {
    img.dataset.scene = scene.name;
    img.src = scene.overview;
    await img.decode().catch(() => {});
  }
  $("class-list").replaceChildren(...data.classes.map((c) => new Option(c.name)));
  draw();
  legend();
  if (selected) select(data.tiles.find((t) => t.id === selected.id));
}

function tiles() { return data.tiles.filter((t) => t.scene === scene.name); }

// Map pixels are grid cells: stride x stride, centred in their tile (as in the class raster).
function cell(t, k) {
  const half = (scene.size - scene.stride) / 2;
  return [(t.col * scene.stride + half) * k, (t.row * scene.stride + half) * k, scene.stride * k];
}

function draw() {
  const img = $("overview"), cv = $("classes");
  cv.width = img.clientWidth; cv.height = img.clientHeight;
  const k = cv.width / scene.width;
  const ctx = cv.getContext("2d");
  ctx.clearRect(0, 0, cv.width, cv.height);
  ctx.globalAlpha = $("opacity").value / 100;
  for (const t of tiles()) {
    const c = tileClass(t);
    if (!c) continue;
    const [x, y, s] = cell(t, k);
    ctx.fillStyle = colour[c] || "#888";
    ctx.fillRect(x, y, s, s);
  }
  ctx.globalAlpha = 1;
  ctx.lineWidth = 2;
  for (const t of tiles()) {
    if (!t.label) continue;
    const [x, y, s] = cell(t, k);
    ctx.strokeStyle = colour[t.label] || "#000";
    ctx.strokeRect(x + 1, y + 1, s - 2, s - 2);
  }
  if (selected && selected.scene === scene.name) {
    const [x, y, s] = cell(selected, k);
    ctx.strokeStyle = "#ffd500"; ctx.lineWidth = 3;
    ctx.strokeRect(x, y, s, s);
  }
}

function legend() {
  const n = {};
  for (const t of tiles()) { const c = tileClass(t); if (c) n[c] = (n[c] || 0) + 1; }
  $("legend").replaceChildren(...data.classes.map((c) => {
    const li = document.createElement("li");
    li.innerHTML = '<span class="sw"></span><span class="name"></span><span class="n"></span>';
    li.querySelector(".sw").style.background = c.colour;
    li.querySelector(".name").textContent = c.name;
    li.querySelector(".n").textContent = n[c.name] || 0;
    return li;
  }));
}

async function select(t) {
  if (!t) return;
  selected = t;
  draw();
  $("tile-panel").hidden = false;
  $("context").src = `/api/geo/context/${t.id}`;
  $("tile-path").textContent = `${t.path} (row ${t.row}, column ${t.col})`;
  $("tile-class").textContent = t.label ? `labelled ${t.label}`
    : t.predicted ? `predicted ${t.predicted} (probability ${t.probability.toFixed(2)})`
    : "no prediction (rsdml label --predictions P.csv shows them)";
  const sim = await api("GET", `/api/similar?id=${t.id}&k=9`).catch(() => ({ results: [] }));
  if (selected !== t) return;
  $("similar").replaceChildren(...sim.results.map((r) => {
    const d = document.createElement("div");
    const im = document.createElement("img");
    im.src = `/api/images/${r.id}`; im.alt = r.path; im.title = r.path;
    im.addEventListener("click", () => {
      const u = data.tiles.find((x) => x.id === r.id);
      if (u && u.scene !== scene.name) { $("scene").value = u.scene; selected = u; load(); }
      else select(u);
    });
    const cap = document.createElement("div");
    cap.className = "cap";
    cap.textContent = r.label || r.path;
    d.append(im, cap);
    return d;
  }));
}

$("classes").addEventListener("click", (e) => {
  const cv = $("classes"), r = cv.getBoundingClientRect();
  const k = cv.width / scene.width;
  const x = (e.clientX - r.left) / k, y = (e.clientY - r.top) / k;
  const half = (scene.size - scene.stride) / 2;
  const col = Math.floor((x - half) / scene.stride), row = Math.floor((y - half) / scene.stride);
  select(tiles().find((t) => t.row === row && t.col === col));
});

$("label-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("class").value.trim();
  if (!selected || !name) return;
  saved("saving...");
  try {
    await api("POST", "/api/label", { ids: [selected.id], class: name });
    saved(`saved: ${selected.path} is ${name}`);
    await load();
  } catch (err) { saved(err.message, false); }
});

$("opacity").addEventListener("input", draw);
$("scene").addEventListener("change", () => { selected = null; $("tile-panel").hidden = true; load(); });
window.addEventListener("resize", () => data && draw());
load().catch((e) => saved(e.message, false));
