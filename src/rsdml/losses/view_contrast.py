"""Instance discrimination between two views of the same unlabelled images (InfoNCE).

Why: the pseudo-label and high-rankness terms pull every image of a class onto its prototype,
which costs the structure within a class (an altered copy of a scene no longer finds that
scene first: ``rsdml.evaluation.copies``). This term asks each strong view to be nearer its
own weak view than the weak views of the batch's other images, so images stay apart from each
other while their views come together.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ViewContrastLoss(nn.Module):
    """L = (1/B) sum_i -log softmax_j(s_i . w_j / T)_i on unit embeddings ``strong`` (B, D) and
    ``weak`` (B, D); the weak view is the target (no gradient flows into it)."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0")
        self.temperature = float(temperature)

    def forward(self, strong: Tensor, weak: Tensor) -> Tensor:
        if strong.shape != weak.shape or strong.dim() != 2:
            raise ValueError(f"strong {tuple(strong.shape)} and weak {tuple(weak.shape)} "
                             "embeddings must both be (B, D)")
        logits = strong.float() @ weak.detach().float().T / self.temperature
        return F.cross_entropy(logits, torch.arange(len(strong), device=strong.device))
