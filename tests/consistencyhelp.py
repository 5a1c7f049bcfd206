"""Helpers shared by the consistency-method tests (a plain module on sys.path via pytest's
``pythonpath``, so test folders import it without a ``tests`` package)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rsdml.config import TrainConfig
from rsdml.training.checkpoint import load_checkpoint
from rsdml.training.methods.registry import check_method, create_method
from rsdml.training.runner import train
from rsdml.training.trainer import Trainer, TrainingInterrupted


def _method(name: str, **params):
    cfg = check_method(TrainConfig(method=name, embedding_dim=8).replace(method_params=params))
    torch.manual_seed(0)
    return create_method(cfg, 3, torch.tensor([0, 1, 2, 0]))


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), backbone="resnet18", pretrained="none", image_size=32,
                epochs=2, batch_size=8, unlabeled_batch_size=8, eval_every=1, lr=0.003,
                head_warmup_epochs=0.25, warmup_epochs=0.5, bnm_warmup_epochs=0.5,
                device="cpu", quiet=True, seed=0, eval_batch_size=64, report=False,
                method="hr-match")
    base.update(kw)
    return TrainConfig(**base).replace(method_params={"threshold": 0.3})


def interrupted_at(monkeypatch, stop_at: int, run) -> None:
    """``run()`` stopped by a signal after step ``stop_at`` (its checkpoint saved)."""
    original = Trainer.train_step

    def step_then_signal(self, batch, *a):
        out = original(self, batch, *a)
        if self.global_step == stop_at:
            self._stop_signal = 2
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    with pytest.raises(TrainingInterrupted):
        run()
    monkeypatch.setattr(Trainer, "train_step", original)


def _params(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    return {**{f"model.{k}": v for k, v in state["model"].items()},
            **{f"method.{k}": v for k, v in state["method"].items()}}


def fast_views_cfg(data: Path, out: Path, **params) -> TrainConfig:
    """hr-match in fast mode on a few cached views, with ``params`` as method options."""
    c = _cfg(data, out, method="hr-match", freeze_backbone=True, view_weak=4, view_strong=2,
             view_stages=1)
    return c.replace(method_params={**c.method_params, **params})


def straight_and_resumed(monkeypatch, tmp_path: Path,
                         cfg: Callable[[Path], TrainConfig]) -> tuple[Path, Path, list[dict]]:
    """A run straight through, and the same run stopped in the middle of epoch 2 and resumed:
    (straight, resumed, the straight run's log rows)."""
    straight = tmp_path / "straight"
    train(cfg(straight))
    log = [json.loads(line) for line in (straight / "train_log.jsonl").read_text().splitlines()]
    resumed = tmp_path / "resumed"
    interrupted_at(monkeypatch, log[0]["step"] + 1, lambda: train(cfg(resumed)))
    train(TrainConfig(), resume=resumed, overrides={})
    return straight, resumed, log
