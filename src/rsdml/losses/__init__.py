"""Losses: each a small ``nn.Module`` with a uniform call signature.

Labelled losses take ``(embeddings, labels[, indices])``; unlabelled regularisers take a
``(B, C)`` matrix of softmax predictions. All return a scalar to minimise. Formulas:
``docs/losses.md``.
"""

from rsdml.losses.bnm import BatchNuclearNormLoss
from rsdml.losses.entropy import EntropyMinimizationLoss
from rsdml.losses.fast_bnm import FastBatchNuclearNormLoss
from rsdml.losses.margin_softmax import MarginSoftmaxLoss
from rsdml.losses.snca import SNCALoss
from rsdml.losses.view_contrast import ViewContrastLoss

__all__ = [
    "BatchNuclearNormLoss",
    "EntropyMinimizationLoss",
    "FastBatchNuclearNormLoss",
    "MarginSoftmaxLoss",
    "SNCALoss",
    "ViewContrastLoss",
]
