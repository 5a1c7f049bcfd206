"""``RUN/eval/report.html``: one self-contained page to look at a run.

Every figure is written as a PNG beside the page and embedded in it as base64, so the page
can be mailed or archived alone. Every input except the run folder itself is optional; a
missing one leaves a note on the page instead of a figure. Plots use matplotlib's Agg canvas
directly (no pyplot, no global backend switch).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import logging
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from threadpoolctl import threadpool_limits

from rsdml.errors import RsdmlError
from rsdml.evaluation.suite import headline_metrics, load_embeddings
from rsdml.fsutil import atomic_write_bytes, atomic_write_text, read_jsonl

log = logging.getLogger(__name__)

FIGURES = ("curves.png", "confusion.png", "tsne.png", "retrieval.png", "spectrum.png",
           "calibration.png")
TSNE_MAX_POINTS = 2000
RETRIEVAL_QUERIES = 6
RETRIEVAL_TOP = 10
THUMB_PX = 96
#: Characters of a class name under a retrieval thumbnail (1.25 in at 6.5 pt); longer names
#: are cut with an ellipsis so neighbouring captions never overlap.
CAPTION_CHARS = 20

def _retrieval_cell(values: dict[str, Any], key: str) -> str:
    """A retrieval table cell; a top-K metric with K above the gallery size is left empty
    (P@100 of a 72-image gallery cannot reach 1 and says nothing)."""
    k = key.rsplit("_", 1)[-1]
    size = values.get("gallery_size")
    if key.startswith(("p_at_", "map_at_")) and k.isdigit() and isinstance(size, int) \
            and int(k) > size:
        return ""
    return _cell(values.get(key))


_RETRIEVAL_ROWS = [
    ("map", "mAP (full ranking)"),
    *[(f"map_at_{k}", f"mAP@{k}") for k in (5, 10, 20, 50, 100)],
    *[(f"p_at_{k}", f"P@{k}") for k in (5, 10, 20, 50, 100)],
    ("map_at_r", "MAP@R"),
    ("r_precision", "R-precision"),
    ("anmrr", "ANMRR (lower is better)"),
    ("num_queries", "queries"),
    ("num_queries_without_relevant", "queries without a relevant item (left out)"),
    ("gallery_size", "gallery size"),
]


def write_report(run_dir: Path, *, seed: int = 0) -> Path:
    """Write RUN/eval/report.html (+ the PNGs beside it) and return its path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RsdmlError(f"run folder {run_dir} not found; pass the --out folder of a training run")
    out_dir = run_dir / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = _Inputs(run_dir)
    sections: list[str] = [_section_metrics(inputs)]
    figures: list[tuple[str, str, str, Callable[[], Figure | str]]] = [
        ("curves.png", "Training curves",
         ("Each loss term per epoch (train_log.jsonl, else metrics.jsonl), the kNN "
          "accuracy at each evaluation (metrics.jsonl) and, where recorded, the mean pairwise "
          "cosine of the test embeddings: near 1, the embeddings have collapsed to one point."),
         lambda: _fig_curves(inputs)),
        ("confusion.png", "Confusion matrix",
         ("kNN (K=10) on the test images; rows are true classes, colour is the "
          "row-normalised fraction."),
         lambda: _fig_confusion(inputs)),
        ("tsne.png", "t-SNE of the test embeddings",
         (f"2-D t-SNE (scikit-learn) of the unit embeddings, at most {TSNE_MAX_POINTS} test "
          "images, coloured by class."),
         lambda: _fig_tsne(inputs, seed)),
        ("retrieval.png", "Retrieval examples",
         (f"Test queries (left, blue) and their top {RETRIEVAL_TOP} from the labelled "
          "gallery; green border = same class, red = other class."),
         lambda: _fig_retrieval(inputs, seed)),
        ("spectrum.png", "Singular-value spectrum",
         ("Singular values of the batch prediction matrix on unlabelled images at the start "
          "and the end of training: the rank the method maximises."),
         lambda: _fig_spectrum(inputs)),
    ]
    if not inputs.has_test_labels:  # --labels: say what the figures can and cannot show
        figures = [(n, t, _NO_LABEL_CAPTIONS.get(n, c), m) for n, t, c, m in figures]
    else:
        figures.append(("calibration.png", "Calibration of the predicted probabilities",
                        ("Reliability of the probabilities `rsdml predict` gives (softmax of the "
                         "cosine to each class mean over a temperature fitted on labelled images "
                         "the run did not train on: here its validation images), on the test "
                         "images: points on the "
                         "diagonal mean that 0.8 is right 8 times in 10. ECE: the mean gap, "
                         "weighted by the share of images."),
                        lambda: _fig_calibration(inputs)))
    if any("mask_rate" in r for r in inputs.train_log or []):
        figures.append(("pseudo_labels.png", "Pseudo-labels",
                        ("Left: the share of unlabelled images whose weak view passed the "
                         "threshold in training (mask_rate, per epoch, augmented views) and, at "
                         "each evaluation, on the test images without augmentation "
                         "(pl_mask_rate) with the accuracy of those accepted (pl_acc; computed "
                         "for this report only, never fed back). Right: the classes the "
                         "pseudo-labels of the last epoch went to."),
                        lambda: _fig_pseudo_labels(inputs)))
    labels = inputs.labels
    for name, title, caption, make in figures:
        if name in _NAMED_FIGURES and labels.note:
            caption = f"{caption} {labels.note}"
        sections.append(_figure_section(out_dir, name, title, caption, make, labels.rc))
    sections.append(_section_config(inputs))
    page = _page(run_dir, inputs, sections)
    path = out_dir / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, page)
    return path


# ---------------------------------------------------------------------------- inputs
class _Inputs:
    """The run's files, each read at most once; a missing or broken one is None + a note."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.notes: dict[str, str] = {}
        self.config = self._read("config.yaml", lambda p: yaml.safe_load(p.read_text()) or {})
        self.history = self._read("metrics.jsonl", read_jsonl)
        self.train_log = self._read("train_log.jsonl", read_jsonl)
        self.metrics = self._read("eval/metrics.json", lambda p: json.loads(p.read_text()))
        self.class_names = self._read("class_names.json", lambda p: [str(c) for c in json.loads(p.read_text())])
        self.spectrum = self._read("spectrum.json", lambda p: json.loads(p.read_text()))
        self._emb: Any = None
        self._labels: _Labels | None = None

    def _read(self, rel: str, parse: Callable[[Path], Any]) -> Any:
        path = self.run_dir / rel
        if not path.is_file():
            self.notes[rel] = f"{rel} not found"
            return None
        try:
            return parse(path)
        except Exception as e:  # noqa: BLE001 - a broken optional file must not stop the report
            self.notes[rel] = f"{rel} could not be read ({type(e).__name__}: {e})"
            log.warning("report: %s", self.notes[rel])
            return None

    @property
    def embeddings(self):
        if self._emb is None:
            self._emb = self._read("eval/embeddings.npz", load_embeddings) or False
        return self._emb or None

    def class_name(self, label: int) -> str:
        names = self.class_names or (self.metrics or {}).get("class_names") or []
        return names[label] if 0 <= label < len(names) else f"class {label}"

    @property
    def has_test_labels(self) -> bool:
        """False for a run trained from a labels file: its test images have no label."""
        return (self.metrics or {}).get("test_labels") is not False

    @property
    def protocol(self) -> str | None:
        return (self.config or {}).get("protocol") or (self.metrics or {}).get("protocol")

    @property
    def labels(self) -> _Labels:
        """The class names as the figures draw them (built once)."""
        if self._labels is None:
            names = self.class_names or (self.metrics or {}).get("class_names") or []
            self._labels = _Labels([str(n) for n in names])
        return self._labels

    def figure_name(self, label: int, width: int) -> str:
        return self.labels.text(label, width, self.class_name(label))

    def rgb_bands(self) -> tuple[int, ...] | None:
        """The file band numbers of red, green, blue of a multispectral run (its bands.json,
        per --rgb-bands), for the thumbnails; None for an RGB run."""
        if str((self.config or {}).get("bands", "rgb")).lower() == "rgb":
            return None
        try:
            from rsdml.data.bands import InputSpec

            spec = InputSpec.load(self.run_dir / "bands.json")
        except Exception:  # noqa: BLE001 - thumbnails fall back to the RGB rules
            return None
        return tuple(spec.bands[i] for i in spec.rgb) if spec.rgb else None

    def data_root(self) -> Path | None:
        data = (self.config or {}).get("data")
        if not data:
            return None
        root = Path(str(data)).expanduser()
        if root.is_absolute() or root.is_dir():
            return root
        beside = self.run_dir / root
        return beside if beside.is_dir() else root


def _counts_text(counts: dict[str, Any], protocol: str | None) -> str:
    """Images per role; under the transductive protocol the unlabelled pool is the test images
    themselves (no unlabelled role of its own), so "unlabeled 0" would mislead."""
    parts = []
    for k, v in counts.items():
        if k == "unlabeled" and protocol == "transductive" and not v:
            parts.append(f"unlabelled pool = the {counts.get('test', 0)} test images "
                         "(transductive protocol)")
        else:
            parts.append(f"{k} {v}")
    return ", ".join(parts)


def _section_config(inputs: _Inputs) -> str:
    if not inputs.config:
        return _note_section("Run configuration", inputs.notes.get("config.yaml", "empty config"))
    rows = "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(_fmt_value(v))}</td></tr>" for k, v in inputs.config.items()
    )
    return f'<section><h2>Run configuration</h2><table class="kv">{rows}</table></section>'


def _section_metrics(inputs: _Inputs) -> str:
    m = inputs.metrics
    if not m:
        return _note_section(
            "Metrics", inputs.notes.get("eval/metrics.json", "no metrics")
            + "; run `rsdml evaluate RUN` to compute them"
        )
    parts = [('<section><h2>Metrics</h2><p class="small">Definitions: docs/metrics.md. '
              "Queries are the test images; the kNN references and the <i>labelled</i> gallery "
              "are the labelled images; the <i>archive</i> gallery is every other image.</p>")]
    if m.get("test_labels") is False:
        parts.append(f"<p><b>No test labels.</b> {_e(str(m.get('note', '')).capitalize())}.</p>")
        names = m.get("class_names") or []
        pred, lab = m.get("predicted_per_class") or [], m.get("labeled_per_class") or []
        rows = "".join(f"<tr><th>{_e(str(c))}</th><td>{lab[i] if i < len(lab) else ''}</td>"
                       f"<td>{pred[i] if i < len(pred) else ''}</td></tr>"
                       for i, c in enumerate(names))
        parts.append("<table><tr><th>class</th><th>labelled</th><th>unlabelled images "
                     f"predicted (nearest class mean, as <code>rsdml predict</code>)</th></tr>{rows}</table>")
    counts = m.get("counts") or {}
    if counts:
        parts.append("<p>Images per role: " + _e(_counts_text(counts, inputs.protocol)) + "</p>")
    knn = m.get("knn") or {}
    rows = [f"<tr><th>K={k[1:]}</th><td>{_pct(v.get('accuracy'))}</td><td>{_pct(v.get('macro_f1'))}</td></tr>"
            for k, v in knn.items() if k.startswith("k") and isinstance(v, dict)]
    if rows:
        parts.append("<h3>kNN classification (distance-weighted, cosine)</h3><table>"
                     "<tr><th></th><th>accuracy</th><th>macro-F1</th></tr>" + "".join(rows) + "</table>")
    cl = m.get("clustering") or {}
    if cl:
        parts.append("<h3>Clustering (k-means, K = number of classes)</h3><table>"
                     "<tr><th>accuracy (Hungarian)</th><th>NMI</th><th>ARI</th></tr>"
                     f"<tr><td>{_pct(cl.get('accuracy'))}</td><td>{_num(cl.get('nmi'))}</td>"
                     f"<td>{_num(cl.get('ari'))}</td></tr></table>")
    ret = m.get("retrieval") or {}
    if ret:
        galleries = [g for g in ("labeled", "archive") if g in ret]
        head = "".join(f"<th>{_e(g)} gallery</th>" for g in galleries)
        body = "".join(
            f"<tr><th>{_e(label)}</th>"
            + "".join(f"<td>{_retrieval_cell(ret[g], key)}</td>" for g in galleries) + "</tr>"
            for key, label in _RETRIEVAL_ROWS
            if any(_retrieval_cell(ret[g], key) != "" for g in galleries)
        )
        parts.append(f"<h3>Retrieval (cosine, full ranking)</h3><table><tr><th></th>{head}</tr>{body}</table>")
    per_class = {k: v.get("per_class_accuracy") for k, v in knn.items()
                 if k.startswith("k") and isinstance(v, dict) and v.get("per_class_accuracy")}
    if per_class:
        n = max(len(v) for v in per_class.values())
        head = "".join(f"<th>K={k[1:]}</th>" for k in per_class)
        body = "".join(
            f"<tr><th>{_e(inputs.class_name(i))}</th>"
            + "".join(f"<td>{_pct(v[i] if i < len(v) else None)}</td>" for v in per_class.values())
            + "</tr>" for i in range(n)
        )
        parts.append("<details><summary>Per-class kNN accuracy</summary>"
                     f"<table><tr><th>class</th>{head}</tr>{body}</table></details>")
    head = headline_metrics(m)
    if head:
        parts.append("<details><summary>Headline numbers (flat keys)</summary><table>"
                     + "".join(f"<tr><th>{_e(k)}</th><td>{_num(v)}</td></tr>" for k, v in head.items())
                     + "</table></details>")
    parts.append("</section>")
    return "".join(parts)


def _figure_section(out_dir: Path, name: str, title: str, caption: str,
                    make: Callable[[], Figure | str], rc: dict[str, Any] | None = None) -> str:
    png = out_dir / name
    # matplotlib's own warnings (e.g. a glyph missing for CJK class names) become one
    # rsdml warning line per figure instead of Python warning text on stderr. ``rc``: the
    # fonts for the class names (a fallback font for their scripts).
    with warnings.catch_warnings(record=True) as caught, matplotlib.rc_context(rc or {}):
        warnings.simplefilter("always")
        try:
            fig = make()
        except Exception as e:  # noqa: BLE001 - one failed plot must not cost the whole page
            log.warning("report: %s failed (%s: %s)", name, type(e).__name__, e)
            fig = f"this figure could not be drawn ({type(e).__name__}: {e})"
        if isinstance(fig, str):
            png.unlink(missing_ok=True)  # no stale picture from an earlier report
            return _note_section(title, fig)
        buf = io.BytesIO()
        FigureCanvasAgg(fig)
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    if caught:
        log.warning("report: %s: %d plotting warning(s), first: %s", name, len(caught),
                    " ".join(str(caught[0].message).split()))
    data = buf.getvalue()
    png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(png, data)
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<section><h2>{_e(title)}</h2><p class="small">{_e(caption)} ({_e(name)})</p>'
            f'<img alt="{_e(title)}" src="data:image/png;base64,{b64}"></section>')


def _note_section(title: str, note: str) -> str:
    return f'<section><h2>{_e(title)}</h2><p class="note">{_e(note)}</p></section>'


def _page(run_dir: Path, inputs: _Inputs, sections: list[str]) -> str:
    cfg = inputs.config or {}
    keys = ("method", "backbone", "protocol") + (() if cfg.get("labels") else ("labeled_fraction",))
    items = [f"{k}: {cfg[k]}" for k in keys if k in cfg]
    if cfg.get("labels"):  # --labels: the fraction is not used; say what was labelled
        n = ((inputs.metrics or {}).get("counts") or {}).get("labeled")
        items.append(f"labels: {Path(str(cfg['labels'])).name}"
                     + (f" ({n} labelled images)" if n is not None else ""))
    sub = " · ".join(_e(i) for i in items)
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>rsdml report: {_e(run_dir.resolve().name)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}}
h1{{margin-bottom:.2em}} h2{{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}}
table{{border-collapse:collapse;margin:.5em 0}} td,th{{border:1px solid #ddd;padding:3px 8px;text-align:right}}
th{{background:#f5f5f5;text-align:left}} table.kv td{{text-align:left;font-family:monospace}}
img{{max-width:100%;height:auto}} .note{{color:#8a5a00;background:#fff6e0;padding:.5em}}
.small{{color:#555;font-size:90%}} summary{{cursor:pointer;margin:.5em 0}}
</style></head><body>
<h1>rsdml report: {_e(run_dir.resolve().name)}</h1>
<p class="small">{sub}<br>generated {_e(when)} from {_e(str(run_dir))}</p>
{''.join(sections)}
</body></html>
"""


# ---------------------------------------------------------------------------- figures
def _fig_curves(inputs: _Inputs) -> Figure | str:
    evals = inputs.history or []
    epochs = inputs.train_log or evals  # per-epoch losses where the trainer wrote them
    if not evals and not epochs:
        return inputs.notes.get("metrics.jsonl", "metrics.jsonl holds no evaluations yet")
    x_key = "epoch" if any("epoch" in r for r in evals + epochs) else "step"
    loss_rows, acc_rows = _by_x(epochs, x_key), _by_x(evals, x_key)
    losses = sorted({k for r in loss_rows.values() for k in r if k.startswith("loss_")})
    accs = [k for k in ("knn_acc", "val_knn_acc") if any(k in r for r in acc_rows.values())]
    accs += sorted({k for r in acc_rows.values() for k in r
                    if k.endswith("_acc") and k not in accs and not k.startswith("loss_")})
    if not inputs.has_test_labels:  # an older --labels run logged them against the label -1
        accs = []
    if not (losses or accs):
        return "metrics.jsonl has no loss or accuracy values to plot"
    diags = [k for k in DIAGNOSTICS if any(k in r for r in acc_rows.values())]
    fig = Figure(figsize=(16 if diags else 11, 4))
    axes = fig.subplots(1, 3 if diags else 2)
    ax1, ax2 = axes[0], axes[1]
    panels = [(losses, loss_rows, ax1), (accs, acc_rows, ax2)]
    if diags:
        panels.append((diags, acc_rows, axes[2]))
    for keys, rows, ax in panels:
        for key in keys:
            pts = [(x, rows[x][key]) for x in sorted(rows) if _finite(rows[x].get(key))]
            if pts:
                px, py = zip(*pts)
                ax.plot(px, py, marker="o", markersize=3, label=key)
        ax.set_xlabel(x_key)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    ax1.set_title("loss terms")
    ax2.set_title("kNN accuracy (K=10)")
    if diags:
        axes[2].set_title("collapse diagnostics (test embeddings)")
        axes[2].set_ylim(-0.05, 1.05)
        pts = [(x, acc_rows[x]["emb_effective_rank"]) for x in sorted(acc_rows)
               if _finite(acc_rows[x].get("emb_effective_rank"))]
        if pts:  # the effective rank on its own scale (1 = a line, D = fully spread)
            twin = axes[2].twinx()
            px, py = zip(*pts)
            twin.plot(px, py, marker="s", markersize=3, color="tab:red", label="emb_effective_rank")
            twin.set_ylabel("effective rank")
            twin.legend(fontsize=8, loc="lower right")
    return fig


def _fig_pseudo_labels(inputs: _Inputs) -> Figure | str:
    train_rows = [r for r in inputs.train_log or [] if "mask_rate" in r]
    evals = inputs.history or []
    fig = Figure(figsize=(12, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot([r["epoch"] for r in train_rows], [r["mask_rate"] for r in train_rows],
             marker="o", markersize=3, label="mask_rate (training)")
    for key in ("pl_mask_rate", "pl_acc") if inputs.has_test_labels else ("pl_mask_rate",):
        pts = [(r["epoch"], r[key]) for r in evals if _finite(r.get(key))]
        if pts:
            px, py = zip(*pts)
            ax1.plot(px, py, marker="s", markersize=3, label=f"{key} (evaluation)")
    ax1.set_xlabel("epoch")
    ax1.set_ylim(-0.05, 1.05)
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    hist = train_rows[-1].get("pseudo_label_hist") if train_rows else None
    if hist:
        names = inputs.class_names if inputs.class_names and len(inputs.class_names) == len(hist) \
            else [str(i) for i in range(len(hist))]
        ax2.bar(range(len(hist)), hist)
        ax2.set_xticks(range(len(hist)), names, rotation=90, fontsize=6)
        ax2.set_title(f"pseudo-labels of epoch {train_rows[-1]['epoch']} by class")
    fig.tight_layout()
    return fig


#: Per-evaluation collapse diagnostics on a 0..1 scale (metrics.jsonl; see training.diagnostics):
#: a mean pairwise cosine near 1 means every image maps to nearly one point.
DIAGNOSTICS = ("emb_mean_cosine",)


def _by_x(rows: list[dict[str, Any]], x_key: str) -> dict[float, dict[str, Any]]:
    """Rows keyed by epoch (or step); a resumed run may repeat one: the last record wins."""
    out: dict[float, dict[str, Any]] = {}
    for r in rows:
        if _finite(r.get(x_key)):
            out[float(r[x_key])] = r
    return out


def _fig_confusion(inputs: _Inputs) -> Figure | str:
    cm = (inputs.metrics or {}).get("knn", {}).get("confusion_matrix")
    if not cm:
        return inputs.notes.get("eval/metrics.json", "metrics.json has no confusion matrix")
    cm = np.asarray(cm, dtype=np.float64)
    c = len(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(14, max(5, 0.35 * c + 3))
    fig = Figure(figsize=(size, size * 0.9))
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    names = [inputs.figure_name(i, 24) for i in range(c)]
    ax.set_xticks(range(c), names, rotation=90, fontsize=7 if c > 15 else 9)
    ax.set_yticks(range(c), names, fontsize=7 if c > 15 else 9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    return fig


def _fig_tsne(inputs: _Inputs, seed: int) -> Figure | str:
    emb = inputs.embeddings
    if emb is None:
        return inputs.notes.get("eval/embeddings.npz", "no embeddings")
    test = np.flatnonzero(emb.roles == "test")
    if len(test) < 5:
        return f"t-SNE needs at least 5 test images, found {len(test)}"
    rng = np.random.default_rng(seed)
    if len(test) > TSNE_MAX_POINTS:
        test = np.sort(rng.choice(test, TSNE_MAX_POINTS, replace=False))
    from sklearn.manifold import TSNE

    x = emb.embeddings[test].astype(np.float32)
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    # Barnes-Hut's threaded loop costs more than it saves on small sets.
    method = "exact" if len(x) <= 300 else "barnes_hut"
    # One thread: OpenMP spin-waiting made it 4x slower on a busy 2-core machine (64 s vs 14 s).
    with threadpool_limits(limits=1):
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", method=method,
                  random_state=seed).fit_transform(x)
    labels = emb.labels[test]
    title = f"t-SNE of {len(test)} test embeddings"
    if (labels < 0).all():  # --labels: colour by the class `rsdml predict` gives
        labels = _predicted(emb, test)
        title += ", coloured by predicted class (no test labels)"
    classes = np.unique(labels)
    fig = Figure(figsize=(10, 7.5))
    ax = fig.subplots()
    colours = _colours(len(classes))
    for colour, cls in zip(colours, classes):
        sel = labels == cls
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=colour, label=inputs.figure_name(int(cls), 32))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5),
              ncol=1 if len(classes) <= 20 else 2, frameon=False)
    return fig


def _fig_retrieval(inputs: _Inputs, seed: int) -> Figure | str:
    emb = inputs.embeddings
    if emb is None:
        return inputs.notes.get("eval/embeddings.npz", "no embeddings")
    test = np.flatnonzero(emb.roles == "test")
    ref = np.flatnonzero(emb.roles == "labeled")
    if not len(test) or not len(ref):
        return "retrieval examples need test and labelled images"
    from rsdml.retrieval.index import ExactIndex

    rng = np.random.default_rng(seed)
    labelled = (emb.labels[test] >= 0).any()
    if labelled:  # one query from each of several classes, chosen reproducibly
        classes = rng.permutation(np.unique(emb.labels[test]))[:RETRIEVAL_QUERIES]
        queries = [int(rng.choice(test[emb.labels[test] == c])) for c in classes]
    else:  # --labels: queries without a class; neighbours shown with theirs, not judged
        queries = sorted(rng.choice(test, min(RETRIEVAL_QUERIES, len(test)),
                                    replace=False).tolist())
    top = min(RETRIEVAL_TOP, len(ref))
    _, nbr = ExactIndex(emb.embeddings[ref]).search(emb.embeddings[queries], top)
    root = inputs.data_root()
    rgb = inputs.rgb_bands()
    cols = top + 1
    fig = Figure(figsize=(1.25 * cols, 1.45 * len(queries)))
    axes = np.atleast_2d(fig.subplots(len(queries), cols))
    for row, q in enumerate(queries):
        name = inputs.figure_name(int(emb.labels[q]), CAPTION_CHARS) if labelled \
            else "(unlabelled)"
        cells = [(q, "#1f5fbf", f"query\n{name}")]
        for rank, j in enumerate(ref[nbr[row]], start=1):
            ok = emb.labels[j] == emb.labels[q]
            colour = ("#1a9e3a" if ok else "#d62728") if labelled else "#888888"
            cells.append((int(j), colour,
                          f"{rank}. {inputs.figure_name(int(emb.labels[j]), CAPTION_CHARS - 4)}"))
        for col, (idx, colour, text) in enumerate(cells):
            _thumb_cell(axes[row, col], _thumbnail(root, str(emb.paths[idx]), rgb), colour, text)
    fig.subplots_adjust(wspace=0.08, hspace=0.35)
    return fig


_NO_LABEL_CAPTIONS = {
    "tsne.png": (f"2-D t-SNE (scikit-learn) of the unit embeddings, at most {TSNE_MAX_POINTS} "
                 "test images, coloured by the class `rsdml predict` gives them (the test "
                 "images have no labels)."),
    "retrieval.png": (f"Unlabelled test queries (left, blue) and their top {RETRIEVAL_TOP} from "
                      "the labelled gallery with the neighbours' classes; grey borders: a "
                      "query has no label to judge them by."),
}


def _fig_calibration(inputs: _Inputs) -> Figure | str:
    from rsdml.evaluation.prototypes import (
        expected_calibration_error,
        fit_temperature_on,
        prototype_predict,
        reliability,
    )

    emb = inputs.embeddings
    if emb is None:
        return inputs.notes.get("eval/embeddings.npz", "no embeddings")
    ref = np.flatnonzero(emb.roles == "labeled")
    test = np.flatnonzero((emb.roles == "test") & (emb.labels >= 0))
    if len(ref) < 2 or not len(test):
        return "calibration needs labelled and test images"
    n = int(emb.labels[ref].max()) + 1
    val = np.flatnonzero((emb.roles == "val") & (emb.labels >= 0))  # not trained on
    cal = fit_temperature_on(emb.embeddings[ref], emb.labels[ref], emb.embeddings[val],
                             emb.labels[val], n)
    proba = prototype_predict(emb.embeddings[ref], emb.labels[ref], emb.embeddings[test], n,
                              cal.temperature)
    bins = reliability(proba, emb.labels[test])
    ece = expected_calibration_error(proba, emb.labels[test])
    fig = Figure(figsize=(5.5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999999", lw=1, label="perfect")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
            color="#1f5fbf", label=f"T = {cal.temperature:.3f} (ECE {ece:.3f})"
            + ("" if cal.held_out else ", not calibrated: no validation images"))
    ax.set_xlabel("predicted probability (mean of the bin)")
    ax.set_ylabel("share right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def _predicted(emb: Any, rows: np.ndarray) -> np.ndarray:
    """The class `rsdml predict` gives each of ``rows`` (nearest class mean of the labelled)."""
    from rsdml.evaluation.prototypes import prototypes
    from rsdml.vectors import l2_normalize

    ref = np.flatnonzero(emb.roles == "labeled")
    n = int(emb.labels[ref].max()) + 1
    protos = prototypes(emb.embeddings[ref], emb.labels[ref], n)
    return np.asarray((l2_normalize(emb.embeddings[rows]) @ protos.T).argmax(axis=1))


def _fig_spectrum(inputs: _Inputs) -> Figure | str:
    spec = inputs.spectrum
    method = (inputs.config or {}).get("method", "this method")
    if not spec:
        return (f"No singular-value spectrum recorded: {method} has no unlabelled prediction "
                "matrix (or training has not run), so spectrum.json is absent.")
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    plotted = False
    for key, colour in (("start", "#999999"), ("end", "#1f5fbf")):
        values = spec.get(key)
        if not values:
            continue
        s = np.sort(np.asarray(values, dtype=np.float64))[::-1]
        ax.plot(np.arange(1, len(s) + 1), s, marker="o", markersize=3, color=colour,
                label=f"{key} of training (nuclear norm {s.sum():.2f})")
        plotted = True
    if not plotted:
        return "spectrum.json holds no singular values"
    if "end" not in spec:
        ax.set_title("only the start of training was recorded")
    ax.set_yscale("log" if all(v > 0 for k in ("start", "end") for v in spec.get(k) or []) else "linear")
    ax.set_xlabel("index (sorted)")
    ax.set_ylabel("singular value")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# ---------------------------------------------------------------------------- class names
#: Figures that draw class names (their captions get the note on undrawable names).
_NAMED_FIGURES = frozenset({"confusion.png", "tsne.png", "retrieval.png"})
#: Families tried first for scripts DejaVu Sans lacks (CJK, Arabic, Devanagari, ...).
_FALLBACK_HINTS = ("Noto Sans CJK", "Noto Sans", "Source Han Sans", "WenQuanYi", "Droid Sans",
                   "AR PL", "Unifont", "Arial Unicode", "Microsoft YaHei", "SimHei",
                   "Hiragino", "PingFang", "Apple SD Gothic", "Malgun")


class _Labels:
    """Class names as the figures draw them: cut to fit (an ellipsis) and drawable. A name
    with characters the plotting font lacks (e.g. CJK in DejaVu Sans, which would render as
    boxes) gets a fallback font that has them when one is installed; otherwise the figures
    show it as ``class N`` and :attr:`note` (added to their captions) says which is which."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.rc: dict[str, Any] = {}
        self.undrawable: set[int] = set()
        missing = _missing_chars("".join(names))
        if missing:
            fallback = _font_covering(missing)
            if fallback is not None:
                base = matplotlib.rcParams["font.family"]
                base = [base] if isinstance(base, str) else list(base)
                families = matplotlib.rcParams["font.sans-serif"] if base == ["sans-serif"] else base
                self.rc = {"font.family": [*families[:1], fallback]}
            else:
                self.undrawable = {i for i, n in enumerate(names) if set(n) & missing}

    @property
    def note(self) -> str:
        if not self.undrawable:
            return ""
        pairs = ", ".join(f"class {i} = {self.names[i]}" for i in sorted(self.undrawable)[:8])
        more = ", ..." if len(self.undrawable) > 8 else ""
        return (f"Class names with characters no installed font can draw are shown as class "
                f"numbers ({pairs}{more}); install a font that has them (e.g. Noto Sans CJK, "
                "Debian package fonts-noto-cjk) to see the names.")

    def text(self, label: int, width: int, name: str) -> str:
        if label in self.undrawable:
            return f"class {label}"
        return shorten(name, width)


def shorten(name: str, width: int) -> str:
    """``name`` cut to ``width`` characters with an ellipsis (the end is usually the part a
    long class name can lose: "industrial area (dense, with ..." )."""
    name = " ".join(name.split())
    return name if len(name) <= width else name[: max(1, width - 1)].rstrip() + "\u2026"


def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except Exception:  # noqa: BLE001 - an unreadable font file covers nothing
        return frozenset()


def _missing_chars(text: str) -> set[str]:
    """Characters of ``text`` the default plotting font has no glyph for."""
    from matplotlib import font_manager

    chars = {c for c in text if not c.isspace() and ord(c) > 127}
    if not chars:
        return set()
    path = font_manager.findfont(font_manager.FontProperties(), fallback_to_default=True)
    have = _charmap(path)
    return {c for c in chars if ord(c) not in have}


def _font_covering(chars: set[str]) -> str | None:
    """The family of an installed font that has every one of ``chars`` (likely names first)."""
    from matplotlib import font_manager

    entries = sorted(font_manager.fontManager.ttflist,
                     key=lambda f: not any(f.name.startswith(h) for h in _FALLBACK_HINTS))
    need = {ord(c) for c in chars}
    seen: set[str] = set()
    for entry in entries:
        if entry.fname in seen:
            continue
        seen.add(entry.fname)
        if need <= _charmap(entry.fname):
            return str(entry.name)
    return None


# ---------------------------------------------------------------------------- helpers
def _thumbnail(root: Path | None, rel: str,
               rgb: tuple[int, ...] | None = None) -> np.ndarray | None:
    """A thumbnail of ``root/rel``: by the RGB rules, or from the bands ``rgb`` (file band
    numbers of red, green, blue) of a multispectral image, each stretched to 8 bit."""
    if root is None:
        return None
    try:
        from PIL import Image

        from rsdml.data.imageio import read_rgb, read_rgb_bands

        im = Image.fromarray(read_rgb(root / rel) if rgb is None
                             else read_rgb_bands(root / rel, rgb))
        im.thumbnail((THUMB_PX, THUMB_PX))
        return np.asarray(im)
    except Exception:  # noqa: BLE001 - unreadable or missing image: the cell shows its label
        return None


def _thumb_cell(ax, img: np.ndarray | None, colour: str, text: str) -> None:
    if img is not None:
        ax.imshow(img)
    else:
        ax.set_facecolor("#eeeeee")
        ax.text(0.5, 0.5, text.split("\n")[-1].split(". ", 1)[-1], ha="center", va="center",
                fontsize=7, wrap=True, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)
    ax.set_title(text, fontsize=6.5, color=colour if colour != "#1f5fbf" else "black")


def _colours(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    cmap = colormaps["gist_ncar"]
    return [cmap(0.05 + 0.9 * i / max(n - 1, 1)) for i in range(n)]


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v: Any) -> str:
    return f"{v:.4f}" if _finite(v) else "–"


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if _finite(v) else "–"


def _cell(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return _num(v)


def _fmt_value(v: Any) -> str:
    return "null" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else str(v)
