"""Parameter groups, warm-ups, schedules and the unlabelled term's ramp (training/optim.py)."""

from __future__ import annotations

import math

import pytest
import torch

from rsdml.config import TrainConfig
from rsdml.models.embedding import EmbeddingNet
from rsdml.training.optim import Schedule, param_groups


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


def test_warmups_and_cosine_values_in_steps():
    # 10 steps an epoch: head warm-up 1 epoch = 10 steps, linear warm-up 2 epochs = 20 steps
    cfg = TrainConfig(epochs=10, warmup_epochs=2, head_warmup_epochs=1, schedule="cosine")
    sch = Schedule.of(cfg, steps_per_epoch=10)
    assert sch.total == 100 and sch.peak == 30
    # head: linear warm-up over 20 steps, counting the step being run
    assert sch.lr_factors(0)["head"] == pytest.approx(1 / 20)
    assert sch.lr_factors(4)["head"] == pytest.approx(0.25)
    assert sch.lr_factors(19)["head"] == pytest.approx(1.0)
    # trunk: nothing for the first 10 steps, then its own 20-step ramp
    assert sch.lr_factors(9)["trunk"] == 0.0 and not sch.trunk_trains(9)
    assert sch.trunk_trains(10) and sch.lr_factors(10)["trunk"] == pytest.approx(1 / 20)
    # the cosine starts once the trunk has reached its peak (step 30), not before
    assert sch.lr_factors(29)["trunk"] == pytest.approx(1.0)
    assert sch.lr_factors(25)["head"] == pytest.approx(1.0)
    mid = 30 + 35  # halfway from the peak (30) to the end (100)
    assert sch.lr_factors(mid)["head"] == pytest.approx(0.5)
    assert sch.lr_factors(mid)["trunk"] == pytest.approx(0.5)
    # the last step still learns a little; nothing is wasted at rate 0
    last = 0.5 * (1 + math.cos(math.pi * 69 / 70))
    assert sch.lr_factors(99)["head"] == pytest.approx(last) and last > 0


def test_budget_in_steps_and_epoch_units():
    cfg = TrainConfig(epochs=3, steps=250)
    assert Schedule.of(cfg, 74).total == 250  # --steps wins over --epochs
    assert Schedule.of(cfg.replace(steps=None), 74).total == 222


def test_step_schedule_is_the_papers_and_decays_on_time():
    cfg = TrainConfig(epochs=130, warmup_epochs=0, head_warmup_epochs=0, schedule="step",
                      lr_step=30, lr_gamma=0.5, trunk_lr_mult=1.0)
    sch = Schedule.of(cfg, steps_per_epoch=16)
    assert sch.lr_factors(0) == {k: 1.0 for k in ("trunk", "trunk_no_decay", "head",
                                                    "head_no_decay")}
    # the last step of epoch 30 still has the full rate; the first of epoch 31 has half
    assert sch.lr_factors(30 * 16 - 1)["head"] == 1.0
    assert sch.lr_factors(30 * 16)["trunk"] == pytest.approx(0.5)
    assert sch.lr_factors(95 * 16)["head"] == pytest.approx(0.125)


def test_regularizer_ramp():
    cfg = TrainConfig(bnm_weight=2.0, bnm_warmup_epochs=4)
    sch = Schedule.of(cfg, steps_per_epoch=10)
    assert sch.regularizer_weight(9) == pytest.approx(0.5)
    assert sch.regularizer_weight(39) == sch.regularizer_weight(90) == pytest.approx(2.0)
    assert Schedule.of(cfg.replace(bnm_warmup_epochs=0), 10).regularizer_weight(0) == 2.0


def test_bn_auto_follows_the_initialisation():
    assert TrainConfig(pretrained="imagenet").bn_frozen
    assert not TrainConfig(pretrained="none").bn_frozen
    assert TrainConfig(pretrained="none", weights="w.pt").bn_frozen
    assert TrainConfig(pretrained="none", bn="frozen").bn_frozen
    assert not TrainConfig(pretrained="imagenet", bn="train").bn_frozen


@pytest.mark.parametrize("cfg, spe", [(TrainConfig(epochs=2), 7), (TrainConfig(steps=200), 500)])
def test_a_budget_shorter_than_the_warmups_still_trains_the_trunk_and_says_so(cfg, spe):
    """Issue 25, defect 3: --epochs 2 with the default warm-ups (head 3 epochs, rate 2, ramp
    10) never trained the trunk, never decayed the head's rate and ended the ramp at 0.2,
    without a word; so did --steps 200 on a large pool."""
    sch = Schedule.of(cfg, steps_per_epoch=spe)
    last = sch.total - 1
    assert any(sch.lr_factors(s)["trunk"] > 0 for s in range(sch.total))
    assert sch.lr_factors(last)["head"] < 0.1  # the cosine ran
    assert sch.unlabeled_ramp(last) == 1.0
    assert sch.scaled and "did not fit this budget" in sch.describe()


def test_the_schedule_is_described_in_steps():
    sch = Schedule.of(TrainConfig(epochs=30), steps_per_epoch=21)
    assert not sch.scaled
    assert sch.describe() == ("schedule (steps): head warm-up 0-63, trunk warm-up 63-105, "
                              "cosine to 630, ramp to 210")


def test_warmups_a_user_sets_are_kept_even_when_they_fill_the_budget():
    """Only the default warm-ups scale (defect 3); a head warm-up of the whole budget, set on
    purpose, trains only the head, as asked."""
    sch = Schedule.of(TrainConfig(epochs=1, head_warmup_epochs=1.0, warmup_epochs=0.5),
                      steps_per_epoch=10)
    assert not sch.scaled and sch.head_warmup == 10.0
    assert all(sch.lr_factors(s)["trunk"] == 0.0 for s in range(sch.total))
