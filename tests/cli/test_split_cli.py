"""`rsdml train --split`: the split's contract (protocol, fractions, data folder) is kept or the
run is refused with one line and exit 2, before any run folder is made."""

from __future__ import annotations

import shutil

import pytest
from clihelp import assert_one_line_error, run_cli

import rsdml.training.runner as runner
from rsdml.data.scan import scan_image_folder
from rsdml.data.split import make_split, write_split_csv


def _split_file(data, path, **kw):
    scan = scan_image_folder(data, progress=False)
    split = make_split(scan.paths, scan.labels, scan.classes, data_root=scan.root, **kw)
    write_split_csv(split, path)
    return path


@pytest.fixture
def inductive_split(tiny_scenes, tmp_path):
    return _split_file(tiny_scenes, tmp_path / "ind.csv", protocol="inductive",
                       labeled_fraction=0.25, seed=1)


def test_split_with_another_protocol_names_both(tiny_scenes, inductive_split, tmp_path, capsys):
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--out", str(tmp_path / "r"),
                            "--split", str(inductive_split), "--protocol", "transductive"], capsys)
    assert_one_line_error(code, err, "--protocol inductive", "--protocol is transductive", warnings=True)
    assert not (tmp_path / "r").exists()


def test_split_with_other_fractions_is_refused(tiny_scenes, inductive_split, tmp_path, capsys):
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--out", str(tmp_path / "r"),
                            "--split", str(inductive_split), "--labeled-fraction", "0.5"], capsys)
    assert_one_line_error(code, err, "--labeled-fraction 0.25, but --labeled-fraction is 0.5", warnings=True)


def test_split_brings_its_protocol_and_fractions(tiny_scenes, inductive_split, tmp_path, capsys,
                                                 monkeypatch):
    seen = []
    monkeypatch.setattr(runner, "train", lambda cfg, **kw: seen.append(cfg) or {})
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--split", str(inductive_split)],
                           capsys)
    assert code == 0, err
    assert seen[0].protocol == "inductive" and seen[0].labeled_fraction == 0.25
    # ... and the runner accepts it as consistent
    split = runner.build_split(seen[0])
    assert split.protocol == "inductive" and split.contract.seed == 1


def test_split_from_another_data_folder(tiny_scenes, inductive_split, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_scenes, copy)
    code, _, err = run_cli(["train", "--data", str(copy), "--out", str(tmp_path / "r"),
                            "--split", str(inductive_split)], capsys)
    assert_one_line_error(code, err, "was made from data folder", str(copy), warnings=True)


def test_split_whose_images_are_gone(tiny_scenes, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_scenes, data)
    split = _split_file(data, tmp_path / "s.csv")
    gone = sorted(data.rglob("*.png"))[0]
    gone.unlink()
    code, _, err = run_cli(["train", "--data", str(data), "--out", str(tmp_path / "r"),
                            "--split", str(split)], capsys)
    assert_one_line_error(code, err, "missing under", gone.name, warnings=True)


def test_split_pointing_at_a_binary_file(tiny_scenes, tmp_path, capsys):
    blob = tmp_path / "model.pt"
    blob.write_bytes(bytes(range(256)) * 64)
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--out", str(tmp_path / "r"),
                            "--split", str(blob)], capsys)
    assert_one_line_error(code, err, "is not a split.csv", warnings=True)
    assert "UnicodeDecodeError" not in err
