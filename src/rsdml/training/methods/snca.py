"""Scalable neighbourhood component analysis with a memory bank of labelled embeddings."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from rsdml.config import TrainConfig
from rsdml.losses import SNCALoss
from rsdml.training.methods.base import Method
from rsdml.training.methods.params import SNCAParams


class SNCA(Method):
    """Kang et al., TGRS 2020: NCA over a momentum memory of all labelled embeddings."""

    name: ClassVar[str] = "snca"
    params_class: ClassVar[type | None] = SNCAParams

    def __init__(self, cfg: TrainConfig, num_classes: int, labeled_labels: Tensor) -> None:
        super().__init__(cfg, num_classes, labeled_labels)
        self.snca = SNCALoss(
            len(labeled_labels), cfg.embedding_dim, labeled_labels,
            temperature=cfg.temperature, momentum=self.params.snca_momentum,
        )

    needs_start_embeddings: ClassVar[bool] = True

    def on_train_start(self, labeled_embeddings: Tensor) -> None:
        """Fill the memory with real embeddings rather than random unit vectors."""
        self.snca.reset_memory(labeled_embeddings)

    def forward(
        self, emb_l: Tensor, labels_l: Tensor, index_l: Tensor, emb_u: Tensor | None = None
    ) -> dict[str, Tensor]:
        loss = self.snca(emb_l, labels_l, index_l)
        return {"total": loss, "snca": loss}
