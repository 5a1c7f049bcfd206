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


#: The default budget in epochs (TrainConfig.epochs), whose warm-ups were measured on AID.
DEFAULT_EPOCHS = 30
_WARMUP_KEYS = ("head_warmup_epochs", "warmup_epochs", "bnm_warmup_epochs")


def _field_default(name: str) -> object:
    import dataclasses

    return next(f.default for f in dataclasses.fields(TrainConfig) if f.name == name)


def _r(x: float) -> str:
    return f"{x:.0f}" if x >= 10 or x == int(x) else f"{x:.1f}"


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
    #: True when the warm-ups given in epochs did not end within the budget and were scaled
    #: to their share of the default budget (see :meth:`of`)
    scaled: bool = False

    @classmethod
    def of(cls, cfg: TrainConfig, steps_per_epoch: int, total: int | None = None) -> Schedule:
        """The schedule of ``cfg`` in steps. Warm-ups are given in epochs; where one would not
        end within the budget (``--epochs 2`` with the 3-epoch head warm-up: the trunk would
        never train, the rate never decay, the ramp stop at 0.2), every warm-up becomes the
        share of the budget it has of the default budget (30 epochs: head 10 %, rate 6.7 %,
        ramp 33 %, the proportions measured on AID in docs/results.md), and ``scaled`` says
        so (the console prints it at the start)."""
        spe = max(1, int(steps_per_epoch))
        trunk = (not cfg.freeze_backbone or cfg.train_stages > 0) and cfg.trunk_lr_factor > 0
        n = int(total if total is not None else total_steps(cfg, spe))
        head = cfg.head_warmup_epochs * spe if trunk else 0.0
        warmup, ramp = cfg.warmup_epochs * spe, cfg.bnm_warmup_epochs * spe
        # Only the default warm-ups scale: values a user (or a test) set are kept as given,
        # and the schedule line shows where each phase falls.
        defaults = all(getattr(cfg, k) == _field_default(k) for k in _WARMUP_KEYS)
        scaled = defaults and (head + warmup >= n or ramp > n)
        if scaled:
            per_epoch = n / DEFAULT_EPOCHS  # the budget's steps per default epoch
            head, warmup, ramp = (head / spe * per_epoch, warmup / spe * per_epoch,
                                  ramp / spe * per_epoch)
        return cls(total=n, steps_per_epoch=spe, warmup=warmup, head_warmup=head, ramp=ramp,
                   kind=cfg.schedule, lr_step=max(1, round(cfg.lr_step * spe)),
                   lr_gamma=cfg.lr_gamma, trunk=trunk, reg_weight=cfg.bnm_weight, scaled=scaled)

    def describe(self) -> str:
        """Each phase in steps, on one line (printed once at the start of a run)."""
        parts = []
        if self.trunk and self.head_warmup > 0:
            parts.append(f"head warm-up 0-{_r(self.head_warmup)}")
        if self.warmup > 0:
            start = self.head_warmup if self.trunk else 0.0
            who = "trunk" if self.trunk else "rate"
            parts.append(f"{who} warm-up {_r(start)}-{_r(start + self.warmup)}")
        if self.kind == "step":
            parts.append(f"x{self.lr_gamma:g} every {self.lr_step} to {self.total}")
        else:
            parts.append(f"cosine to {self.total}")
        if self.ramp > 0:
            parts.append(f"ramp to {_r(self.ramp)}")
        line = "schedule (steps): " + ", ".join(parts)
        if not self.trunk:
            line += " (the trunk does not train)"
        if self.scaled:
            line += ("; the warm-ups in epochs did not fit this budget: scaled to their share of "
                     f"a {DEFAULT_EPOCHS}-epoch run (set --head-warmup-epochs, --warmup-epochs "
                     "and --bnm-warmup-epochs to choose)")
        return line

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
