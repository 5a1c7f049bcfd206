"""Normalised softmax with an additive angular margin (ArcFace-style), as used by HR-S2DML.

The class weights W live here (not in the model) because they only exist for the labelled loss;
the trainer optimises ``loss.parameters()`` together with the network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Below this value of 1 - cos^2 the sine is taken as 0 and its (infinite) derivative as 0.
_SIN2_FLOOR = 1e-12


def _working_dtype(*tensors: Tensor) -> torch.dtype:
    """float32 for half/bfloat16 inputs (mixed precision), else the promoted input dtype."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return torch.promote_types(dtype, torch.float32)


def _safe_sin(cos: Tensor) -> Tensor:
    """sin(acos(c)) = sqrt(1 - c^2) with a finite gradient at c = +-1 (double-where trick)."""
    sin2 = 1.0 - cos * cos
    ok = sin2 > _SIN2_FLOOR
    return torch.where(ok, torch.sqrt(torch.where(ok, sin2, torch.ones_like(sin2))), 0.0)


def margin_cosines(cos: Tensor, labels: Tensor, margin: float) -> Tensor:
    """(B, C) cosines with the target's replaced by cos(theta_y + m), or by
    cos(theta_y) - m sin(m) where theta_y >= pi - m (there cos(theta + m) would stop
    decreasing in theta); the other classes keep cos(theta_j)."""
    if labels.shape != (cos.shape[0],):
        raise ValueError(f"labels must have shape ({cos.shape[0]},), got {tuple(labels.shape)}")
    m = float(margin)
    cos_y = cos.gather(1, labels.long().view(-1, 1))
    # cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m), sin(theta) >= 0 on [0, pi].
    shifted = cos_y * math.cos(m) - _safe_sin(cos_y) * math.sin(m)
    fallback = cos_y - m * math.sin(m)
    target = torch.where(cos_y > math.cos(math.pi - m), shifted, fallback)
    return cos.scatter(1, labels.long().view(-1, 1), target)


class MarginSoftmaxLoss(nn.Module):
    """Normalised softmax with additive angular margin; owns the class weights W (C x D).

    Target logit cos(theta_y + m), or cos(theta_y) - m*sin(m) where theta_y >= pi - m (there
    cos(theta + m) would stop decreasing in theta); other classes keep cos(theta_j); the loss
    is the mean cross-entropy of logits / temperature. ``margin=0`` is the plain normalised
    softmax of Zhai & Wu (2019).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        margin: float = 0.5,
        temperature: float = 0.05,
    ) -> None:
        super().__init__()
        if num_classes < 1 or embedding_dim < 1:
            raise ValueError(
                f"num_classes ({num_classes}) and embedding_dim ({embedding_dim}) must be >= 1"
            )
        if not 0.0 <= margin < math.pi / 2:
            raise ValueError(f"margin {margin} must be in [0, pi/2) radians")
        if not temperature > 0.0:
            raise ValueError(f"temperature {temperature} must be > 0")
        self.num_classes = int(num_classes)
        self.embedding_dim = int(embedding_dim)
        self.margin = float(margin)
        self.temperature = float(temperature)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"margin={self.margin}, temperature={self.temperature}"
        )

    def cosines(self, emb: Tensor, weight: Tensor | None = None) -> Tensor:
        """(B, C) cosines between embeddings and class weights, margin-free, in [-1, 1]
        (``weight``: other class weights of the same shape, e.g. an EMA teacher's).

        Computed in float32 (or float64) even for half inputs, so unlabelled predictions
        softmax(s * cos) are not quantised under mixed precision.
        """
        if emb.dim() != 2 or emb.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings must have shape (B, {self.embedding_dim}), got {tuple(emb.shape)}"
            )
        weight = self.weight if weight is None else weight
        dtype = _working_dtype(emb, weight)
        with torch.autocast(device_type=emb.device.type, enabled=False):
            e = F.normalize(emb.to(dtype), dim=1)
            w = F.normalize(weight.to(dtype), dim=1)
            return (e @ w.t()).clamp(-1.0, 1.0)

    def logits(self, emb: Tensor, labels: Tensor) -> Tensor:
        """(B, C) margin-applied logits divided by the temperature."""
        out = margin_cosines(self.cosines(emb), labels, self.margin)
        return out / self.temperature

    def forward(self, emb: Tensor, labels: Tensor) -> Tensor:
        """Scalar mean cross-entropy over the batch."""
        return F.cross_entropy(self.logits(emb, labels), labels.long())
