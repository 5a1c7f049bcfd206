"""Entropy minimisation: the classic semi-supervised regulariser that BNM argues against.

It rewards confident unlabelled predictions but not diverse ones, so a batch that collapses
onto one class scores as well as a batch spread over all classes.
"""

from __future__ import annotations

from torch import Tensor, nn

from rsdml.losses.bnm import _prediction_matrix


class EntropyMinimizationLoss(nn.Module):
    """L = mean over rows of -sum_j p_j log p_j (nats); 0 for one-hot rows, log C for uniform.

    ``eps`` only guards log(0): p log max(p, eps) is exactly 0 at p = 0 and its gradient there
    is the finite log(eps) instead of -inf.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"eps {eps} must be > 0")
        self.eps = float(eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"

    def forward(self, probs: Tensor) -> Tensor:
        p = _prediction_matrix(probs, "EntropyMinimizationLoss")
        return -(p * p.clamp_min(self.eps).log()).sum(dim=1).mean()
