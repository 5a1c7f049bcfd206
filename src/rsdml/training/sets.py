"""The image sets the training loop and its callbacks are handed: positions in the run's
image list, with labels only where training may see them.

Why a module of their own: the trainer and the evaluation callback both need them, and
neither should import the other for it (that made an import circle).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class LabeledSet:
    index: Tensor  # positions in the inputs (the run's image list)
    labels: Tensor


@dataclass(frozen=True)
class UnlabeledSet:
    """Images whose labels training must never see: this type has no place for them."""

    index: Tensor
