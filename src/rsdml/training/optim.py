"""What fine-tuning needs from the optimiser: parameter groups and a schedule per step.

Why each piece (docs/results.md measures them on AID):

* the trunk learns at ``lr * trunk_lr_mult``: a pretrained trunk is wrecked by the rate a new
  head needs;
* no weight decay on norm and bias parameters (decay there only shrinks scales and shifts);
* head warm-up: for the first ``head_warmup_epochs`` only the head and the class weights train,
  on the fixed trunk, so the trunk's first gradients come from a head that already means
  something (Kumar et al., "Fine-Tuning can Distort Pretrained Features", ICLR 2022);
* a linear warm-up of each group's rate, then cosine or step decay;
* the unlabelled term's weight ramps up from 0, since early predictions are noise.

Every value is a pure function of the step index (:class:`Schedule`), so a resumed run gets
exactly the rates an uninterrupted one had: nothing to checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from rsdml.config import TrainConfig

#: Parameter groups, in this order in the optimiser.
GROUPS = ("trunk", "trunk_no_decay", "head", "head_no_decay")


def _no_decay(name: str, p: nn.Parameter) -> bool:
    """Norm weights and biases: every parameter with fewer than 2 dimensions."""
    return p.ndim < 2 or name.endswith(".bias")


def param_groups(model: nn.Module, method: nn.Module, cfg: TrainConfig) -> list[dict]:
    """SGD parameter groups: trunk / head (head = projection head + the method's parameters,
    e.g. class weights), each split into decayed and not decayed. Each group carries its
    ``base_lr`` and its ``name``; empty groups are kept so the group order never changes."""
    trunk = {id(p) for p in model.trunk.parameters()}  # type: ignore[union-attr]
    groups: dict[str, list[nn.Parameter]] = {g: [] for g in GROUPS}
    named = [(n, p) for n, p in model.named_parameters()]
    named += [(f"method.{n}", p) for n, p in method.named_parameters()]
    for name, p in named:
        if not p.requires_grad:
            continue
        part = "trunk" if id(p) in trunk else "head"
        groups[part + ("_no_decay" if _no_decay(name, p) else "")].append(p)
    out = []
    for g in GROUPS:
        base = cfg.base_lr * (cfg.trunk_lr_factor if g.startswith("trunk") else 1.0)
        decay = 0.0 if g.endswith("no_decay") else cfg.weight_decay
        out.append({"params": groups[g], "name": g, "base_lr": base, "lr": base,
                    "weight_decay": decay})
    return out


def make_optimizer(model: nn.Module, method: nn.Module,
                   cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, method, cfg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.base_lr, betas=(cfg.momentum, 0.999))
    return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=cfg.momentum,
                           nesterov=cfg.momentum > 0)


def _ramp(x: float, length: float) -> float:
    """0 -> 1 linearly over ``length`` (1 at once when length is 0)."""
    if length <= 0:
        return 1.0
    return min(1.0, max(0.0, x / length))


@dataclass(frozen=True)
class Schedule:
    """Every rate of a run as a function of the step index ``s`` (0-based: the step about to
    run), in the manner of timm.scheduler's ``warmup_t`` with ``t_in_epochs=False``. Lengths
    given in epochs are converted once with the run's steps per epoch, so an epoch's meaning
    (``--epoch-unit``) and a budget in steps (``--steps``) change nothing here.

    * warm-ups count the steps done once step ``s`` has run (``s + 1``), so the first step
      already has a non-zero rate;
    * the trunk trains from the first step after ``head_warmup`` steps, with its own linear
      warm-up of ``warmup`` steps;
    * cosine: flat at the peak until every group has reached it (``peak`` = the end of the
      trunk's warm-up, or of the head's when the trunk does not train), then cosine to 0 at
      ``total``; the last step still has a small positive rate;
    * step: times ``lr_gamma`` after every ``lr_step`` steps, counted from step 0 (the step
      that starts epoch ``k * lr_step`` is the first with the lower rate).
    """

    total: int
    steps_per_epoch: int
    warmup: float
    head_warmup: float
    ramp: float
    kind: str
    lr_step: int
    lr_gamma: float
    trunk: bool
    reg_weight: float

    @classmethod
    def of(cls, cfg: TrainConfig, steps_per_epoch: int, total: int | None = None) -> Schedule:
        spe = max(1, int(steps_per_epoch))
        trunk = (not cfg.freeze_backbone or cfg.train_stages > 0) and cfg.trunk_lr_factor > 0
        return cls(total=int(total if total is not None else total_steps(cfg, spe)),
                   steps_per_epoch=spe, warmup=cfg.warmup_epochs * spe,
                   head_warmup=cfg.head_warmup_epochs * spe if trunk else 0.0,
                   ramp=cfg.bnm_warmup_epochs * spe, kind=cfg.schedule,
                   lr_step=max(1, round(cfg.lr_step * spe)), lr_gamma=cfg.lr_gamma,
                   trunk=trunk, reg_weight=cfg.bnm_weight)

    @property
    def peak(self) -> float:
        """The step count at which every group has reached its peak rate."""
        return self.head_warmup + self.warmup if self.trunk else self.warmup

    def decay(self, s: int) -> float:
        if self.kind == "step":
            return self.lr_gamma ** (s // self.lr_step)
        done = s + 1
        if done <= self.peak:
            return 1.0
        span = max(self.total - self.peak, 1e-12)
        progress = min(1.0, max(0.0, (s - self.peak) / span))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def trunk_trains(self, s: int) -> bool:
        return self.trunk and s + 1 > self.head_warmup

    def lr_factors(self, s: int) -> dict[str, float]:
        """Multiplier of each group's base rate at step ``s``."""
        decay = self.decay(s)
        head = _ramp(s + 1, self.warmup) * decay
        trunk = (_ramp(s + 1 - self.head_warmup, self.warmup) * decay
                 if self.trunk_trains(s) else 0.0)
        return {"trunk": trunk, "trunk_no_decay": trunk, "head": head, "head_no_decay": head}

    def unlabeled_ramp(self, s: int) -> float:
        """0 -> 1 over the first ``ramp`` steps: the unlabelled terms' weight multiplier."""
        return _ramp(s + 1, self.ramp)

    def regularizer_weight(self, s: int) -> float:
        return self.reg_weight * self.unlabeled_ramp(s)

    def set_learning_rates(self, optimizer: torch.optim.Optimizer, s: int) -> None:
        factors = self.lr_factors(s)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factors[group["name"]]


def total_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The run's budget in optimiser steps: ``--steps``, else ``--epochs`` epochs."""
    return int(cfg.steps) if cfg.steps is not None else int(cfg.epochs) * max(1, steps_per_epoch)
