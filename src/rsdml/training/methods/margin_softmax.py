"""Supervised softmax methods: margin softmax (nsm-margin) and plain normalised softmax."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from rsdml.config import TrainConfig
from rsdml.losses import MarginSoftmaxLoss
from rsdml.training.methods.base import Method


class NSMMargin(Method):
    """Normalised softmax with additive angular margin on labelled images only (the ablation)."""

    name: ClassVar[str] = "nsm-margin"
    margin_override: ClassVar[float | None] = None

    def __init__(self, cfg: TrainConfig, num_classes: int, labeled_labels: Tensor) -> None:
        super().__init__(cfg, num_classes, labeled_labels)
        margin = cfg.margin if self.margin_override is None else self.margin_override
        self.nsm = MarginSoftmaxLoss(num_classes, cfg.embedding_dim, margin, cfg.temperature)

    def forward(
        self, emb_l: Tensor, labels_l: Tensor, index_l: Tensor, emb_u: Tensor | None = None
    ) -> dict[str, Tensor]:
        nsm = self.nsm(emb_l, labels_l)
        return {"total": nsm, "nsm": nsm}

    def predict_proba(self, emb: Tensor) -> Tensor:
        """Margin-free softmax(s * cos): the prediction matrix the high-rankness term acts on."""
        return (self.cfg.logit_scale_u * self.nsm.cosines(emb)).softmax(dim=1)


class NormSoftmax(NSMMargin):
    """Normalised softmax without margin (Zhai & Wu 2019)."""

    name: ClassVar[str] = "normsoftmax"
    margin_override: ClassVar[float | None] = 0.0
