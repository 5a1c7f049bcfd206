"""Helpers shared by the consistency-method tests (a plain module on sys.path via pytest's
``pythonpath``, so test folders import it without a ``tests`` package)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rsdml.config import TrainConfig
from rsdml.training.checkpoint import load_checkpoint
from rsdml.training.methods.registry import check_method, create_method
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
