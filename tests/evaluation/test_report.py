import base64
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from rsdml.errors import RsdmlError
from rsdml.evaluation.report import FIGURES, write_report

CHROMIUM = Path("/usr/bin/chromium")
_IMG_SRC = re.compile(r'<img[^>]*\ssrc="([^"]*)"')

# Runs after window load: counts images and records which ones decoded.
_CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = document.createElement('pre');
  out.id = 'imgcheck';
  out.textContent = JSON.stringify({
    n: imgs.length,
    widths: imgs.map(function (i) { return i.complete ? i.naturalWidth : -1; })
  });
  document.body.appendChild(out);
});
</script>"""


def _browser_image_check(report: Path, tmp: Path, extra: str = "") -> dict:
    page = report.with_name("browser_check.html")
    html = report.read_text()
    assert "</body>" in html
    page.write_text(html.replace("</body>", extra + _CHECK_SCRIPT + "</body>"))
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chromium-profile'}",
        "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    found = re.search(r'<pre id="imgcheck">(.*?)</pre>', proc.stdout, re.DOTALL)
    assert found, f"no check result in the DOM; chromium stderr: {proc.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


def test_report_has_every_figure_as_png_file_and_embedded(full_report):
    run, report = full_report
    assert report == run / "eval" / "report.html"
    html = report.read_text()
    srcs = _IMG_SRC.findall(html)
    assert len(srcs) == len(FIGURES)
    for name in FIGURES:
        assert (run / "eval" / name).stat().st_size > 0
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        im = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert im.format == "PNG" and im.width > 50 and im.height > 50
    for text in ("Run configuration", "kNN classification", "Clustering", "Retrieval",
                 "ANMRR", "airport", "hr-s2dml"):
        assert text in html
    assert "http://" not in html and "https://" not in html  # self-contained


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install -y chromium)")
def test_report_images_load_in_headless_chromium(full_report, tmp_path):
    _, report = full_report
    result = _browser_image_check(report, tmp_path)
    assert result["n"] == len(FIGURES)
    assert all(w > 0 for w in result["widths"]), result
    # the check itself notices a picture that does not load
    broken = _browser_image_check(report, tmp_path, '<img src="data:image/png;base64,AAAA">')
    assert broken["n"] == len(FIGURES) + 1 and broken["widths"][-1] <= 0


def test_report_tolerates_missing_inputs(fake_run):
    run = fake_run(spectrum=False, images=False)
    (run / "metrics.jsonl").unlink()
    (run / "config.yaml").write_text("data: /nonexistent/folder\nmethod: snca\n")
    html = write_report(run).read_text()
    assert "No singular-value spectrum recorded: snca" in html
    assert "metrics.jsonl not found" in html
    assert not (run / "eval" / "spectrum.png").exists()
    assert not (run / "eval" / "curves.png").exists()
    # retrieval examples fall back to label text when the images cannot be read
    assert (run / "eval" / "retrieval.png").is_file()
    assert len(_IMG_SRC.findall(html)) == 4  # confusion, t-SNE, retrieval, calibration


def test_report_on_a_bare_run_folder(tmp_path):
    (tmp_path / "run").mkdir()
    html = write_report(tmp_path / "run").read_text()
    assert "eval/metrics.json not found" in html
    assert not _IMG_SRC.findall(html)
    with pytest.raises(RsdmlError):
        write_report(tmp_path / "missing")


def test_top_k_rows_only_for_k_within_the_gallery(full_report):
    """The fake run's labelled gallery has 12 images, its archive gallery 47: P@50 / P@100
    rows are left out, P@20 has an empty labelled cell, P@10 is complete."""
    _, report = full_report
    html = report.read_text()
    assert "<th>P@10</th>" in html and "<th>P@20</th>" in html
    assert "<th>P@50</th>" not in html and "<th>P@100</th>" not in html
    row = re.search(r"<tr><th>P@20</th>(.*?)</tr>", html).group(1)
    assert row.startswith("<td></td>")


def test_plotting_warnings_become_one_rsdml_warning(tmp_path, caplog):
    import warnings

    from matplotlib.figure import Figure

    from rsdml.evaluation.report import _figure_section

    def make():
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().set_title("\u6e2f\u53e3")  # CJK: the default font lacks the glyphs
        warnings.warn("Glyph 28207 missing from font(s) DejaVu Sans.", UserWarning, stacklevel=2)
        return fig

    with warnings.catch_warnings(record=True) as escaped, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        html = _figure_section(tmp_path, "x.png", "X", "caption", make)
    assert "data:image/png;base64," in html and (tmp_path / "x.png").is_file()
    assert not escaped  # nothing reaches Python's warning printer (stderr)
    assert len(caplog.records) == 1 and "x.png" in caplog.text and "Glyph 28207" in caplog.text


def test_curves_show_collapse_diagnostics_when_recorded(fake_run):
    from rsdml.evaluation.report import _fig_curves, _Inputs

    run = fake_run()
    without = _fig_curves(_Inputs(run))
    assert len(without.axes) == 2
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()[:-1]]
    for i, r in enumerate(rows):
        r.update(emb_mean_cosine=0.2 + 0.2 * i, emb_effective_rank=40.0 - 10 * i)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = _fig_curves(_Inputs(run))
    assert len(fig.axes) == 4  # losses, accuracy, cosine + its twin axis for the rank
    cos_line = fig.axes[2].lines[0]
    assert list(cos_line.get_ydata()) == pytest.approx([r["emb_mean_cosine"] for r in rows])
    assert list(fig.axes[3].lines[0].get_ydata()) == pytest.approx(
        [r["emb_effective_rank"] for r in rows])


def _retarget_names(run: Path, names: list[str]) -> None:
    """Rename the fake run's classes (class_names.json and eval/metrics.json)."""
    (run / "class_names.json").write_text(json.dumps(names))
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    metrics["class_names"] = names
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))


def test_transductive_counts_name_the_test_images_as_the_unlabelled_pool(fake_run):
    import yaml

    run = fake_run(spectrum=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "protocol": "transductive"}))
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    metrics["counts"] = {"labeled": 12, "unlabeled": 0, "val": 0, "test": 24}
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    html = write_report(run).read_text()
    assert "unlabeled 0" not in html
    assert "unlabelled pool = the 24 test images (transductive protocol)" in html
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "protocol": "inductive"}))
    assert "unlabeled 0" in write_report(run).read_text()  # a real count under inductive


def test_long_class_names_do_not_overlap_in_the_retrieval_captions(fake_run):
    from rsdml.evaluation.report import _fig_retrieval, _Inputs, shorten

    run = fake_run(spectrum=False)
    long = [f"{n} with a very long descriptive class name number {i}"
            for i, n in enumerate(["airport", "beach", "forest", "river"])]
    _retarget_names(run, long)
    fig = _fig_retrieval(_Inputs(run), 0)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    rows: dict[float, list] = {}
    for ax in fig.axes:
        rows.setdefault(round(ax.get_position().y0, 3), []).append(ax)
    assert len(rows) > 1
    for axes in rows.values():
        boxes = sorted((ax.title.get_window_extent(renderer) for ax in axes), key=lambda b: b.x0)
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), "captions overlap"
    assert shorten("abcdefghij", 5) == "abcd\u2026" and shorten("abc", 5) == "abc"


def test_cjk_class_names_are_never_drawn_as_boxes(fake_run, caplog, monkeypatch):
    from rsdml.evaluation import report

    run = fake_run(spectrum=False)
    cjk = ["\u98de\u673a\u573a", "\u6d77\u6ee9", "\u68ee\u6797", "\u6cb3\u6d41"]  # airport...
    _retarget_names(run, cjk)
    with caplog.at_level("WARNING"):
        html = write_report(run).read_text()
    assert "Glyph" not in caplog.text  # either a fallback font or no CJK text in the figures
    labels = report._Inputs(run).labels
    if labels.rc:  # a font with the glyphs is installed: the names are drawn with it
        assert not labels.undrawable and "class numbers" not in html
    else:
        assert labels.undrawable == {0, 1, 2, 3}
        assert "class 0 = \u98de\u673a\u573a" in html and "class numbers" in html
    # Without any such font, the figures show class numbers and the caption says so.
    monkeypatch.setattr(report, "_font_covering", lambda chars: None)
    caplog.clear()
    with caplog.at_level("WARNING"):
        html = write_report(run).read_text()
    assert "Glyph" not in caplog.text
    assert "class 1 = \u6d77\u6ee9" in html and "fonts-noto-cjk" in html
    inputs = report._Inputs(run)
    assert inputs.figure_name(1, 20) == "class 1"
    assert inputs.figure_name(1, 20) != inputs.class_name(1) == "\u6d77\u6ee9"  # tables keep it


def test_the_report_of_a_labels_file_run_draws_nothing_it_has_not(fake_run):
    """Issue 25, defect 12: clf_acc drawn flat at 0.0, the header said labeled_fraction 0.2,
    every retrieval example framed red with query "class -1", a t-SNE legend of one entry
    "class -1", and per-class counts that differed from predict's."""
    import numpy as np
    import yaml

    from rsdml.evaluation import report
    from rsdml.evaluation.suite import load_embeddings, write_evaluation
    from rsdml.labelling.predict import predict

    run = fake_run(spectrum=False)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg.update(labels="/somewhere/labels.csv", labeled_fraction=0.2, protocol="transductive")
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    emb = load_embeddings(run / "eval" / "embeddings.npz")
    roles = np.where(emb.roles == "labeled", "labeled", "test")
    labels = np.where(roles == "labeled", emb.labels, -1)
    write_evaluation(run / "eval", emb.embeddings, labels, roles, list(emb.paths),
                     json.loads((run / "class_names.json").read_text()))
    with open(run / "metrics.jsonl", "a") as f:  # what older --labels runs logged
        f.write("\n" + json.dumps({"epoch": 3, "step": 30, "clf_acc": 0.0, "pl_acc": 0.0,
                                   "pl_mask_rate": 0.5}) + "\n")
    html = write_report(run).read_text()
    assert "labeled_fraction" not in html.split("<h2>")[0]
    assert "labels: labels.csv (12 labelled images)" in html
    inputs = report._Inputs(run)
    fig = report._fig_curves(inputs)
    drawn = {line.get_label() for ax in fig.axes for line in ax.lines}
    assert not drawn & {"clf_acc", "pl_acc", "knn_acc"}
    fig = report._fig_retrieval(inputs, 0)
    titles = [ax.get_title() for ax in fig.axes]
    assert not any("class -1" in t for t in titles) and any("(unlabelled)" in t for t in titles)
    colours = {tuple(round(c, 3) for c in sp.get_edgecolor()) for ax in fig.axes
               for sp in ax.spines.values()}
    assert (0.839, 0.153, 0.157, 1.0) not in colours  # no red: nothing to judge by
    fig = report._fig_tsne(inputs, 0)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "class -1" not in legend and len(legend) > 1
    # the per-class counts are predict's
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    names = metrics["class_names"]
    lab = {str(p): names[int(y)] for p, y, r in zip(emb.paths, labels, roles) if r == "labeled"}
    pred = predict(emb.embeddings, [str(p) for p in emb.paths], lab)
    counts = [int((pred.predicted == pred.classes.index(c)).sum()) if c in pred.classes else 0
              for c in names]
    assert metrics["predicted_per_class"] == counts
