"""Margin softmax on labelled images plus a regulariser on unlabelled predictions.

HR-S2DML (the paper's method), entropy minimisation and fast BNM differ only in the
regulariser applied to P = softmax(s * cos(theta)) of the unlabelled batch.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from rsdml.config import TrainConfig
from rsdml.losses import BatchNuclearNormLoss, EntropyMinimizationLoss, FastBatchNuclearNormLoss
from rsdml.training.methods.margin_softmax import NSMMargin


class RegularizedSoftmax(NSMMargin):
    """Total = L_NSM(labelled) + lambda * R(P_unlabelled)."""

    uses_unlabeled: ClassVar[bool] = True
    term: ClassVar[str] = "hr"

    def __init__(self, cfg: TrainConfig, num_classes: int, labeled_labels: Tensor) -> None:
        super().__init__(cfg, num_classes, labeled_labels)
        self.regularizer = self.make_regularizer()

    def make_regularizer(self) -> nn.Module:
        raise NotImplementedError

    def forward(
        self, emb_l: Tensor, labels_l: Tensor, index_l: Tensor, emb_u: Tensor | None = None
    ) -> dict[str, Tensor]:
        if emb_u is None:
            raise ValueError(f"{self.name} needs an unlabelled batch")
        nsm = self.nsm(emb_l, labels_l)
        reg = self.regularizer(self.predict_proba(emb_u))
        return {"total": nsm + self.reg_weight * reg, "nsm": nsm, self.term: reg}


class HRS2DML(RegularizedSoftmax):
    """High-rankness regularised S2DML: maximise the nuclear norm of P (BNM, via SVD)."""

    name: ClassVar[str] = "hr-s2dml"

    def make_regularizer(self) -> nn.Module:
        return BatchNuclearNormLoss()


class FastBNM(RegularizedSoftmax):
    """Fast BNM: top-min(B, C) column norms of P instead of the SVD (Cui et al. 2022)."""

    name: ClassVar[str] = "fbnm"

    def make_regularizer(self) -> nn.Module:
        return FastBatchNuclearNormLoss()


class EntMin(RegularizedSoftmax):
    """Entropy minimisation on unlabelled predictions (confident, but not diverse)."""

    name: ClassVar[str] = "entmin"
    term: ClassVar[str] = "ent"

    def make_regularizer(self) -> nn.Module:
        return EntropyMinimizationLoss()
