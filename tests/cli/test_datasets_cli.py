"""`rsdml split NAME_OR_DIR` writes a split that `rsdml train --split` reuses as it is; a data
set name resolves to its downloaded copy."""

from __future__ import annotations

import csv
import json
import shutil

from clihelp import run_cli

TINY = ["--pretrained", "none", "--image-size", "32", "--batch-size", "8",
        "--unlabeled-batch-size", "8", "--device", "cpu", "--quiet", "--eval-batch-size", "64",
        "--no-report", "--epochs", "1"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_split_round_trip_with_train(tiny_scenes, tmp_path, capsys):
    out = tmp_path / "split.csv"
    code, stdout, err = run_cli(["split", str(tiny_scenes), "--labeled-fraction", "0.25",
                                 "--seed", "3", "--protocol", "inductive", "--out", str(out),
                                 "--quiet"], capsys)
    assert code == 0, err
    assert "wrote" in stdout and "labeled 16" in stdout
    contract = json.loads(out.with_suffix(".json").read_text())
    assert contract["seed"] == 3 and contract["labeled_fraction"] == 0.25
    assert contract["protocol"] == "inductive"
    # the same command again refuses to overwrite, and --force makes the same file
    code, _, err = run_cli(["split", str(tiny_scenes), "--out", str(out)], capsys)
    assert code == 2 and "--force" in err
    before = out.read_bytes()
    code, _, err = run_cli(["split", str(tiny_scenes), "--labeled-fraction", "0.25", "--seed",
                            "3", "--protocol", "inductive", "--out", str(out), "--force",
                            "--quiet"], capsys)
    assert code == 0 and out.read_bytes() == before

    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--split", str(out),
                            "--out", str(run), *TINY], capsys)
    assert code == 0, err
    assert _rows(run / "split.csv") == _rows(out)


def test_split_of_a_downloaded_data_set_by_name(tiny_scenes, tmp_path, monkeypatch, capsys):
    root = tmp_path / "datasets"
    shutil.copytree(tiny_scenes, root / "eurosat-rgb")
    (root / "eurosat-rgb" / ".rsdml-dataset.json").write_text("{}")  # as the download leaves it
    monkeypatch.setenv("RSDML_DATA", str(root))
    out = tmp_path / "s.csv"
    code, _, err = run_cli(["split", "eurosat-rgb", "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    contract = json.loads(out.with_suffix(".json").read_text())
    # the registry's recipe: transductive, 20 % labelled, seed 0
    assert (contract["protocol"], contract["labeled_fraction"], contract["seed"]) == (
        "transductive", 0.2, 0)
    assert contract["data_root"] == str((root / "eurosat-rgb").resolve())


def test_split_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RSDML_DATA", str(tmp_path))
    code, _, err = run_cli(["split", "patternnet", "--out", str(tmp_path / "s.csv")], capsys)
    assert code == 2 and "rsdml datasets download patternnet" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["split", str(tmp_path), "--labeled-fraction", "1.5", "--out",
                            str(tmp_path / "s.csv")], capsys)
    assert code == 2 and "--labeled-fraction 1.5" in err
