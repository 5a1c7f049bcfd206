"""Real ``python -m rsdml train`` processes that are killed, signalled or fed messy data.

Each run is tiny (4 synthetic classes x 12 images of 32 px, half labelled, batch 8: 3 steps per
epoch, 3 epochs). A hook module (``HOOKS``, run through ``python -c``) lets a test pause the
subprocess at a chosen training step or in the middle of a checkpoint write, so a signal lands
at a known point without timing guesses. Every interrupted run is resumed with the plain CLI
and must end with the same weights (``torch.equal`` on every tensor) as an uninterrupted run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rsdml.cli.main import main
from rsdml.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = ["--pretrained", "none", "--image-size", "32", "--batch-size", "8",
        "--unlabeled-batch-size", "8", "--labeled-fraction", "0.5", "--epochs", "3",
        "--device", "cpu", "--quiet", "--eval-batch-size", "64", "--no-report",
        "--epoch-unit", "labeled", "--method", "hr-s2dml"]
STEPS_PER_EPOCH = 3  # 4 classes x 6 labelled images, batch 8
TIMEOUT = 180.0

# Runs inside the subprocess before the CLI (every subprocess here runs through it).
# RSDML_TEST_PAUSE_STEP=k: before global step k,
# write the marker file and wait (until a SIGINT/SIGTERM is noted, or 60 s).
# RSDML_TEST_PAUSE_SESSION=1: after the run folder is made, before the model and the image
# cache are built (outside the training loop). RSDML_TEST_PAUSE_WRITE=n: the n-th write of
# last.pt in this process puts half of its bytes in
# the temp file, writes the marker and hangs (a SIGKILL "during the checkpoint write").
HOOKS = r"""
import builtins, os, sys, time
from pathlib import Path
marker = os.environ.get("RSDML_TEST_MARKER", "")
if os.environ.get("RSDML_TEST_PAUSE_STEP"):
    from rsdml.training.trainer import Trainer
    _step, _at = Trainer.train_step, int(os.environ["RSDML_TEST_PAUSE_STEP"])
    def train_step(self, batch, *a):
        if self.global_step == _at:
            Path(marker).write_text("step")
            end = time.monotonic() + 60
            while self._stop_signal is None and time.monotonic() < end:
                time.sleep(0.02)
        return _step(self, batch, *a)
    Trainer.train_step = train_step
if os.environ.get("RSDML_TEST_PAUSE_WRITE"):
    import rsdml.fsutil as ck
    _nth, _count = int(os.environ["RSDML_TEST_PAUSE_WRITE"]), [0]
    class _Stall:
        def __init__(self, f): self.f = f
        def __enter__(self): return self
        def __exit__(self, *exc): self.f.close()
        def __getattr__(self, name): return getattr(self.f, name)
        def write(self, data):
            self.f.write(data[: len(data) // 2]); self.f.flush(); os.fsync(self.f.fileno())
            Path(marker).write_text("write")
            time.sleep(120)
    def _open(file, mode="r", *args, **kw):
        f = builtins.open(file, mode, *args, **kw)
        if "w" in mode and Path(file).name.startswith(".last.pt."):
            _count[0] += 1
            if _count[0] == _nth:
                return _Stall(f)
        return f
    ck.open = _open
if os.environ.get("RSDML_TEST_PAUSE_SESSION"):
    import rsdml.training.runner as runner
    _build = runner.build_session
    def build_session(*args, **kw):
        Path(marker).write_text("session")
        time.sleep(60)
        return _build(*args, **kw)
    runner.build_session = build_session
from rsdml.cli.main import main
main()
"""


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rsdml.data.synthetic import make_synthetic_scenes

    root = tmp_path_factory.mktemp("scenes")
    make_synthetic_scenes(root, n_classes=4, per_class=12, size=32, seed=0)
    return root


class Proc:
    """A ``python -m rsdml`` (or hooked) subprocess with its stderr in a file."""

    def __init__(self, args: list[str], workdir: Path, *, pause_step: int | None = None,
                 pause_write: int | None = None, pause_session: bool = False) -> None:
        self.marker = workdir / f"marker-{time.monotonic_ns()}"
        self.errfile = workdir / f"stderr-{time.monotonic_ns()}.txt"
        # One torch thread in every run compared (a thread count is part of what makes CPU
        # results bit-identical; two spinning threads on a busy 2-core machine were ~15x slower).
        env = dict(os.environ, RSDML_TEST_MARKER=str(self.marker), OMP_NUM_THREADS="1")
        if pause_step is not None:
            env["RSDML_TEST_PAUSE_STEP"] = str(pause_step)
        if pause_write is not None:
            env["RSDML_TEST_PAUSE_WRITE"] = str(pause_write)
        if pause_session:
            env["RSDML_TEST_PAUSE_SESSION"] = "1"
        with self.errfile.open("w") as err:
            self.p = subprocess.Popen([sys.executable, "-c", HOOKS, *args], stdout=subprocess.PIPE,
                                      stderr=err, text=True, env=env)

    def wait_marker(self) -> None:
        end = time.monotonic() + TIMEOUT
        while not self.marker.exists():
            if self.p.poll() is not None:
                pytest.fail(f"rsdml exited ({self.p.returncode}) before the pause point:\n"
                            f"{self.errfile.read_text()}")
            if time.monotonic() > end:
                self.p.kill()
                pytest.fail("the pause point was not reached in time")
            time.sleep(0.02)

    def finish(self) -> tuple[int, str, str]:
        try:
            out, _ = self.p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.communicate()
            raise
        return self.p.returncode, out, self.errfile.read_text()


def cli(args: list[str], workdir: Path, **hooks) -> tuple[int, str, str]:
    return Proc(args, workdir, **hooks).finish()


def weights(run: Path) -> dict[str, torch.Tensor]:
    s = load_checkpoint(run / "checkpoints" / "last.pt")
    return {**{f"model.{k}": v for k, v in s["model"].items()},
            **{f"method.{k}": v for k, v in s["method"].items()}}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def position(run: Path) -> tuple[int, int, int]:
    s = load_checkpoint(run / "checkpoints" / "last.pt")
    for v in s["model"].values():
        if v.is_floating_point():
            assert torch.isfinite(v).all()
    return int(s["epoch"]), int(s["batch_in_epoch"]), int(s["global_step"])


def epochs(log: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in log.read_text().splitlines()]


def no_traceback(*texts: str) -> None:
    for t in texts:
        assert "Traceback" not in t, t


@pytest.fixture(scope="module")
def reference(scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    work = tmp_path_factory.mktemp("reference")
    run = work / "run"
    code, out, err = cli(["train", "--data", str(scenes), "--out", str(run), *TINY], work)
    assert code == 0, err
    no_traceback(out, err)
    assert position(run) == (3, 0, 3 * STEPS_PER_EPOCH)
    return run


# --------------------------------------------------------------------------- kills
@pytest.mark.slow
def test_sigkill_during_a_step_and_during_a_checkpoint_write_then_resume(scenes, reference,
                                                                        tmp_path):
    run = tmp_path / "run"
    # 1. SIGKILL in the middle of epoch 2 (global step 4): the epoch-1 checkpoint survives.
    p = Proc(["train", "--data", str(scenes), "--out", str(run), *TINY], tmp_path,
             pause_step=STEPS_PER_EPOCH + 1)
    p.wait_marker()
    p.p.send_signal(signal.SIGKILL)
    code, out, err = p.finish()
    assert code == -signal.SIGKILL
    assert position(run) == (1, 0, STEPS_PER_EPOCH)
    # 2. Resume, and SIGKILL it while it writes the end-of-epoch-2 checkpoint (half written).
    p = Proc(["train", "--resume", str(run)], tmp_path, pause_write=1)
    p.wait_marker()
    temps = list((run / "checkpoints").glob(".last.pt.*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0
    p.p.send_signal(signal.SIGKILL)
    assert p.finish()[0] == -signal.SIGKILL
    assert position(run) == (1, 0, STEPS_PER_EPOCH)  # the previous checkpoint, intact
    # 3. Resume to the end: the same weights as the run nobody stopped.
    code, out, err = cli(["train", "--resume", str(run)], tmp_path)
    assert code == 0, err
    no_traceback(out, err)
    assert "knn_acc" in out
    assert position(run) == (3, 0, 3 * STEPS_PER_EPOCH)
    assert_same_weights(reference, run)
    assert json.loads((run / "final_metrics.json").read_text()) == \
        json.loads((reference / "final_metrics.json").read_text())
    assert not list((run / "checkpoints").glob(".*.tmp")), "the dead writer's temp file is left"
    for log in ("metrics.jsonl", "train_log.jsonl"):  # no row lost or duplicated by the kills
        assert epochs(run / log) == epochs(reference / log), log
    assert epochs(run / "train_log.jsonl") == [1, 2, 3]


# --------------------------------------------------------------------------- signals
def _last_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.slow
def test_sigterm_then_sigint_save_exit_cleanly_and_resume_exactly(scenes, reference, tmp_path):
    run = tmp_path / "run"
    # SIGTERM during step 1 of epoch 1: that step finishes, is saved, exit 143.
    p = Proc(["train", "--data", str(scenes), "--out", str(run), *TINY], tmp_path, pause_step=1)
    p.wait_marker()
    p.p.send_signal(signal.SIGTERM)
    code, out, err = p.finish()
    no_traceback(out, err)
    assert code == 143, err
    last = _last_line(err)
    assert str(run / "checkpoints" / "last.pt") in last and f"--resume {run}" in last, err
    assert position(run) == (0, 2, 2)
    # SIGINT (Ctrl-C) during step 5 of the resumed run (epoch 2): exit 130.
    p = Proc(["train", "--resume", str(run)], tmp_path, pause_step=5)
    p.wait_marker()
    p.p.send_signal(signal.SIGINT)
    code, out, err = p.finish()
    no_traceback(out, err)
    assert code == 130, err
    assert f"--resume {run}" in _last_line(err)
    assert position(run) == (2, 0, 6)  # the position is the step: the end of epoch 2
    code, out, err = cli(["train", "--resume", str(run)], tmp_path)
    assert code == 0, err
    no_traceback(out, err)
    assert_same_weights(reference, run)
    for log in ("metrics.jsonl", "train_log.jsonl"):
        assert epochs(run / log) == epochs(reference / log), log


@pytest.mark.slow
def test_sigterm_outside_the_training_loop_exits_143_with_one_line(scenes, tmp_path):
    run = tmp_path / "run"
    p = Proc(["train", "--data", str(scenes), "--out", str(run), *TINY], tmp_path,
             pause_session=True)
    p.wait_marker()
    p.p.send_signal(signal.SIGTERM)
    code, out, err = p.finish()
    no_traceback(out, err)
    assert code == 143, (code, err)
    assert _last_line(err).startswith("rsdml: ") and "SIGTERM" in _last_line(err)
    assert not (run / "final_metrics.json").exists()


# --------------------------------------------------------------------------- NaN (CLI level)
@pytest.fixture
def one_thread():
    """In-process runs: one torch thread, as in the subprocesses (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return int(exc.value.code or 0), out, err


def test_nan_loss_exit_2_names_step_and_term_keeps_finite_checkpoint(scenes, tmp_path, capsys,
                                                                     monkeypatch, one_thread):
    from rsdml.training.methods.regularized import HRS2DML

    original, calls = HRS2DML.forward, {"n": 0}

    def nan_in_epoch_2(self, *args, **kw):
        out = original(self, *args, **kw)
        calls["n"] += 1
        if calls["n"] == STEPS_PER_EPOCH + 2:  # global step 4, the 2nd step of epoch 2
            out["hr"] = out["hr"] * float("inf")
            out["total"] = out["nsm"] + out["hr"]
        return out

    monkeypatch.setattr(HRS2DML, "forward", nan_in_epoch_2)
    run = tmp_path / "run"
    code, out, err = run_main(["train", "--data", str(scenes), "--out", str(run), *TINY], capsys)
    assert code == 2
    no_traceback(err)
    last = _last_line(err)
    assert last.startswith("rsdml: error:") and "'hr'" in last and "step 4" in last, err
    assert "epoch 2" in last and str(run / "checkpoints" / "last.pt") in last
    assert position(run) == (1, 0, STEPS_PER_EPOCH)  # loadable and finite (checked inside)
    assert not (run / "final_metrics.json").exists()


# --------------------------------------------------------------------------- the messy trial
def _load_trial():
    script = REPO / "scripts" / "messy_trial.py"
    spec = importlib.util.spec_from_file_location("messy_trial", script)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_messy_trial_script_on_a_small_synthetic_set(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for its subprocesses, as above
    trial = _load_trial()
    code = trial.main(["--synthetic", "--classes", "4", "--per-class", "10", "--keep",
                       str(tmp_path / "trial"), "--timeout", str(TIMEOUT)])
    summary = json.loads(capsys.readouterr().out)
    assert summary["checks"] == {k: True for k in summary["checks"]}, summary
    assert code == 0
    assert summary["comparison"]["weights_identical"]
    assert any(e.get("killed") for e in summary["kill_events"])
    # every messy file was either used (odd modes), skipped with a warning or ignored
    warnings = "\n".join(summary["warnings"])
    assert "skipping 2 unusable image(s)" in warnings and "zz_empty_class" in warnings
    split = (tmp_path / "trial" / "run-straight" / "split.csv").read_text()
    assert all(p in split for p in summary["added"]["odd_modes"])
    assert not any(p in split for p in summary["added"]["bad"])
