"""Runs that meet trouble, in-process: full or read-only disks, bad run folders, crashes.

Each case ends in a one-line :class:`RsdmlError` (the CLI: exit code 2) before anything is
passed off as complete, and whatever checkpoint existed before stays loadable. The real-process
kill and signal tests live in tests/cli/test_robustness_cli.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import rsdml.fsutil as ck  # where the atomic writes (and their open) live
import rsdml.training.run_folder as run_folder
from rsdml.cli.main import main
from rsdml.config import TrainConfig
from rsdml.errors import RsdmlError
from rsdml.fsutil import write_json
from rsdml.training.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from rsdml.training.run_folder import check_writable
from rsdml.training.runner import train
from rsdml.training.trainer import Trainer

TINY = ["--pretrained", "none", "--image-size", "32", "--batch-size", "8",
        "--unlabeled-batch-size", "8", "--labeled-fraction", "0.5", "--epochs", "3",
        "--device", "cpu", "--quiet", "--eval-batch-size", "64", "--no-report"]
STEPS_PER_EPOCH = 3  # 4 classes x 6 labelled images, batch 8


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), pretrained="none", image_size=32, epochs=3,
                batch_size=8, unlabeled_batch_size=8, labeled_fraction=0.5, device="cpu",
                quiet=True, seed=0, eval_batch_size=64, report=False, epoch_unit="labeled")
    base.update(kw)
    return TrainConfig(**base)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    s = load_checkpoint(run / "checkpoints" / "last.pt")
    return {**{f"model.{k}": v for k, v in s["model"].items()},
            **{f"method.{k}": v for k, v in s["method"].items()}}


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def _position(run: Path) -> tuple[int, int, int]:
    s = load_checkpoint(run / "checkpoints" / "last.pt")
    return int(s["epoch"]), int(s["batch_in_epoch"]), int(s["global_step"])


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("rsdml: error:"), err
    errors = [line for line in lines if not line.startswith("rsdml: warning:")]
    assert len(errors) == 1, err
    return lines[-1]


class _DiskFull(Exception):
    pass


def _full_disk_open(fail_name_prefix: str, nth: int = 1):
    """An ``open`` for rsdml.training.checkpoint whose n-th temp file for a name hits ENOSPC
    after half of the bytes (what a full disk does to a write)."""
    count = [0]
    real_open = open

    class HalfThenFull:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(file, mode="r", *args, **kw):
        f = real_open(file, mode, *args, **kw)
        if "w" in mode and Path(file).name.startswith(fail_name_prefix):
            count[0] += 1
            if count[0] == nth:
                return HalfThenFull(f)
        return f

    return fake_open


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def _lean_runs():
    """One torch thread while this module runs (the runs compared all share it; on a shared
    2-core machine two spinning threads made each step ~15x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rsdml.data.synthetic import make_synthetic_scenes

    root = tmp_path_factory.mktemp("scenes")
    make_synthetic_scenes(root, n_classes=4, per_class=12, size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def reference(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 3-epoch run (in this process, so its thread count matches the others)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(_cfg(scenes, run))
    assert _position(run) == (3, 0, 3 * STEPS_PER_EPOCH)
    return run


@pytest.fixture
def run_copy(reference: Path, tmp_path: Path) -> Path:
    """A finished run folder to spoil: hard links (replace a file before changing it)."""
    dst = tmp_path / "copy"
    shutil.copytree(reference, dst, copy_function=os.link)
    return dst


def _replace(path: Path, text: str) -> None:
    path.unlink()
    path.write_text(text)


# --------------------------------------------------------------------------- atomic files
def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    save_checkpoint({"x": torch.arange(3)}, target)
    monkeypatch.setattr(ck, "open", _full_disk_open(".last.pt."), raising=False)
    with pytest.raises(RsdmlError, match=r"could not write checkpoint .*last\.pt \(No space left"):
        save_checkpoint({"x": torch.arange(1000)}, target)
    assert torch.equal(load_checkpoint(target)["x"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_write_json_disk_full_is_a_one_line_error(tmp_path, monkeypatch):
    target = tmp_path / "final_metrics.json"
    write_json(target, {"a": 1})
    monkeypatch.setattr(ck, "open", _full_disk_open(".final_metrics.json."), raising=False)
    with pytest.raises(RsdmlError, match="could not write .*final_metrics.json.*No space left"):
        write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final_metrics.json"]


def test_temp_files_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "last.pt"
    dead = tmp_path / ".last.pt.999999999.tmp"  # above any pid_max: no such process
    live = tmp_path / f".last.pt.{os.getppid()}.tmp"
    other = tmp_path / ".best.pt.999999999.tmp"
    for p in (dead, live, other):
        p.write_bytes(b"half a checkpoint")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert not dead.exists()
    assert live.exists() and other.exists()


def test_damaged_checkpoint_is_a_one_line_error(tmp_path):
    target = tmp_path / "last.pt"
    save_checkpoint({"x": torch.zeros(1000)}, target)
    target.write_bytes(target.read_bytes()[:500])
    with pytest.raises(RsdmlError, match="cannot be read .*damaged"):
        load_checkpoint(target)


# --------------------------------------------------------------------------- output folder
def _disk_with_free(free: int):
    usage = namedtuple("usage", "total used free")
    return lambda path: usage(100 * 2**30, 100 * 2**30 - free, free)


def test_disk_nearly_full_stops_before_training_and_leaves_nothing(scenes, tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setattr(run_folder.shutil, "disk_usage", _disk_with_free(10 * 2**20))
    run = tmp_path / "run"
    code, _, err = run_main(["train", "--data", str(scenes), "--out", str(run), *TINY], capsys)
    assert code == 2
    line = _one_error_line(err)
    assert "only 10 MiB free" in line and str(run) in line and "free some space" in line
    assert not run.exists()  # no half-made run folder to mistake for a run
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_resume_on_a_full_disk_stops_before_touching_the_run(run_copy, monkeypatch, capsys):
    before = {p: p.stat().st_mtime_ns for p in run_copy.rglob("*")}
    monkeypatch.setattr(run_folder.shutil, "disk_usage", _disk_with_free(2**20))
    code, _, err = run_main(["train", "--resume", str(run_copy), "--epochs", "4", "--extend"], capsys)
    assert code == 2 and "only 1 MiB free" in _one_error_line(err)
    assert {p: p.stat().st_mtime_ns for p in run_copy.rglob("*")} == before


def test_check_writable_needs_room_for_a_resnet18_checkpoint(reference, tmp_path, monkeypatch):
    size = (reference / "checkpoints" / "last.pt").stat().st_size
    # an atomic replace holds two last.pt at once, plus best.pt (weights only, ~half)
    assert 2.5 * size <= run_folder.NEED_BYTES
    monkeypatch.setattr(run_folder.shutil, "disk_usage", _disk_with_free(2 * size))
    with pytest.raises(RsdmlError, match="MiB free"):
        check_writable(tmp_path)


def test_out_is_a_file(scenes, tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("precious")
    code, _, err = run_main(["train", "--data", str(scenes), "--out", str(out), *TINY], capsys)
    assert code == 2 and f"--out {out} is a file" in _one_error_line(err)
    assert out.read_text() == "precious"


def test_out_below_a_file(scenes, tmp_path, capsys):
    """What a read-only or impossible location looks like even to root: mkdir fails."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "run"
    code, _, err = run_main(["train", "--data", str(scenes), "--out", str(out), *TINY], capsys)
    line = _one_error_line(err)
    assert code == 2 and f"cannot create run folder {out}" in line and "Not a directory" in line
    assert blocker.read_text() == "x"


def _chmod_blocks_writes(folder: Path) -> bool:
    probe = folder / "probe"
    try:
        probe.write_text("x")
    except PermissionError:
        return True
    probe.unlink()
    return False


@pytest.mark.parametrize("where", ["parent", "out"])
def test_read_only_output_folder(scenes, tmp_path, capsys, where):
    locked = tmp_path / "locked"
    locked.mkdir()
    out = locked / "run" if where == "parent" else locked
    locked.chmod(0o555)
    try:
        if not _chmod_blocks_writes(locked):
            pytest.skip("running as root (or a file system without permissions): chmod does not "
                        "stop writes; test_out_below_a_file covers an unwritable --out")
        code, _, err = run_main(["train", "--data", str(scenes), "--out", str(out), *TINY], capsys)
        line = _one_error_line(err)
        assert code == 2 and str(out) in line and "Permission denied" in line
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


# --------------------------------------------------------------------------- bad --resume
def test_resume_with_data_lacking_the_runs_images_is_refused(run_copy, scenes, tmp_path,
                                                             capsys):
    """--data on resume may point at a moved copy (tests/cli/test_run_folder_cli.py), but a
    folder without the run's images is refused, naming the images and --data."""
    other = tmp_path / "other"
    shutil.copytree(scenes, other)
    gone = sorted(other.rglob("*.png"))[0]
    gone.unlink()
    code, _, err = run_main(["train", "--resume", str(run_copy), "--data", str(other)], capsys)
    line = _one_error_line(err)
    assert code == 2 and "missing under" in line and gone.name in line and "--data" in line


def test_resume_with_hand_edited_invalid_config(run_copy, capsys):
    cfg = (run_copy / "config.yaml").read_text()
    assert "margin: 0.5" in cfg
    _replace(run_copy / "config.yaml", cfg.replace("margin: 0.5", "margin: 3.0"))
    code, _, err = run_main(["train", "--resume", str(run_copy)], capsys)
    assert code == 2 and "--margin 3.0 must be in [0, pi/2)" in _one_error_line(err)


def test_resume_with_class_names_not_matching_the_split(run_copy, capsys):
    names = json.loads((run_copy / "class_names.json").read_text())
    _replace(run_copy / "class_names.json", json.dumps(names[::-1]))
    code, _, err = run_main(["train", "--resume", str(run_copy)], capsys)
    line = _one_error_line(err)
    assert code == 2 and "class names in split.csv and class_names.json differ" in line


@pytest.mark.parametrize("spoil", ["missing", "not json"])
def test_resume_with_class_names_missing_or_garbled(run_copy, capsys, spoil):
    (run_copy / "class_names.json").unlink()
    if spoil == "not json":
        (run_copy / "class_names.json").write_text('["Airport", "Bea')
    code, _, err = run_main(["train", "--resume", str(run_copy)], capsys)
    assert code == 2 and "class_names.json" in _one_error_line(err)


def test_resume_with_split_csv_missing(run_copy, capsys):
    (run_copy / "split.csv").unlink()
    code, _, err = run_main(["train", "--resume", str(run_copy)], capsys)
    line = _one_error_line(err)
    assert code == 2 and "split.csv" in line and "--split" not in line


@pytest.mark.parametrize("what", ["empty folder", "missing folder", "the data folder"])
def test_resume_of_a_folder_that_is_not_a_run(scenes, tmp_path, capsys, what):
    folder = {"empty folder": tmp_path / "empty", "missing folder": tmp_path / "nope",
              "the data folder": scenes}[what]
    if what == "empty folder":
        folder.mkdir()
    code, _, err = run_main(["train", "--resume", str(folder)], capsys)
    line = _one_error_line(err)
    assert code == 2 and f"{folder} is not an rsdml run folder (no config.yaml)" in line
    if what == "missing folder":
        assert not folder.exists()


def test_resume_with_a_damaged_checkpoint(run_copy, capsys):
    last = run_copy / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.unlink()
    last.write_bytes(data[: len(data) // 3])  # e.g. cut by a copy to a full USB disk
    code, _, err = run_main(["train", "--resume", str(run_copy)], capsys)
    line = _one_error_line(err)
    assert code == 2 and "last.pt cannot be read" in line and "damaged" in line


def test_resume_when_images_of_the_split_are_gone(reference, scenes, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(scenes, data)
    run = tmp_path / "run"
    shutil.copytree(reference, run, copy_function=os.link)
    cfg = (run / "config.yaml").read_text().replace(str(scenes), str(data))
    _replace(run / "config.yaml", cfg)
    gone = sorted((data / sorted(os.listdir(data))[0]).iterdir())[0]
    gone.unlink()
    code, _, err = run_main(["train", "--resume", str(run)], capsys)
    line = _one_error_line(err)
    assert code == 2 and "missing" in line and gone.name in line


# --------------------------------------------------------------------------- crashes mid-run
def test_disk_full_at_a_checkpoint_keeps_the_previous_one_and_resumes_exactly(
        scenes, reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(ck, "open", _full_disk_open(".last.pt.", nth=2), raising=False)
    with pytest.raises(RsdmlError, match="could not write checkpoint .*previous checkpoint"):
        train(_cfg(scenes, run))
    assert _position(run) == (1, 0, STEPS_PER_EPOCH)
    assert not list((run / "checkpoints").glob(".*.tmp"))
    assert not (run / "final_metrics.json").exists()
    monkeypatch.undo()
    train(TrainConfig(), resume=run, overrides={})
    _assert_same_weights(reference, run)
    assert json.loads((run / "final_metrics.json").read_text()) == \
        json.loads((reference / "final_metrics.json").read_text())


def test_disk_full_on_the_training_log_is_a_one_line_error(scenes, tmp_path, monkeypatch):
    real_open = open

    def no_space_for_logs(file, mode="r", *args, **kw):
        if "a" in mode and str(file).endswith(".jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kw)

    import rsdml.training.callbacks as callbacks_module  # the logs are callbacks

    monkeypatch.setattr(callbacks_module, "open", no_space_for_logs, raising=False)
    with pytest.raises(RsdmlError, match=r"could not write .*\.jsonl \(No space left"):
        train(_cfg(scenes, tmp_path / "run", epochs=1))


class _Killed(BaseException):
    """Stands in for a SIGKILL: nothing after it runs, no handler sees it."""


def test_resume_of_a_run_stopped_before_its_first_checkpoint(scenes, reference, tmp_path,
                                                             monkeypatch, capsys):
    original = Trainer.train_step

    def die_at_step_2(self, batch, *a):
        if self.global_step == 2:
            raise _Killed
        return original(self, batch, *a)

    monkeypatch.setattr(Trainer, "train_step", die_at_step_2)
    run = tmp_path / "run"
    with pytest.raises(_Killed):
        train(_cfg(scenes, run))
    assert not (run / "checkpoints" / "last.pt").exists()
    monkeypatch.undo()
    code, _, err = run_main(["train", "--resume", str(run)], capsys)
    assert code == 0, err
    _assert_same_weights(reference, run)
