"""Small helpers on embedding vectors, shared by every stage (retrieval, evaluation, labelling,
training); they live below all of them so that none reaches up into another for them."""

from __future__ import annotations

import numpy as np

from rsdml.errors import RsdmlError


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy with unit rows (zero rows stay zero)."""
    x = np.array(x, dtype=np.float32, order="C", copy=True)
    if x.ndim != 2:
        raise RsdmlError(f"embeddings must be a 2-D array (N x D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise RsdmlError("embeddings contain NaN or infinite values; re-run the evaluation")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x
