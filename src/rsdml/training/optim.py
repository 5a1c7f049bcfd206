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

Every value is a pure function of the position in training (epochs as a fraction), so a
resumed run gets exactly the rates an uninterrupted one had: nothing to checkpoint.
"""

from __future__ import annotations

import math

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


def _ramp(t: float, length: float) -> float:
    """0 -> 1 linearly over ``length`` (1 at once when length is 0)."""
    if length <= 0:
        return 1.0
    return min(1.0, max(0.0, t / length))


def decay_factor(cfg: TrainConfig, t: float) -> float:
    """The schedule's decay at epoch position ``t``: cosine from the end of the head's warm-up to
    0 at ``cfg.epochs``, or step (``lr_gamma`` every ``lr_step`` whole epochs)."""
    if cfg.schedule == "step":
        return cfg.lr_gamma ** (int(t) // cfg.lr_step)
    start = min(cfg.warmup_epochs, cfg.epochs)
    span = max(cfg.epochs - start, 1e-12)
    progress = min(1.0, max(0.0, (t - start) / span))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def trunk_trains(cfg: TrainConfig, t: float) -> bool:
    """Whether the trunk's weights change at epoch position ``t`` (after the head warm-up)."""
    return not cfg.freeze_backbone and cfg.trunk_lr_factor > 0 and t > cfg.head_warmup_epochs


def lr_factors(cfg: TrainConfig, t: float) -> dict[str, float]:
    """Multiplier of each group's base rate for the step that ends at epoch position ``t``
    (``epoch + (batch + 1) / batches``, so the first step already has a non-zero rate)."""
    decay = decay_factor(cfg, t)
    head = _ramp(t, cfg.warmup_epochs) * decay
    if not trunk_trains(cfg, t):
        trunk = 0.0
    else:  # the trunk's own warm-up starts when the trunk starts training
        trunk = _ramp(t - cfg.head_warmup_epochs, cfg.warmup_epochs) * decay
    return {"trunk": trunk, "trunk_no_decay": trunk, "head": head, "head_no_decay": head}


def set_learning_rates(optimizer: torch.optim.Optimizer, cfg: TrainConfig, t: float) -> None:
    factors = lr_factors(cfg, t)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factors[group["name"]]


def regularizer_weight(cfg: TrainConfig, t: float) -> float:
    """The unlabelled term's weight at epoch position ``t`` (linear ramp-up to bnm_weight)."""
    return cfg.bnm_weight * _ramp(t, cfg.bnm_warmup_epochs)
