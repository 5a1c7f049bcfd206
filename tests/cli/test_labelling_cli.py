"""The labelling loop on the command line: suggest -> (labels file) -> train --labels ->
predict -> suggest --run, and one-line errors for bad labels files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from clihelp import assert_one_line_error, run_cli

TINY = ["--pretrained", "none", "--image-size", "32", "--batch-size", "8",
        "--unlabeled-batch-size", "8", "--device", "cpu", "--quiet", "--eval-batch-size", "64",
        "--epochs", "2"]


def _labels(tmp_path: Path, rows: list[tuple[str, str]], name: str = "labels.csv") -> Path:
    p = tmp_path / name
    p.write_text("path,class\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return p


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


GOOD = [("forest/forest_0000.png", "Forest"), ("forest/forest_0001.png", "Forest"),
        ("lake/lake_0000.png", "Lake"), ("lake/lake_0001.png", "Lake")]


def test_train_from_a_labels_file_records_it_and_reports_without_test_labels(
        tiny_scenes, tmp_path, capsys):
    labels = _labels(tmp_path, GOOD)
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", str(tiny_scenes), "--labels", str(labels),
                              "--out", str(run), *TINY], capsys)
    assert code == 0, err
    assert "no test labels" in out
    contract = json.loads((run / "split.json").read_text())
    assert contract["labels"] == str(labels.resolve()) and len(contract["labels_sha256"]) == 64
    rows = _rows(run / "split.csv")
    assert len(rows) == 64
    labelled = {r["path"]: r["class_name"] for r in rows if r["role"] == "labeled"}
    assert labelled == dict(GOOD)
    assert all(r["label"] == "-1" and r["class_name"] == "" for r in rows if r["role"] == "test")
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["test_labels"] is False and "knn" not in metrics
    assert sum(metrics["predicted_per_class"]) == 60
    report = (run / "eval" / "report.html").read_text()
    assert "No test labels" in report and "predicted (nearest class mean" in report
    code, _, err = run_cli(["train", "--resume", str(run), "--epochs", "3", "--extend", "--quiet"], capsys)
    assert code == 0, err  # the split with unlabelled rows reads back

    preds = tmp_path / "pred.csv"
    code, out, err = run_cli(["predict", str(run), str(tiny_scenes), "--out", str(preds),
                              "--quiet"], capsys)
    assert code == 0, err
    rows = _rows(preds)
    assert len(rows) == 60 and {r["class"] for r in rows} <= {"Forest", "Lake"}
    probs = [float(r["probability"]) for r in rows]
    assert probs == sorted(probs)  # least certain first
    assert not {r["path"] for r in rows} & set(dict(GOOD))

    sugg = tmp_path / "next.csv"
    code, out, err = run_cli(["suggest", str(tiny_scenes), "--run", str(run), "--labels",
                              str(labels), "-n", "5", "--out", str(sugg), "--quiet"], capsys)
    assert code == 0, err
    rows = _rows(sugg)
    assert len(rows) == 5 and {r["strategy"] for r in rows} == {"uncertain"}
    assert not {r["path"] for r in rows} & set(dict(GOOD))


def test_cold_start_suggestions_skip_labelled_images(tiny_scenes, tmp_path, capsys):
    labels = _labels(tmp_path, GOOD)
    out_csv = tmp_path / "s.csv"
    code, out, err = run_cli(["suggest", str(tiny_scenes), "--labels", str(labels), "-n", "8",
                              "--out", str(out_csv), "--quiet", "--device", "cpu"], capsys)
    assert code == 0, err
    rows = _rows(out_csv)
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, 9)]
    assert {r["strategy"] for r in rows} == {"typiclust"}
    paths = [r["path"] for r in rows]
    assert len(set(paths)) == 8 and not set(paths) & set(dict(GOOD))


@pytest.mark.parametrize("rows, needles", [
    ([*GOOD, ("ghost/g.png", "Lake")], ["1 image(s) not in the data folder", "ghost/g.png"]),
    ([*GOOD, ("lake/lake_0000.png", "Lake")], ["line 6", "labelled again (first on line 4)"]),
    ([], ["holds no labels"]),
    ([GOOD[0], GOOD[1]], ["names 1 class(es)", "at least 2"]),
])
def test_bad_labels_files_are_one_line_errors(tiny_scenes, tmp_path, capsys, rows, needles):
    labels = _labels(tmp_path, rows)
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--labels", str(labels),
                            "--out", str(tmp_path / "r"), *TINY], capsys)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "r").exists()


def test_empty_file_and_missing_file(tiny_scenes, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--labels", str(empty),
                            "--out", str(tmp_path / "r"), *TINY], capsys)
    assert_one_line_error(code, err, "holds no labels")
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--labels",
                            str(tmp_path / "nope.csv"), "--out", str(tmp_path / "r"), *TINY], capsys)
    assert_one_line_error(code, err, "nope.csv does not exist")


def test_a_class_with_one_image_is_named_in_one_warning(tiny_scenes, tmp_path, capsys):
    """One labelled image of a class trains (the class weight needs no pair), but it is what a
    typo in a class name looks like: one warning line names it."""
    labels = _labels(tmp_path, [*GOOD, ("farmland/farmland_0000.png", "Farmlnd")])
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--labels", str(labels),
                            "--out", str(tmp_path / "r"), *TINY], capsys)
    assert code == 0, err
    warn = [line for line in err.splitlines() if "one labelled image" in line]
    assert len(warn) == 1 and "Farmlnd" in warn[0] and warn[0].startswith("rsdml: warning:")


def test_labels_with_split_is_refused(tiny_scenes, tmp_path, capsys):
    labels = _labels(tmp_path, GOOD)
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--labels", str(labels),
                            "--split", str(labels), "--out", str(tmp_path / "r"), *TINY], capsys)
    assert_one_line_error(code, err, "--labels makes its own split")


def test_label_page_input_errors_come_before_it_listens(tiny_scenes, tmp_path, capsys):
    code, _, err = run_cli(["label", str(tiny_scenes), "--labels", str(tmp_path / "l.csv"),
                            "--suggestions", str(tmp_path / "none.csv")], capsys)
    assert_one_line_error(code, err, "none.csv does not exist", "rsdml suggest")
    bad = _labels(tmp_path, [*GOOD, GOOD[0]])
    code, _, err = run_cli(["label", str(tiny_scenes), "--labels", str(bad), "--quiet",
                            "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "labelled again")
