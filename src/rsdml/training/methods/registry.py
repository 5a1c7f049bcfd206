"""The method registry: adding a method is one module and one line here."""

from __future__ import annotations

from torch import Tensor

from rsdml.config import TrainConfig
from rsdml.training.methods.base import Method
from rsdml.training.methods.margin_softmax import NormSoftmax, NSMMargin
from rsdml.training.methods.regularized import HRS2DML, EntMin, FastBNM
from rsdml.training.methods.snca import SNCA
from rsdml.training.methods.triplet import Triplet

METHODS: dict[str, type[Method]] = {
    "hr-s2dml": HRS2DML,
    "nsm-margin": NSMMargin,
    "normsoftmax": NormSoftmax,
    "triplet": Triplet,
    "snca": SNCA,
    "entmin": EntMin,
    "fbnm": FastBNM,
}


def create_method(cfg: TrainConfig, num_classes: int, labeled_labels: Tensor) -> Method:
    return METHODS[cfg.method](cfg, num_classes, labeled_labels)
