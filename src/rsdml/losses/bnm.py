"""Batch nuclear-norm maximisation (BNM, Cui et al., CVPR 2020): the high-rankness term.

A batch prediction matrix P (B x C) with confident rows has a large Frobenius norm; with rows
spread over many classes it also has a high rank. The nuclear norm rewards both at once, so
maximising it pushes unlabelled predictions to be confident *and* diverse, where entropy
minimisation only asks for confidence (and tolerates collapse onto a few classes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _prediction_matrix(probs: Tensor, who: str) -> Tensor:
    """Check a (B, C) prediction matrix; lift half/bfloat16 to float32 for the linear algebra."""
    if probs.dim() != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"{who} expects a non-empty (B, C) matrix, got {tuple(probs.shape)}")
    if probs.dtype in (torch.float16, torch.bfloat16):
        return probs.float()
    return probs


class BatchNuclearNormLoss(nn.Module):
    """L = -mean(singular values of P) = -||P||_* / min(B, C); lower is better."""

    def forward(self, probs: Tensor) -> Tensor:
        p = _prediction_matrix(probs, "BatchNuclearNormLoss")
        # svdvals has no half kernels and is ill-conditioned in low precision: always >= fp32.
        with torch.autocast(device_type=p.device.type, enabled=False):
            return -torch.linalg.svdvals(p).mean()
