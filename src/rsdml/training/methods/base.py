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
    #: The method's own hyper-parameters: a dataclass of :func:`rsdml.config.option` fields
    #: in :mod:`rsdml.training.methods.params` (e.g. ``TripletParams``; there, the CLI reads
    #: them without importing torch). Its fields become flags and YAML keys
    #: (``triplet_margin`` <-> ``--triplet-margin``); the registry checks them.
    params_class: ClassVar[type | None] = None
    #: Whether each step needs an unlabelled batch.
    uses_unlabeled: ClassVar[bool] = False
    #: Whether the unlabelled batch comes as two views (weak, strong): ``forward`` then gets
    #: the strong view's embeddings as ``emb_u`` and the weak view's as ``emb_w``.
    uses_views: ClassVar[bool] = False
    #: Terms of ``forward``'s dict that are statistics (averaged per epoch and logged under
    #: their own name, e.g. ``mask_rate``), not losses.
    stat_terms: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, cfg: TrainConfig, num_classes: int, labeled_labels: Tensor) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.embedding_dim = cfg.embedding_dim
        #: The unlabelled terms' ramp (0 -> 1, ``optim.Schedule.unlabeled_ramp``), set by the
        #: trainer each step; ``reg_weight`` = ramp x --bnm-weight (the high-rankness term's).
        self.ramp = 1.0
        self.reg_weight = float(cfg.bnm_weight)
        #: An instance of :attr:`params_class` with the run's values (None without one).
        self.params: Any = make_params(self.params_class, cfg.method_params)

    def forward(
        self, emb_l: Tensor, labels_l: Tensor, index_l: Tensor, emb_u: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Return the loss terms; key ``"total"`` is the one to minimise."""
        raise NotImplementedError

    @property
    def weak_needs_grad(self) -> bool:
        """Whether the weak view's embeddings need a graph (a loss on them, not only targets)."""
        return False

    def graph_images(self) -> int:
        """Images one training step runs with a graph (what the memory check counts)."""
        from rsdml.training.memory import step_images

        return step_images(self.cfg, self.uses_unlabeled, self.weak_needs_grad)

    def set_ramp(self, ramp: float) -> None:
        self.ramp = float(ramp)
        self.reg_weight = float(self.cfg.bnm_weight) * self.ramp

    def epoch_stats(self) -> dict[str, Any]:
        """Per-epoch statistics for the logs (e.g. the pseudo-label histogram), reset here."""
        return {}

    def pseudo_labels(self, probs: Tensor) -> tuple[Tensor, Tensor] | None:
        """(class, accepted) for each row of class probabilities, with the method's current
        thresholds and without changing any state; None for methods without pseudo-labels.
        The evaluation callback scores them against test labels for the report only."""
        return None

    def on_train_start(self, labeled_embeddings: Tensor) -> None:
        """Called once before the first step with eval-mode embeddings of the labelled set."""

    #: Whether :meth:`on_train_start` needs the labelled embeddings (they cost a pass).
    needs_start_embeddings: ClassVar[bool] = False

    @property
    def needs_propagation(self) -> bool:
        """Whether the trainer refreshes label propagation (``set_propagated``), at the start
        of every ``propagation_every``-th epoch."""
        return False

    @property
    def propagation_every(self) -> int:
        return 1

    @property
    def has_propagated(self) -> bool:
        return False

    @property
    def teacher_momentum(self) -> float:
        """Momentum of the EMA teacher that embeds the weak view (0: none; the trainer keeps
        the teacher network, the method its classifier, ``rsdml.training.teacher``)."""
        return 0.0

    def update_teacher(self) -> None:
        """One EMA step of the method's teacher classifier (after the optimiser's step)."""

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
