"""The interface every training method implements.

A method owns its loss modules and their parameters (class weights, memory banks). The trainer
gives it embeddings of one labelled batch (with labels and their indices in the labelled set)
and, for semi-supervised methods, embeddings of one unlabelled batch - never their labels.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from rsdml.config import TrainConfig


class Method(nn.Module):
    """Base class: subclasses set ``name`` and implement :meth:`forward`."""

    name: ClassVar[str] = ""
    #: Whether each step needs an unlabelled batch.
    uses_unlabeled: ClassVar[bool] = False

    def __init__(self, cfg: TrainConfig, num_classes: int, labeled_labels: Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.embedding_dim = cfg.embedding_dim
        #: Weight of the unlabelled term; the trainer ramps it up (``optim.regularizer_weight``).
        self.reg_weight = float(cfg.bnm_weight)

    def forward(
        self, emb_l: Tensor, labels_l: Tensor, index_l: Tensor, emb_u: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Return the loss terms; key ``"total"`` is the one to minimise."""
        raise NotImplementedError

    def on_train_start(self, labeled_embeddings: Tensor) -> None:
        """Called once before the first step with eval-mode embeddings of the labelled set."""

    #: Whether :meth:`on_train_start` needs the labelled embeddings (they cost a pass).
    needs_start_embeddings: ClassVar[bool] = False

    def predict_proba(self, emb: Tensor) -> Tensor | None:
        """Class probabilities for the rank spectrum plot; None for methods without a classifier."""
        return None

    def labeled_batches(self, labels: Tensor, batch_size: int, generator: torch.Generator) -> list[Tensor]:
        """One epoch of labelled batches (indices into the labelled set): a seeded permutation."""
        order = torch.randperm(len(labels), generator=generator)
        return list(order.split(batch_size))
