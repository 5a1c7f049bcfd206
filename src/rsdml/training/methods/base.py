"""The interface every training method implements.

A method owns its loss modules and their parameters (class weights, memory banks). The trainer
gives it embeddings of one labelled batch (with labels and their indices in the labelled set)
and, for semi-supervised methods, embeddings of one unlabelled batch - never their labels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rsdml.config import TrainConfig


class Method(nn.Module):
    """Base class: subclasses set ``name`` and implement :meth:`forward`."""

    name: ClassVar[str] = ""
    #: The method's own hyper-parameters: a dataclass of :func:`rsdml.config.option` fields,
    #: next to the method (e.g. ``TripletParams``). Its fields become flags and YAML keys
    #: (``triplet_margin`` <-> ``--triplet-margin``); the registry checks them.
    params_class: ClassVar[type | None] = None
    #: Whether each step needs an unlabelled batch.
    uses_unlabeled: ClassVar[bool] = False

    def __init__(self, cfg: TrainConfig, num_classes: int, labeled_labels: Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.embedding_dim = cfg.embedding_dim
        #: Weight of the unlabelled term; the trainer ramps it up (``optim.regularizer_weight``).
        self.reg_weight = float(cfg.bnm_weight)
        #: An instance of :attr:`params_class` with the run's values (None without one).
        self.params: Any = make_params(self.params_class, cfg.method_params)

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


def make_params(params_class: type | None, values: dict[str, Any]) -> Any:
    """``params_class`` filled from a config's ``method_params`` (its own keys; defaults for the
    rest); None for a method without parameters."""
    if params_class is None:
        return None
    own = {f.name for f in dataclasses.fields(params_class)}
    return params_class(**{k: v for k, v in values.items() if k in own})
