"""Parameter groups, warm-ups, schedules and the unlabelled term's ramp (training/optim.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rsdml.config import TrainConfig
from rsdml.models.embedding import EmbeddingNet
from rsdml.training.optim import (
    lr_factors,
    param_groups,
    regularizer_weight,
    trunk_trains,
)


class _Trunk(torch.nn.Module):
    num_features = 4

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)).mean((2, 3))


def _groups(cfg: TrainConfig) -> dict[str, dict]:
    model = EmbeddingNet(_Trunk(), embedding_dim=3)
    method = torch.nn.Module()
    method.class_weights = torch.nn.Parameter(torch.zeros(5, 3))
    return {g["name"]: g for g in param_groups(model, method, cfg)}


def test_groups_split_trunk_head_and_decay():
    g = _groups(TrainConfig(lr=0.2, trunk_lr_mult=0.1, weight_decay=1e-3))
    # trunk: conv.weight decays; conv.bias, bn.weight, bn.bias do not
    assert [tuple(p.shape) for p in g["trunk"]["params"]] == [(4, 3, 3, 3)]
    assert len(g["trunk_no_decay"]["params"]) == 3
    # head: Linear weight and the class weights decay, the Linear bias does not
    assert sorted(tuple(p.shape) for p in g["head"]["params"]) == [(3, 4), (5, 3)]
    assert [tuple(p.shape) for p in g["head_no_decay"]["params"]] == [(3,)]
    assert g["trunk"]["base_lr"] == pytest.approx(0.02)
    assert g["head"]["base_lr"] == pytest.approx(0.2)
    assert g["trunk"]["weight_decay"] == g["head"]["weight_decay"] == 1e-3
    assert g["trunk_no_decay"]["weight_decay"] == g["head_no_decay"]["weight_decay"] == 0.0


def test_warmups_and_cosine_values():
    cfg = TrainConfig(epochs=10, warmup_epochs=2, head_warmup_epochs=1, schedule="cosine")
    # head: linear warm-up over 2 epochs
    assert lr_factors(cfg, 0.5)["head"] == pytest.approx(0.25)
    assert lr_factors(cfg, 2.0)["head"] == pytest.approx(1.0)
    # trunk: nothing during the head warm-up, then its own 2-epoch ramp from epoch 1
    assert lr_factors(cfg, 1.0)["trunk"] == 0.0 and not trunk_trains(cfg, 1.0)
    assert trunk_trains(cfg, 1.25)
    decay = 0.5 * (1 + math.cos(math.pi * (2.0 - 2) / 8))
    assert lr_factors(cfg, 2.0)["trunk"] == pytest.approx(0.5 * decay)
    # cosine from the end of the warm-up (epoch 2) to 0 at the last epoch
    assert lr_factors(cfg, 6.0)["head"] == pytest.approx(0.5)
    assert lr_factors(cfg, 6.0)["trunk"] == pytest.approx(0.5)
    assert lr_factors(cfg, 10.0)["head"] == pytest.approx(0.0, abs=1e-12)


def test_step_schedule_is_the_papers():
    cfg = TrainConfig(epochs=130, warmup_epochs=0, head_warmup_epochs=0, schedule="step",
                      lr_step=30, lr_gamma=0.5, trunk_lr_mult=1.0)
    assert lr_factors(cfg, 0.01) == {k: 1.0 for k in ("trunk", "trunk_no_decay", "head",
                                                        "head_no_decay")}
    assert lr_factors(cfg, 30.5)["trunk"] == pytest.approx(0.5)
    assert lr_factors(cfg, 95.0)["head"] == pytest.approx(0.125)


def test_regularizer_ramp():
    cfg = TrainConfig(bnm_weight=2.0, bnm_warmup_epochs=4)
    assert regularizer_weight(cfg, 1.0) == pytest.approx(0.5)
    assert regularizer_weight(cfg, 4.0) == regularizer_weight(cfg, 9.0) == pytest.approx(2.0)
    assert regularizer_weight(cfg.replace(bnm_warmup_epochs=0), 0.01) == pytest.approx(2.0)


def test_bn_auto_follows_the_initialisation():
    assert TrainConfig(pretrained="imagenet").bn_frozen
    assert not TrainConfig(pretrained="none").bn_frozen
    assert TrainConfig(pretrained="none", weights="w.pt").bn_frozen
    assert TrainConfig(pretrained="none", bn="frozen").bn_frozen
    assert not TrainConfig(pretrained="imagenet", bn="train").bn_frozen
