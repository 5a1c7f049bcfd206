"""Collapse diagnostics: numbers that say whether an embedding still separates anything.

A collapsing run (every image mapped to nearly one point) can still show a falling loss; these
numbers show it at once. All are label-free, so they may be computed on any images.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

#: Mean pairwise cosine above which the embeddings count as collapsed: all within ~11 degrees.
COLLAPSE_COSINE = 0.98
#: Effective rank below which they count as collapsed (a handful of directions for 128-D).
COLLAPSE_ERANK = 5.0


def effective_rank(singular_values: np.ndarray | Tensor) -> float:
    """exp(entropy of the normalised singular values) (Roy & Vetterli 2007): 1 for a rank-one
    matrix, the dimension for a perfectly spread one."""
    s = np.asarray(singular_values, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(math.exp(-(p * np.log(p)).sum()))


def embedding_diagnostics(emb: np.ndarray) -> dict[str, float]:
    """Mean per-dimension std, mean pairwise cosine (unit rows) and effective rank of ``emb``."""
    e = torch.as_tensor(np.asarray(emb), dtype=torch.float64)
    n = e.shape[0]
    if n < 2:
        return {}
    total = e.sum(0)
    norms2 = (e * e).sum()
    mean_cos = float(((total @ total) - norms2) / (n * (n - 1)))
    return {
        "emb_std": float(e.std(0).mean()),
        "emb_mean_cosine": mean_cos,
        "emb_effective_rank": effective_rank(torch.linalg.svdvals(e).numpy()),
    }


def prediction_diagnostics(singular_values: list[float]) -> dict[str, float]:
    """Summary of the unlabelled prediction matrix's spectrum (what the method maximises)."""
    s = np.asarray(singular_values, dtype=np.float64)
    if s.size == 0:
        return {}
    return {"pred_nuclear_mean": float(s.mean()), "pred_effective_rank": effective_rank(s)}


def is_collapsed(diag: dict[str, float]) -> bool:
    cos, erank = diag.get("emb_mean_cosine"), diag.get("emb_effective_rank")
    return (cos is not None and cos > COLLAPSE_COSINE) or (
        erank is not None and erank < COLLAPSE_ERANK)


def collapse_warning(diag: dict[str, float], epoch: int) -> str:
    return (
        f"the embeddings are collapsing at epoch {epoch} (mean pairwise cosine "
        f"{diag.get('emb_mean_cosine', float('nan')):.3f}, effective rank "
        f"{diag.get('emb_effective_rank', float('nan')):.1f}): images no longer separate; lower "
        "--lr or --trunk-lr-mult, keep --warmup-epochs and --head-warmup-epochs above 0, and use "
        "--bn frozen with a pretrained trunk"
    )


def mixed_batch(index: Tensor, size: int, seed: int) -> Tensor:
    """A fixed, seeded sample of ``size`` positions of ``index``: split rows are sorted by class,
    so the first ``size`` would be one class and its prediction matrix rank one by design."""
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(index), generator=gen)[: min(size, len(index))]
    return index[pick.sort().values]
