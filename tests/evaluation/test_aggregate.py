"""results.csv -> mean ± std table and plot, checked on hand-written numbers."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from rsdml.errors import RsdmlError
from rsdml.evaluation.aggregate import (
    aggregate,
    best_rows,
    mean_std,
    read_results,
    render_markdown,
    summarize,
    write_results_csv,
)

# Fraction 0.1: a = (0.5, 0.6, 0.7) -> 0.6 ± 0.1; b = (0.8, 0.9) -> 0.85 ± 0.0707; c = 0.3, n = 1.
# ANMRR: a is lowest (best) although its kNN accuracy is not the best.
FAKE_CSV = """\
method,labeled_fraction,seed,knn_acc,map_at_20,anmrr,wall_seconds,run
a,0.1,0,0.5,0.40,0.20,10,runs/a/frac0.1/seed0
a,0.1,1,0.6,0.50,0.30,20,runs/a/frac0.1/seed1
a,0.1,2,0.7,0.60,0.10,30,runs/a/frac0.1/seed2
b,0.1,0,0.8,0.30,0.50,12,runs/b/frac0.1/seed0
b,0.1,1,0.9,0.32,0.60,,runs/b/frac0.1/seed1
c,0.1,0,0.3,0.10,0.90,5,runs/c/frac0.1/seed0
a,0.2,0,0.9,0.70,0.15,11,runs/a/frac0.2/seed0
b,0.2,0,0.7,0.90,0.05,11,runs/b/frac0.2/seed0
"""


@pytest.fixture
def fake_csv(tmp_path: Path) -> Path:
    p = tmp_path / "results.csv"
    p.write_text(FAKE_CSV)
    return p


def _by(summaries, method, frac):
    (s,) = [s for s in summaries if s.keys["method"] == method and s.fraction == frac]
    return s


def test_mean_and_sample_std_match_hand_values(fake_csv):
    summaries = summarize(read_results(fake_csv))
    a, b, c = (_by(summaries, m, 0.1) for m in "abc")
    assert a.n == 3 and b.n == 2 and c.n == 1
    assert a.stats["knn_acc"].mean == pytest.approx(0.6)
    assert a.stats["knn_acc"].std == pytest.approx(0.1)  # ddof = 1
    assert b.stats["knn_acc"].mean == pytest.approx(0.85)
    assert b.stats["knn_acc"].std == pytest.approx(math.sqrt(0.005))
    assert c.stats["knn_acc"].std == 0.0 and c.stats["knn_acc"].n == 1
    assert a.wall_seconds == pytest.approx(20.0)
    assert b.wall_seconds == pytest.approx(12.0)  # the run without a time is left out
    assert [s.fraction for s in summaries] == [0.1, 0.1, 0.1, 0.2, 0.2]


def test_mean_std_agrees_with_statistics_module_and_skips_nan():
    values = [0.71, 0.68, 0.75, 0.73]
    st = mean_std(values + [math.nan])
    assert st.n == 4
    assert st.mean == pytest.approx(statistics.mean(values))
    assert st.std == pytest.approx(statistics.stdev(values))
    empty = mean_std([math.nan])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_markdown_shows_mean_std_n_and_bolds_the_best(fake_csv):
    md = render_markdown(summarize(read_results(fake_csv)))
    sections = md.split("## Labelled fraction ")
    assert len(sections) == 3 and sections[1].startswith("0.1") and sections[2].startswith("0.2")
    t1 = sections[1]
    rows = {line.split("|")[1].strip(): line for line in t1.splitlines() if line.startswith("| ")}
    assert "anmrr ↓" in rows["method"]
    cells_a = [c.strip() for c in rows["a"].split("|")[1:-1]]
    cells_b = [c.strip() for c in rows["b"].split("|")[1:-1]]
    cells_c = [c.strip() for c in rows["c"].split("|")[1:-1]]
    # columns: method, n, knn_acc, map_at_20, anmrr, s/run
    assert cells_a[:3] == ["a", "3", "0.600 ± 0.100"]
    assert cells_b[2] == "**0.850 ± 0.071**"  # best kNN accuracy
    assert cells_a[3] == "**0.500 ± 0.100**"  # best mAP@20
    assert cells_a[4] == "**0.200 ± 0.100**"  # ANMRR: lowest wins
    assert not cells_b[4].startswith("**") and not cells_c[4].startswith("**")
    assert cells_c[1] == "1" and cells_c[2] == "0.300 ± 0.000"
    assert cells_a[5] == "20"
    # fraction 0.2 is judged on its own: b has the better mAP@20 and ANMRR there
    t2 = sections[2]
    rows2 = {line.split("|")[1].strip(): line for line in t2.splitlines() if line.startswith("| ")}
    assert "**0.900 ± 0.000**" in rows2["a"] and "**0.900 ± 0.000**" in rows2["b"]
    assert "**0.050 ± 0.000**" in rows2["b"] and "**" not in rows2["a"].split("|")[5]


def test_ties_bold_every_tied_row_and_a_single_row_is_not_bolded(fake_csv):
    summaries = [s for s in summarize(read_results(fake_csv)) if s.fraction == 0.2]
    assert best_rows(summaries, "knn_acc") == {0}
    assert best_rows(summaries, "anmrr") == {1}
    assert best_rows(summaries[:1], "knn_acc") == set()


def test_other_swept_keys_make_their_own_rows(tmp_path):
    p = tmp_path / "results.csv"
    p.write_text(
        "method,labeled_fraction,seed,lr,knn_acc\n"
        "a,0.1,0,0.1,0.5\na,0.1,1,0.1,0.7\na,0.1,0,0.01,0.2\na,0.1,1,0.01,0.4\n"
    )
    res = read_results(p)
    assert res.key_columns == ["method", "labeled_fraction", "seed", "lr"]
    assert res.metric_columns == ["knn_acc"]
    summaries = summarize(res)
    assert [(s.keys["lr"], round(s.stats["knn_acc"].mean, 6)) for s in summaries] == [
        ("0.1", 0.6), ("0.01", 0.3)]
    md = render_markdown(summaries)
    assert "| method | lr | n | knn_acc | s/run |" in md
    assert "| a | 0.1 | 2 | **0.600 ± 0.141** | — |" in md


def test_csv_round_trip_and_files(tmp_path):
    rows = [
        {"method": "x", "labeled_fraction": 0.05, "seed": 0, "knn_acc": 0.25, "map_at_20": 0.5,
         "wall_seconds": 3.0, "run": "runs/x"},
        {"method": "x", "labeled_fraction": 0.05, "seed": 1, "knn_acc": 0.75, "nmi": 0.1,
         "wall_seconds": None, "run": "runs/y"},
    ]
    csv_path = tmp_path / "results.csv"
    write_results_csv(rows, ["method", "labeled_fraction", "seed"], csv_path)
    header = csv_path.read_text().splitlines()[0]
    assert header == "method,labeled_fraction,seed,knn_acc,map_at_20,nmi,wall_seconds,run"
    res = read_results(csv_path)
    assert res.rows[1]["labeled_fraction"] == 0.05 and math.isnan(res.rows[1]["map_at_20"])
    summaries = aggregate(csv_path, tmp_path / "results.md", tmp_path / "results.png")
    assert summaries[0].stats["knn_acc"].mean == pytest.approx(0.5)
    assert summaries[0].stats["map_at_20"].n == 1
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "0.500 ± 0.354" in (tmp_path / "results.md").read_text()


def test_bad_results_file_is_a_user_error(tmp_path):
    with pytest.raises(RsdmlError, match="does not exist"):
        read_results(tmp_path / "missing.csv")
    p = tmp_path / "results.csv"
    p.write_text("foo,knn_acc\n1,2\n")
    with pytest.raises(RsdmlError, match="method"):
        read_results(p)
