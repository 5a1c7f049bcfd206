"""Within-class retrieval: does an altered copy of an image find its original first?

Why: kNN accuracy, clustering and class-level retrieval all reward embeddings that collapse
each class onto a prototype; a metric-learning embedding should also keep the structure within
a class, so that a mirrored and cropped copy of a scene retrieves that very scene, not just any
scene of its class. The copy of a query (mirrored left-right, its central 87.5 % cropped and
resized back) searches the gallery of all test images; its original's rank is scored.
Definitions: docs/metrics.md ("Copy detection").
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: Queries of the measure: a fixed, seeded sample of the test images (a trunk pass each).
COPY_QUERIES = 500
CROP = 0.875


def altered_copy(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, S, S) -> the same images mirrored left-right, their central ``CROP`` of the
    side cropped and resized back to S (bilinear, antialiased), still uint8."""
    s = images.shape[-1]
    c = max(1, round(s * CROP))
    lo = (s - c) // 2
    x = images.flip(-1)[..., lo:lo + c, lo:lo + c].float()
    x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(images.dtype)


def copy_queries(n_test: int, seed: int, limit: int = COPY_QUERIES) -> np.ndarray:
    """Positions (in the test set) of the measure's queries: all, or a seeded sample."""
    if n_test <= limit:
        return np.arange(n_test)
    return np.sort(np.random.default_rng(seed).choice(n_test, size=limit, replace=False))


def copy_detection(copies: np.ndarray, gallery: np.ndarray, originals: np.ndarray) -> dict[str, float]:
    """``copies`` (Q, D) and ``gallery`` (N, D) unit vectors; ``originals[q]``: the gallery row
    copy q was made from. Returns ``copy_top1`` (the original ranked first) and ``copy_mrr``
    (mean reciprocal rank of the original; ties count against it)."""
    sims = copies.astype(np.float64) @ gallery.astype(np.float64).T
    own = sims[np.arange(len(copies)), originals]
    rank = 1 + (sims > own[:, None]).sum(axis=1)
    return {"copy_top1": float(np.mean(rank == 1)), "copy_mrr": float(np.mean(1.0 / rank))}
