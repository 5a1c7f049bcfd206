"""An EMA teacher (mean teacher, Tarvainen & Valpola 2017; USB's ``ema_model``): a moving
average of the student network's weights embeds the weak view whose predictions become the
pseudo-labels, so the targets change more slowly than the student that learns them.

The trainer owns the teacher network; the method keeps the teacher of its classifier (its
class weights) as a buffer, so both are in the checkpoint and a resumed run continues exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EmaTeacher:
    """teacher <- m * teacher + (1 - m) * student after every optimiser step, over the
    student's trainable parameters (frozen ones do not move, so the teacher's copy stays
    equal); the buffers (BatchNorm statistics) of modules in training mode are copied (a
    module in eval mode, such as a frozen trunk, does not change its own)."""

    def __init__(self, student: nn.Module, momentum: float) -> None:
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"EMA momentum must be in (0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.network = copy.deepcopy(student).eval()
        for p in self.network.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        for t, s in zip(self.network.parameters(), student.parameters(), strict=True):
            if s.requires_grad:
                t.lerp_(s.detach(), 1.0 - self.momentum)
        for tm, sm in zip(self.network.modules(), student.modules(), strict=True):
            if sm.training:
                for t, s in zip(tm.buffers(recurse=False), sm.buffers(recurse=False), strict=True):
                    t.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        return self.network.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state)
