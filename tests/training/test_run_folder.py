"""RunFolder: the one way a run folder is made, opened, locked and read back, each refusal one
line that says what is wrong and what to do."""

from __future__ import annotations

import numpy as np
import pytest

from rsdml.config import TrainConfig
from rsdml.data.split import make_split
from rsdml.errors import RsdmlError
from rsdml.training.run_folder import RunFolder


def _one_line(e: pytest.ExceptionInfo[RsdmlError]) -> str:
    text = str(e.value)
    assert "\n" not in text and "; " in text, text  # what is wrong; what to do
    return text


def _split():
    paths = [f"c{c}/{i}.jpg" for c in range(2) for i in range(6)]
    labels = np.repeat(np.arange(2), 6)
    return make_split(paths, labels, ["c0", "c1"], protocol="inductive", labeled_fraction=0.5,
                      val_fraction=0.2, test_fraction=0.2, seed=0)


def _saved_run(tmp_path) -> RunFolder:
    run = RunFolder.create(tmp_path / "run")
    run.write_start(TrainConfig(data=str(tmp_path / "data"), out=str(run.root)), _split())
    return run


def test_create_makes_the_folder_and_refuses_a_non_empty_one(tmp_path):
    run = RunFolder.create(tmp_path / "a" / "run")
    assert run.root.is_dir() and run.created is True
    (run.root / "config.yaml").write_text("{}")
    with pytest.raises(RsdmlError) as e:
        RunFolder.create(run.root)
    line = _one_line(e)
    assert "not empty" in line and f"--resume {run.root}" in line and "another --out" in line

    empty = tmp_path / "empty"
    empty.mkdir()
    assert RunFolder.create(empty).created is False  # an empty folder is used, not made


def test_create_refuses_a_file_and_no_folder(tmp_path):
    file = tmp_path / "f"
    file.write_text("precious")
    with pytest.raises(RsdmlError) as e:
        RunFolder.create(file)
    assert "is a file" in _one_line(e) and file.read_text() == "precious"
    with pytest.raises(RsdmlError, match="add --out"):
        RunFolder.create(None)


@pytest.mark.parametrize("existed", [False, True])
def test_discard_undoes_a_failed_start_only(tmp_path, existed):
    out = tmp_path / "run"
    if existed:
        out.mkdir()
    run = RunFolder.create(out)
    with run.lock():
        (run.checkpoints).mkdir()
        run.last.write_bytes(b"x")
        run.discard()
    assert out.exists() == existed and (not existed or not any(out.iterdir()))
    RunFolder.create(out)  # the retry is not refused

    opened = RunFolder.open(_saved_run(tmp_path / "other").root)
    with pytest.raises(RuntimeError, match="never discarded"):
        opened.discard()
    assert opened.config.is_file()


@pytest.mark.parametrize("what", ["missing", "file", "empty", "no config"])
def test_open_refuses_what_is_not_a_run(tmp_path, what):
    path = tmp_path / "x"
    if what == "file":
        path.write_text("not a folder")
    elif what == "empty":
        path.mkdir()
    elif what == "no config":
        path.mkdir()
        (path / "split.csv").write_text("path,label,role\n")
    with pytest.raises(RsdmlError) as e:
        RunFolder.open(path, "--resume")
    line = _one_line(e)
    assert line.startswith(f"--resume {path} ") and "check the path" in line
    assert {"missing": "does not exist", "file": "is a file", "empty": "(no config.yaml)",
            "no config": "(no config.yaml)"}[what] in line
    assert what != "missing" or not path.exists()


def test_open_and_read_back_what_create_wrote(tmp_path):
    made = _saved_run(tmp_path)
    run = RunFolder.open(made.root)
    assert run == made and run.created is None
    assert run.read_config().data == str(tmp_path / "data")
    split, saved = run.read_split("inductive"), _split()
    assert split.paths == saved.paths and split.classes == saved.classes
    assert np.array_equal(split.labels, saved.labels)
    assert np.array_equal(split.roles, saved.roles)


def test_read_split_names_the_missing_or_damaged_file(tmp_path):
    run = _saved_run(tmp_path)
    run.class_names.write_text('["c1", "c0"]')
    with pytest.raises(RsdmlError) as e:
        run.read_split("inductive", "--resume")
    assert _one_line(e).startswith(f"--resume {run.root}: class names in split.csv")
    run.class_names.unlink()
    with pytest.raises(RsdmlError) as e:
        run.read_split("inductive")
    assert "class_names.json is missing" in _one_line(e)


def test_lock_refuses_a_second_holder_until_released(tmp_path):
    run = _saved_run(tmp_path)
    with run.lock():
        with pytest.raises(RsdmlError) as e:
            RunFolder.open(run.root).lock().acquire()
        line = _one_line(e)
        assert "in use by another rsdml process" in line and "wait until it ends" in line
    with RunFolder.open(run.root).lock() as again:  # released: the next one gets it
        assert again.held


def test_record_config_keeps_what_a_resume_changed(tmp_path):
    run = _saved_run(tmp_path)
    before = run.read_config()
    run.record_config(before, step=3)  # nothing changed: nothing recorded
    assert not run.config_history.exists()
    run.record_config(before.replace(epochs=before.epochs + 5), step=3)
    assert run.read_config().epochs == before.epochs + 5
    assert '"at_step": 3' in run.config_history.read_text()
