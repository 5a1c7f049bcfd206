"""A run folder as a new user meets it: it works from any folder, follows a moved data set
(`--data`), is left clean by a failed start, refuses one class and a second process."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from clihelp import run_cli

import rsdml.training.runner as runner
from rsdml.errors import RsdmlError
from rsdml.training.run_folder import RunFolder

TINY = ["--pretrained", "none", "--image-size", "32", "--batch-size", "8",
        "--unlabeled-batch-size", "8", "--device", "cpu", "--quiet", "--eval-batch-size", "64",
        "--no-report", "--epochs", "1"]


def _error_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = [l for l in err.strip().splitlines() if not l.startswith("rsdml: warning:")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("rsdml: error: ")
    return lines[0]


def test_relative_data_works_from_any_folder_and_follows_a_moved_copy(tiny_scenes, tmp_path,
                                                                      capsys, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(tiny_scenes, work / "scenes")
    monkeypatch.chdir(work)
    code, _, err = run_cli(["train", "--data", "scenes", "--out", "run", *TINY], capsys)
    assert code == 0, err
    run = work / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"] == str(work / "scenes")  # absolute

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run_cli(["evaluate", str(run), "--quiet"], capsys)
    assert code == 0, err

    moved = tmp_path / "moved-scenes"
    (work / "scenes").rename(moved)
    code, _, err = run_cli(["evaluate", str(run), "--quiet"], capsys)
    line = _error_line(code, err)
    assert "missing under" in line and "pass --data DIR" in line and "--split" not in line

    code, _, err = run_cli(["evaluate", str(run), "--quiet", "--data", str(moved)], capsys)
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["data"] == str(moved)

    moved.rename(tmp_path / "moved-again")
    code, _, err = run_cli(["train", "--resume", str(run), "--epochs", "2", "--extend", "--quiet",
                            "--data", str(tmp_path / "moved-again")], capsys)
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["data"] == str(tmp_path / "moved-again")


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_start_leaves_nothing_that_blocks_the_retry(existing, tiny_scenes, tmp_path,
                                                             capsys, monkeypatch):
    out = tmp_path / "r"
    if existing:
        out.mkdir()

    def offline(cfg, spec=None):
        raise RsdmlError("could not get the ImageNet weights of resnet18 (offline); use --weights")

    monkeypatch.setattr(runner, "build_model", offline)
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--out", str(out), *TINY], capsys)
    assert "ImageNet weights" in _error_line(code, err)
    assert out.exists() == existing and (not existing or not any(out.iterdir()))
    RunFolder.create(out)  # the retry's folder check passes


def test_a_data_set_with_one_class_is_refused(tiny_scenes, tmp_path, capsys):
    data = tmp_path / "one"
    cls = sorted(p for p in tiny_scenes.iterdir() if p.is_dir())[0]
    shutil.copytree(cls, data / cls.name)
    code, _, err = run_cli(["train", "--data", str(data), "--out", str(tmp_path / "r"), *TINY],
                           capsys)
    line = _error_line(code, err)
    assert "one class" in line and "at least 2" in line
    assert not (tmp_path / "r").exists()


def test_a_run_folder_in_use_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    runner.TrainConfig(data=str(tmp_path), out=str(run)).save_yaml(run / "config.yaml")
    with RunFolder(run).lock():
        code, _, err = run_cli(["train", "--resume", str(run), "--epochs", "5", "--extend"], capsys)
        assert "in use by another rsdml process" in _error_line(code, err)
        code, _, err = run_cli(["evaluate", str(run)], capsys)
        assert "in use by another rsdml process" in _error_line(code, err)
    # released: the resume gets past the lock (and stops at the missing split.csv)
    code, _, err = run_cli(["train", "--resume", str(run), "--epochs", "5", "--extend"], capsys)
    assert "split.csv is missing" in _error_line(code, err)


def damaged_jpeg_bytes() -> bytes:
    """A JPEG whose Huffman table is broken: the fast check passes it, decoding fails (as
    tests/data/test_scan.py checks for the same recipe)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    data = bytearray(buf.getvalue())
    at = data.find(b"\xff\xc4") + 5
    data[at : at + 16] = b"\xff" * 16
    return bytes(data)


def test_damaged_jpeg_is_skipped_by_training_and_embed_and_embed_keeps_its_output(
        tiny_scenes, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_scenes, data)
    cls = sorted(p.name for p in data.iterdir())[0]
    (data / cls / "zz-damaged.jpg").write_bytes(damaged_jpeg_bytes())
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", str(data), "--out", str(run), *TINY], capsys)
    assert code == 0, err
    assert "skipping 1 image(s) that cannot be decoded" in err
    assert f"{cls}/zz-damaged.jpg" not in (run / "split.csv").read_text()
    assert (run / "split.csv").read_text().count("\n") == 1 + 64

    code, _, err = run_cli(["train", "--data", str(data), "--out", str(tmp_path / "strict"),
                            "--strict", *TINY], capsys)
    assert "cannot be decoded" in _error_line(code, err)
    assert not (tmp_path / "strict").exists()

    npz = tmp_path / "emb.npz"
    code, _, err = run_cli(["embed", str(data), "--run", str(run), "--out", str(npz), "--quiet"],
                           capsys)
    assert code == 0, err
    assert "skipped 1 image(s) that cannot be decoded" in err
    assert len(np.load(npz)["paths"]) == 64
    first = npz.read_bytes()
    code, _, err = run_cli(["embed", str(data), "--run", str(run), "--out", str(npz), "--quiet"],
                           capsys)
    assert "already exists; add --force" in _error_line(code, err)
    assert npz.read_bytes() == first
    code, _, err = run_cli(["embed", str(data), "--run", str(run), "--out", str(npz), "--quiet",
                            "--force"], capsys)
    assert code == 0, err
