"""Scalable neighbourhood component analysis (SNCA; Wu et al., ECCV 2018; for remote sensing,
Kang et al., TGRS 2020) with a memory bank of every labelled embedding.

NCA needs the similarity of each sample to *all* others; a memory bank of (slightly stale)
embeddings makes that one (B x N) product per step instead of a full pass over the data.

Conventions (matching the authors' released code, ``LinearAverage`` / ``NCACrossEntropy``):

- the loss of a step is computed against the memory *before* that step's update;
- the update is m_i <- normalize(momentum * m_i + (1 - momentum) * e_i), i.e. ``momentum``
  weights the OLD memory (0.5 in both papers);
- the memory starts as random unit vectors (seeded by the global torch RNG); call
  :meth:`SNCALoss.reset_memory` with real embeddings of all labelled images to start warm.

Differences from that code, on purpose: embeddings are L2-normalised here (idempotent for the
rsdml model), the softmax is computed with log-sum-exp (no overflow at small temperatures),
samples whose class has no other member in the memory are left out of the mean (the released
code drops their term but still divides by the batch size), and repeated indices in a batch
update their slot once, with the mean of their embeddings (``index_copy_`` is undefined there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SNCALoss(nn.Module):
    """L = mean_i -log sum_{j != i, y_j = y_i} p_ij,
    p_ij = exp(e_i . m_j / sigma) / sum_{k != i} exp(e_i . m_k / sigma).

    ``i`` is the sample's own memory slot (``indices``); memory and its labels are buffers, so
    they follow ``.to(device)`` and are saved in ``state_dict()``.
    """

    memory: Tensor
    labels: Tensor

    def __init__(
        self,
        num_samples: int,
        embedding_dim: int,
        labels: Tensor,
        temperature: float = 0.05,
        momentum: float = 0.5,
    ) -> None:
        super().__init__()
        if num_samples < 1 or embedding_dim < 1:
            raise ValueError(
                f"num_samples ({num_samples}) and embedding_dim ({embedding_dim}) must be >= 1"
            )
        labels = torch.as_tensor(labels)
        if labels.shape != (num_samples,):
            raise ValueError(
                f"labels must have shape ({num_samples},), got {tuple(labels.shape)}"
            )
        if not temperature > 0.0:
            raise ValueError(f"temperature {temperature} must be > 0")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum {momentum} must be in [0, 1)")
        self.num_samples = int(num_samples)
        self.embedding_dim = int(embedding_dim)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.register_buffer(
            "memory", F.normalize(torch.randn(num_samples, embedding_dim), dim=1)
        )
        self.register_buffer("labels", labels.detach().clone().long().cpu())

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, embedding_dim={self.embedding_dim}, "
            f"temperature={self.temperature}, momentum={self.momentum}"
        )

    @torch.no_grad()
    def reset_memory(self, embeddings: Tensor) -> None:
        """Replace the whole memory by (normalised) embeddings of all N labelled images."""
        if embeddings.shape != self.memory.shape:
            raise ValueError(
                f"embeddings must have shape {tuple(self.memory.shape)}, "
                f"got {tuple(embeddings.shape)}"
            )
        self.memory.copy_(F.normalize(embeddings.detach().to(self.memory), dim=1))

    @torch.no_grad()
    def update_memory(self, emb: Tensor, indices: Tensor) -> None:
        """m_i <- normalize(momentum * m_i + (1 - momentum) * e_i) for each i in ``indices``.

        ``e_i`` is the L2-normalised embedding; a slot that appears several times in the batch
        is updated once with the mean of its (normalised) embeddings.
        """
        idx = self._check_indices(indices, emb.shape[0])
        e = F.normalize(emb.detach().to(self.memory.dtype), dim=1)
        slots, inverse = torch.unique(idx, return_inverse=True)
        if slots.numel() != idx.numel():
            summed = torch.zeros(slots.numel(), e.shape[1], dtype=e.dtype, device=e.device)
            summed.index_add_(0, inverse, e)
            counts = torch.bincount(inverse, minlength=slots.numel()).to(e.dtype)
            e, idx = summed / counts.unsqueeze(1), slots
        old = self.memory.index_select(0, idx)
        new = F.normalize(self.momentum * old + (1.0 - self.momentum) * e, dim=1)
        self.memory.index_copy_(0, idx, new)

    def forward(self, emb: Tensor, labels: Tensor, indices: Tensor) -> Tensor:
        """Scalar loss over the batch's samples that have a same-class neighbour in the memory;
        a batch with none returns a zero that still back-propagates (to zero gradients).
        Then updates the memory with this batch (no gradient)."""
        if emb.dim() != 2 or emb.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings must have shape (B, {self.embedding_dim}), got {tuple(emb.shape)}"
            )
        idx = self._check_indices(indices, emb.shape[0])
        y = labels.to(self.labels.device).long()
        if y.shape != idx.shape or not torch.equal(y, self.labels[idx]):
            raise ValueError(
                "labels disagree with the labels stored for these indices: the dataset order "
                "given to SNCALoss must match the indices the loader returns"
            )
        dtype = torch.promote_types(emb.dtype, self.memory.dtype)
        dtype = torch.promote_types(dtype, torch.float32)
        with torch.autocast(device_type=emb.device.type, enabled=False):
            e = F.normalize(emb.to(dtype), dim=1)
            # Snapshot: the update below must not touch the tensor autograd saved.
            bank = self.memory.to(dtype).clone()
            logits = (e @ bank.t()) / self.temperature  # (B, N)
            rows = torch.arange(idx.numel(), device=idx.device)
            not_self = torch.ones_like(logits, dtype=torch.bool)
            not_self[rows, idx] = False
            positive = (y.unsqueeze(1) == self.labels.unsqueeze(0)) & not_self
            valid = positive.any(dim=1)
            if bool(valid.any()):
                lv = logits[valid]
                log_num = lv.masked_fill(~positive[valid], float("-inf")).logsumexp(dim=1)
                log_den = lv.masked_fill(~not_self[valid], float("-inf")).logsumexp(dim=1)
                loss = (log_den - log_num).mean()
            else:
                loss = logits.sum() * 0.0
        self.update_memory(emb, idx)
        return loss

    def _check_indices(self, indices: Tensor, batch_size: int) -> Tensor:
        idx = torch.as_tensor(indices).to(self.memory.device).long()
        if idx.shape != (batch_size,):
            raise ValueError(f"indices must have shape ({batch_size},), got {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise ValueError(f"indices must lie in [0, {self.num_samples})")
        return idx
