"""The training loop end to end on tiny synthetic data: accuracy, resume, label hygiene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rsdml.config import TrainConfig
from rsdml.data.split import read_split_csv, write_split_csv
from rsdml.errors import RsdmlError, TrainingDivergedError
from rsdml.training.checkpoint import load_checkpoint
from rsdml.training.runner import train
from rsdml.training.trainer import Trainer, TrainingInterrupted


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), backbone="resnet18", pretrained="none", image_size=32,
                epochs=2, batch_size=8, unlabeled_batch_size=8, eval_every=1, lr=0.003,
                # every phase inside two epochs: head warm-up, trunk warm-up, ramp, decay
                head_warmup_epochs=0.5, warmup_epochs=1.0, bnm_warmup_epochs=1.5,
                device="cpu", quiet=True, seed=0, eval_batch_size=64, report=False,
                epoch_unit="labeled", method="hr-s2dml")
    base.update(kw)
    return TrainConfig(**base)


def _params(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    return {**{f"model.{k}": v for k, v in state["model"].items()},
            **{f"method.{k}": v for k, v in state["method"].items()}}


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_writes_its_files_and_beats_chance(tiny_scenes, tmp_path):
    run = tmp_path / "run"
    result = train(_cfg(tiny_scenes, run, epochs=3, batch_size=16, unlabeled_batch_size=16,
                        report=True))
    for name in ("config.yaml", "split.csv", "class_names.json", "metrics.jsonl",
                 "final_metrics.json", "checkpoints/last.pt", "spectrum.json", "eval/report.html",
                 "eval/metrics.json", "eval/embeddings.npz"):
        assert (run / name).is_file(), name
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]  # epoch 0: before training
    for key in ("epoch", "step", "loss_total", "loss_nsm", "loss_hr", "knn_acc", "seconds"):
        assert key in rows[-1]
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["knn_acc"] == pytest.approx(result["knn_acc"])
    assert final["knn_acc"] > 0.25  # 4 classes: above chance
    assert any((run / "tb").iterdir())
    spec = json.loads((run / "spectrum.json").read_text())
    assert len(spec["start"]) == len(spec["end"]) == 4


@pytest.fixture(scope="module")
def straight(tiny_scenes, tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run: the reference of the resume tests."""
    run = tmp_path_factory.mktemp("straight") / "run"
    train(_cfg(tiny_scenes, run, epochs=2, eval_every=2))
    return run


class _FilesOnly:
    """No cache at all: every batch decoded and resized from its files, as a per-sample
    pipeline does (same pixels, same order, same augmentation draws)."""

    def __init__(self, root: str, paths: list[str], size: int) -> None:
        self.root, self.paths, self.size, self.decoded = Path(root), paths, size, 0

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def nbytes(self) -> int:
        return len(self.paths) * 3 * self.size * self.size

    def batch(self, index, out=None):
        from rsdml.data.imageio import read_resized

        self.decoded += len(index)
        rows = [read_resized(self.root / self.paths[i], self.size).copy()
                for i in torch.as_tensor(index).tolist()]
        return torch.stack([torch.from_numpy(r).permute(2, 0, 1).contiguous() for r in rows])


@pytest.mark.parametrize("source", ["mmap", "files"])
def test_training_with_and_without_the_cache_is_identical(tiny_scenes, tmp_path, monkeypatch,
                                                          straight, source):
    """Under one seed, the in-memory cache (``straight``), the memory-mapped cache and no cache
    at all train bit-identical weights and report the same metrics: the cache changes where
    the pixels come from, never which pixels, samples or augmentation draws."""
    import rsdml.training.runner as runner

    run = tmp_path / source
    sources = []
    if source == "files":
        def no_cache(cfg, split, run=None):
            sources.append(_FilesOnly(cfg.data, split.paths, cfg.image_size))
            return sources[-1]

        monkeypatch.setattr(runner, "load_cache", no_cache)
    train(_cfg(tiny_scenes, run, epochs=2, eval_every=2, cache="memory" if source == "files"
               else "mmap"))
    assert source == "mmap" or sum(s.decoded for s in sources) > 64  # really read the files
    _assert_same(_params(straight), _params(run))
    assert ((straight / "final_metrics.json").read_text()
            == (run / "final_metrics.json").read_text())


def test_resume_gives_identical_parameters(tiny_scenes, tmp_path, straight):
    split = tmp_path / "resumed"
    train(_cfg(tiny_scenes, split, epochs=1, eval_every=2))
    # the cosine starts at the trunk's peak (epoch 1.5): the 1-epoch run's steps are the 2-epoch
    # run's, so extending it (as if planned for 2 epochs) gives the uninterrupted weights
    train(TrainConfig(), resume=split, overrides={"epochs": 2}, extend=True)
    _assert_same(_params(straight), _params(split))
    assert "epochs: 2" in (split / "config.yaml").read_text()  # the folder says what it did
    history = [json.loads(l) for l in (split / "config_history.jsonl").read_text().splitlines()]
    rows = [json.loads(l) for l in (split / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["changes"]["epochs"] == [1, 2] and history[-1]["at_step"] == rows[1]["step"]
    rows = [json.loads(l) for l in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # before training, end of the 1-epoch run, end


def test_interrupt_mid_epoch_saves_and_resumes_exactly(tiny_scenes, tmp_path, monkeypatch, straight):
    run = tmp_path / "interrupted"
    original = Trainer.train_step

    def step_then_signal(self, batch, *a):
        out = original(self, batch, *a)
        if self.global_step == 0:  # the first step: epoch 1 has two (12 labelled, batch 8)
            self._stop_signal = 2
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted, match="--resume") as exc:
        train(_cfg(tiny_scenes, run, epochs=2, eval_every=2))
    assert exc.value.exit_code == 130
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (0, 1, 1)
    monkeypatch.setattr(Trainer, "train_step", original)
    train(TrainConfig(), resume=run, overrides={})
    _assert_same(_params(straight), _params(run))


def test_unlabelled_labels_are_never_used(tiny_scenes, tmp_path):
    """Scrambling the labels of the unlabelled (test) images changes no trained weight."""
    first = tmp_path / "a"
    train(_cfg(tiny_scenes, first, epochs=1))
    split = read_split_csv(first / "split.csv")
    rng = np.random.default_rng(0)
    labels = split.labels.copy()
    unl = split.unlabeled_index()
    labels[unl] = rng.permutation(labels[unl])
    changed = type(split)(split.protocol, split.classes, split.paths, labels, split.roles)
    assert (changed.labels != split.labels).any()
    scrambled = tmp_path / "scrambled.csv"
    write_split_csv(changed, scrambled)
    second = tmp_path / "b"
    train(_cfg(tiny_scenes, second, epochs=1, split=str(scrambled)))
    _assert_same(_params(first), _params(second))


def _hr_nan_after(monkeypatch, healthy_steps: int) -> None:
    """The high-rankness term turns NaN after ``healthy_steps`` training steps."""
    from rsdml.training.methods.regularized import HRS2DML

    original, calls = HRS2DML.forward, {"n": 0}

    def nan_later(self, *args, **kw):
        out = original(self, *args, **kw)
        calls["n"] += 1
        if calls["n"] > healthy_steps:
            out["hr"] = out["hr"] * float("nan")
            out["total"] = out["nsm"] + out["hr"]
        return out

    monkeypatch.setattr(HRS2DML, "forward", nan_later)


def _finite_last_checkpoint(run: Path) -> dict:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    return state


def test_nan_loss_stops_with_the_step_and_term_and_keeps_checkpoint(tiny_scenes, tmp_path, monkeypatch):
    _hr_nan_after(monkeypatch, 2)  # epoch 1 has 2 steps (12 labelled, batch 8): fails in epoch 2
    run = tmp_path / "nan"
    with pytest.raises(TrainingDivergedError, match="'hr'.*step.*last good checkpoint is kept"):
        train(_cfg(tiny_scenes, run, epochs=3))
    assert _finite_last_checkpoint(run)["epoch"] >= 1


def test_nan_before_any_checkpoint_names_no_checkpoint(tiny_scenes, tmp_path, monkeypatch):
    _hr_nan_after(monkeypatch, 0)
    run = tmp_path / "nan0"
    with pytest.raises(TrainingDivergedError, match="no checkpoint had been written yet") as e:
        train(_cfg(tiny_scenes, run, epochs=2))
    assert "last.pt" not in str(e.value)
    assert not (run / "checkpoints" / "last.pt").exists()


def test_deferred_loss_read_back_logs_the_same_and_names_the_diverged_step(
        tiny_scenes, tmp_path, monkeypatch):
    """On a GPU losses are read back every few steps: the logged means are unchanged, and a
    divergence still names its own step and leaves the last checkpoint finite."""
    import rsdml.training.trainer as tr

    every_step = tmp_path / "every"
    train(_cfg(tiny_scenes, every_step, epochs=2))
    monkeypatch.setitem(tr._FLUSH_EVERY, "cpu", 3)  # more than the 2 steps of an epoch
    deferred = tmp_path / "deferred"
    train(_cfg(tiny_scenes, deferred, epochs=2))

    def log(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]

    for a, b in zip(log(every_step), log(deferred), strict=True):
        assert a["loss_total"] == b["loss_total"] and a["step"] == b["step"]

    _hr_nan_after(monkeypatch, 3)  # from global step 3, the second step of epoch 2
    run = tmp_path / "nan"
    with pytest.raises(TrainingDivergedError, match="'hr'.*epoch 2, step 3;"):
        train(_cfg(tiny_scenes, run, epochs=3))
    assert _finite_last_checkpoint(run)["epoch"] == 1


def test_resume_refuses_a_new_budget_without_extend(tiny_scenes, tmp_path):
    run = tmp_path / "budget"
    train(_cfg(tiny_scenes, run, epochs=1, eval_every=5))
    for change in ({"epochs": 3}, {"steps": 7}):
        with pytest.raises(RsdmlError, match="--extend"):
            train(TrainConfig(), resume=run, overrides=change)
    assert "epochs: 1" in (run / "config.yaml").read_text()
    assert not (run / "config_history.jsonl").exists()


def test_resume_refuses_a_changed_config(tiny_scenes, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tiny_scenes, run, epochs=1))
    with pytest.raises(RsdmlError, match="--margin"):
        train(TrainConfig(), resume=run, overrides={"margin": 0.3, "epochs": 2}, extend=True)


def test_existing_run_folder_is_not_overwritten(tiny_scenes, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("x")
    with pytest.raises(RsdmlError, match="--resume"):
        train(_cfg(tiny_scenes, run))
    assert (run / "keep.txt").read_text() == "x"


def test_autocast_is_bf16_on_cuda_by_default_and_on_cpu_only_when_asked(monkeypatch):
    import rsdml.training.trainer as tr
    from rsdml.training.trainer import autocast_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for native in (False, True):  # float32 by default even where the CPU has bf16 units
        monkeypatch.setattr(tr, "cpu_has_native_bf16", lambda native=native: native)
        assert autocast_dtype("auto", cpu) is None and autocast_dtype("off", cpu) is None
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("off", cuda) is None and autocast_dtype("bf16", cuda) is torch.bfloat16


def test_the_start_line_says_when_bf16_is_emulated_on_this_cpu(monkeypatch):
    """--amp bf16 on a CPU without AMX / AVX512-BF16 runs, but slower than float32: the run's
    first line says so, and where the CPU has the units it says nothing of the kind."""
    from types import SimpleNamespace

    import rsdml.training.runner as runner

    def line(amp: str, native: bool) -> str:
        monkeypatch.setattr(runner, "cpu_has_native_bf16", lambda: native)
        dtype = torch.bfloat16 if amp == "bf16" else None
        return runner._precision(SimpleNamespace(autocast_dtype=dtype, device=torch.device("cpu"),
                                                 cfg=SimpleNamespace(amp=amp), inputs=None))

    assert "emulated" in line("bf16", False) and "--amp auto" in line("bf16", False)
    assert line("bf16", True) == "bf16 autocast"
    assert line("auto", False) == "float32"
    assert "runs bf16 natively" in line("auto", True)


def _trunk_state(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    return {k: v for k, v in state.items() if k.startswith("trunk.")}


def _initial_trunk(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    from rsdml.models.embedding import build_model

    torch.manual_seed(cfg.seed)  # as build_session does
    return {k: v for k, v in build_model(cfg).state_dict().items() if k.startswith("trunk.")}


def test_head_warmup_keeps_the_trunk_and_its_statistics(tiny_scenes, tmp_path):
    cfg = _cfg(tiny_scenes, tmp_path / "warm", epochs=1, head_warmup_epochs=1.0, bn="train")
    train(cfg)
    before, after = _initial_trunk(cfg), _trunk_state(tmp_path / "warm")
    _assert_same(before, after)  # weights and BatchNorm running statistics alike
    head = load_checkpoint(tmp_path / "warm" / "checkpoints" / "last.pt")["model"]
    torch.manual_seed(0)
    from rsdml.models.embedding import build_model
    fresh = build_model(cfg).state_dict()
    assert not torch.equal(head["head.1.weight"], fresh["head.1.weight"])  # the head trained


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_bn_mode_decides_whether_running_statistics_move(tiny_scenes, tmp_path, bn):
    cfg = _cfg(tiny_scenes, tmp_path / bn, epochs=1, head_warmup_epochs=0.0, bn=bn)
    train(cfg)
    before, after = _initial_trunk(cfg), _trunk_state(tmp_path / bn)
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in before if k.endswith("conv1.weight")]
    assert stats and weights
    assert any(not torch.equal(before[k], after[k]) for k in weights)  # the trunk trained
    moved = [k for k in stats if not torch.equal(before[k], after[k])]
    assert (not moved) if bn == "frozen" else (len(moved) == len(stats))


def test_logged_rates_follow_the_schedule(tiny_scenes, tmp_path):
    from rsdml.training.optim import Schedule

    cfg = _cfg(tiny_scenes, tmp_path / "sched", epochs=3, head_warmup_epochs=1.0,
               warmup_epochs=1.0, bnm_warmup_epochs=2.0, trunk_lr_mult=0.5)
    train(cfg)
    rows = [json.loads(l) for l in (tmp_path / "sched" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    sch = Schedule.of(cfg, steps_per_epoch=2)  # 12 labelled images, batch 8
    for r in rows:
        last = r["step"] - 1  # the rates logged are those of the epoch's last step
        f = sch.lr_factors(last)
        assert r["lr"] == pytest.approx(0.003 * f["head"])
        assert r["trunk_lr"] == pytest.approx(0.003 * 0.5 * f["trunk"])
        assert r["reg_weight"] == pytest.approx(sch.regularizer_weight(last))
    assert rows[0]["trunk_lr"] == 0.0 and rows[1]["trunk_lr"] > 0  # after the head warm-up
    assert rows[0]["reg_weight"] == pytest.approx(0.5)
