"""A trunk cut between two of its stages: the part below runs once per image, the part above
once per view (cached views) or every step (partial fine-tuning).

Why: in fast mode the trunk is frozen, so everything below the cut is a fixed function of the
image. Views made at the cut (the eight symmetries of the square, strong perturbations) cost
only the stages above it: for EfficientNet-Lite0 the last three stages are about a tenth of
the trunk's compute, so twelve views cost about one trunk pass instead of twelve.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from rsdml.errors import RsdmlError


def trunk_stages(trunk: nn.Module) -> list[nn.Module]:
    """The trunk before its global pooling, as a chain of stages (stem first)."""
    if hasattr(trunk, "stages"):
        return list(trunk.stages())
    if isinstance(trunk, torchvision.models.ResNet):
        stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        return [stem, trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4]
    raise RsdmlError(f"the trunk {type(trunk).__name__} cannot be cut into stages; use "
                     "--view-stages 0 (views at the pixels)")


def pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pooling, as every trunk ends."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class TrunkCut:
    """``bottom(x)``: the activation at the cut; ``top(a)``: the pooled features from it.
    ``top_stages`` = 0 puts the cut after the last stage (``top`` only pools); a value at
    least the number of stages puts it at the pixels (``bottom`` is the identity)."""

    def __init__(self, trunk: nn.Module, top_stages: int) -> None:
        stages = trunk_stages(trunk)
        k = max(0, len(stages) - int(top_stages))
        self.lower, self.upper = stages[:k], stages[k:]
        self.at_pixels = k == 0
        self.num_stages = len(stages)

    def bottom(self, x: torch.Tensor) -> torch.Tensor:
        for s in self.lower:
            x = s(x)
        return x

    def top(self, a: torch.Tensor) -> torch.Tensor:
        for s in self.upper:
            a = s(a)
        return pool(a)

    def upper_parameters(self) -> list[nn.Parameter]:
        return [p for s in self.upper for p in s.parameters()]
