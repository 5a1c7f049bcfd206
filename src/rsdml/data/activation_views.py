"""Views of activation maps (B, C, H, W): the eight symmetries of the square and a strong
perturbation, for cached views and partial fine-tuning made at a cut of the trunk
(``rsdml.training.views``). Why a module of its own, below training: the view cache and the
inputs that draw from it both need these, and neither may import the other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def symmetry(x: Tensor, j: int) -> Tensor:
    """Symmetry ``j`` (0-7) of the square on the last two dimensions; 0 is the identity."""
    x = torch.rot90(x, j % 4, dims=(-2, -1)) if j % 4 else x
    return x.flip(-1) if j >= 4 else x


def symmetries(a: Tensor, which: Tensor) -> Tensor:
    """Symmetry ``which[b]`` (0-7) of each sample of ``a`` (B, C, H, W)."""
    out = torch.empty_like(a)
    for j in range(8):
        idx = (which == j).nonzero().squeeze(1)
        if idx.numel():
            out[idx] = symmetry(a[idx], j)
    return out


def strong_activation(a: Tensor, generator: torch.Generator) -> Tensor:
    """A strong view of activation maps ``a`` (B, C, H, W): random symmetry, crop-and-resize,
    Cutout and channel dropout, one draw per sample."""
    b, c, h, w = a.shape
    u = torch.rand(b, 7, generator=generator, device=generator.device).to(a.device)
    out = symmetries(a, (u[:, 0] * 8).long().clamp_(max=7))
    # crop a square of side s in [0.5, 1] at a random place, resized back (affine resampling)
    s = 0.5 + 0.5 * u[:, 1]
    theta = torch.zeros(b, 2, 3, device=a.device, dtype=a.dtype)
    theta[:, 0, 0] = s
    theta[:, 1, 1] = s
    theta[:, 0, 2] = (1 - s) * (2 * u[:, 2] - 1)
    theta[:, 1, 2] = (1 - s) * (2 * u[:, 3] - 1)
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    out = F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Cutout: a square of up to half the side, filled with the per-channel mean
    side = u[:, 4] * 0.5
    ys = (torch.arange(h, device=a.device, dtype=a.dtype) + 0.5) / h
    xs = (torch.arange(w, device=a.device, dtype=a.dtype) + 0.5) / w
    box = (((ys[None] - u[:, 5, None]).abs() <= side[:, None] / 2)[:, :, None]
           & ((xs[None] - u[:, 6, None]).abs() <= side[:, None] / 2)[:, None, :])
    mean = out.mean(dim=(2, 3), keepdim=True)
    out = torch.where(box[:, None], mean, out)
    keep = (torch.rand(b, c, 1, 1, generator=generator, device=generator.device) >= 0.1)
    keep = keep.to(a.device, a.dtype)
    return out * keep / 0.9
