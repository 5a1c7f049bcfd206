"""Pseudo-labels from a weak view, learnt on a strong view (FixMatch, Sohn et al. NeurIPS 2020),
FreeMatch's self-adaptive thresholds and its self-adaptive fairness term (Wang et al. ICLR
2023).

Why two pieces: the loss is the same for both methods, only the threshold differs (one number,
or one per class that follows the model's own confidence).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PseudoLabelLoss(nn.Module):
    """L = (1 / B) sum_b 1[max_c q_bc >= tau_(argmax q_b)] CE(logits_b, argmax q_b).

    ``q``: the weak view's class probabilities (targets only, no gradient); ``logits``: the
    strong view's. ``threshold`` is a number or one per class (C,). Returns the loss, the mask
    of accepted rows and the pseudo-labels. The mean runs over all B rows, as FixMatch's does,
    so the term grows as more predictions become confident."""

    def forward(self, logits: Tensor, probs_weak: Tensor,
                threshold: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if logits.shape != probs_weak.shape or logits.dim() != 2:
            raise ValueError(f"logits {tuple(logits.shape)} and weak probabilities "
                             f"{tuple(probs_weak.shape)} must both be (B, C)")
        q = probs_weak.detach()
        conf, target = q.max(dim=1)
        tau = threshold[target] if isinstance(threshold, Tensor) else threshold
        mask = conf >= tau
        low = logits.dtype in (torch.float16, torch.bfloat16)
        ce = F.cross_entropy(logits.float() if low else logits, target, reduction="none")
        return (ce * mask).sum() / max(1, len(ce)), mask, target


class SelfAdaptiveThreshold(nn.Module):
    """FreeMatch's thresholds: tau(c) = tau_global * p(c) / max_c' p(c'), where tau_global is an
    exponential moving average of the batches' mean top confidence and p of their mean class
    probabilities (both start at 1/C). Early, confidences are low and so is the threshold
    (many pseudo-labels); it rises as the model grows confident, and it is lower for the
    classes the model predicts less often. The averages are buffers: saved in checkpoints."""

    def __init__(self, num_classes: int, momentum: float = 0.999) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum} must be in [0, 1)")
        self.momentum = float(momentum)
        self.register_buffer("tau", torch.tensor(1.0 / num_classes))
        self.register_buffer("p", torch.full((num_classes,), 1.0 / num_classes))
        #: moving average of the weak view's top-class histogram (FreeMatch's label_hist)
        self.register_buffer("hist", torch.full((num_classes,), 1.0 / num_classes))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        state_dict.setdefault(prefix + "hist", self.hist.clone())  # saved before it existed
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[arg-type]

    @torch.no_grad()
    def update(self, probs_weak: Tensor) -> None:
        q = probs_weak.detach().float()
        m = self.momentum
        self.tau.mul_(m).add_(q.max(dim=1).values.mean(), alpha=1 - m)
        self.p.mul_(m).add_(q.mean(dim=0), alpha=1 - m)
        top = torch.bincount(q.argmax(dim=1), minlength=len(self.p)).float()
        self.hist.mul_(m).add_(top / top.sum().clamp_min(1), alpha=1 - m)

    def thresholds(self) -> Tensor:
        """(C,) per-class thresholds from the current averages."""
        return self.tau * self.p / self.p.max()


def fairness_loss(logits_s: Tensor, mask: Tensor, p_model: Tensor, label_hist: Tensor) -> Tensor:
    """FreeMatch's self-adaptive fairness term, as USB computes it (``entropy_loss``):
    sum_c a_c log b_c with a = SumNorm(p_model / label_hist) (the averages of the weak view)
    and b = SumNorm(mean_b p_s / hist_s) over the accepted rows' strong-view probabilities
    p_s (hist_s their top-class histogram; a class absent from it gets 0). Minimised, it
    pushes the accepted predictions' mean away from the classes the model already favours.
    0 when no row is accepted."""
    if not bool(mask.any()):
        return logits_s.sum() * 0.0
    x = logits_s[mask]
    prob_s = (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x).softmax(dim=1)
    c = prob_s.shape[1]
    hist_s = torch.bincount(prob_s.argmax(dim=1), minlength=c).to(prob_s.dtype)
    hist_s = hist_s / hist_s.sum()

    def inverse(x: Tensor) -> Tensor:  # 1/x, 0 where x is 0
        return torch.where(x > 0, 1.0 / x.clamp_min(1e-30), torch.zeros_like(x)).detach()

    a = p_model.to(prob_s.dtype) * inverse(label_hist.to(prob_s.dtype))
    a = a / a.sum()
    b = prob_s.mean(dim=0) * inverse(hist_s)
    b = b / b.sum()
    return (a * torch.log(b + 1e-12)).sum()
