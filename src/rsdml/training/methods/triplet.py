"""Triplet margin loss with semi-hard mining on class-balanced batches (pytorch-metric-learning)."""

from __future__ import annotations

from typing import ClassVar

import torch
from pytorch_metric_learning import losses, miners
from torch import Tensor

from rsdml.config import TrainConfig
from rsdml.training.methods.base import Method
from rsdml.training.methods.params import TripletParams

SAMPLES_PER_CLASS = 4


class Triplet(Method):
    name: ClassVar[str] = "triplet"
    params_class: ClassVar[type | None] = TripletParams

    def __init__(self, cfg: TrainConfig, num_classes: int, labeled_labels: Tensor) -> None:
        super().__init__(cfg, num_classes, labeled_labels)
        margin = self.params.triplet_margin
        self.loss = losses.TripletMarginLoss(margin=margin)
        self.miner = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard")

    def forward(
        self, emb_l: Tensor, labels_l: Tensor, index_l: Tensor, emb_u: Tensor | None = None
    ) -> dict[str, Tensor]:
        triplets = self.miner(emb_l, labels_l)
        loss = self.loss(emb_l, labels_l, triplets)
        return {"total": loss, "triplet": loss}

    def labeled_batches(self, labels: Tensor, batch_size: int, generator: torch.Generator) -> list[Tensor]:
        """Class-balanced batches: m images of each of batch_size/m classes.

        The idea of pytorch-metric-learning's MPerClassSampler, drawn from our own seeded
        generator (that sampler uses numpy's global RNG, so a resumed run would not see the same
        batches) and tolerant of few classes (it asserts m * C >= batch_size; here m grows).
        """
        labels = labels.cpu()
        classes = labels.unique()
        m = max(SAMPLES_PER_CLASS, batch_size // len(classes))
        per_batch = max(1, batch_size // m)
        n_batches = max(1, (len(labels) + batch_size - 1) // batch_size)
        pools = {int(c): torch.nonzero(labels == c).flatten() for c in classes}
        batches = []
        for _ in range(n_batches):
            chosen = classes[torch.randperm(len(classes), generator=generator)[:per_batch]]
            parts = []
            for c in chosen.tolist():
                pool = pools[c]
                if len(pool) >= m:
                    pick = pool[torch.randperm(len(pool), generator=generator)[:m]]
                else:
                    pick = pool[torch.randint(len(pool), (m,), generator=generator)]
                parts.append(pick)
            batches.append(torch.cat(parts))
        return batches
