"""Batched training augmentations on uint8 tensors, equal in distribution to the paper's
per-sample PIL pipeline (RandomGrayscale(0.2), ColorJitter(0.4, 0.4, 0.4, 0.4),
RandomHorizontalFlip, ToTensor, Normalize), but run once per batch on the training device.

Why batched: the reference implementation decodes and jitters every image with PIL in every
epoch, which costs more than the model step on a CPU and starves a GPU. Here every sample
still gets its own random parameters (grayscale coin, four jitter factors, the jitter's
random op order, flip coin), all drawn from one ``torch.Generator`` so that a (seed, step)
pair reproduces a batch exactly. The colour maths is torchvision's tensor maths
(``adjust_brightness/contrast/saturation/hue`` on float in [0, 1], clamped after each op).

Spatial ops (flips, 90-degree rotations) permute pixels, and every colour op is either
per-pixel or uses an image-wide mean, so they commute exactly with the colour ops; they are
applied first, on the uint8 input, where they move 4x fewer bytes. The output equals
applying them last, as the paper's list does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Columns of the one uniform draw per sample (fixed, so the stream never depends on flags).
_GRAY, _ORDER, _FACTOR, _HFLIP, _VFLIP, _ROT = 0, slice(1, 5), slice(5, 9), 9, 10, 11
_N_DRAWS = 12
# Op ids of the colour jitter, in torchvision's numbering (fn_idx in ColorJitter.forward).
_BRIGHTNESS, _CONTRAST, _SATURATION, _HUE = 0, 1, 2, 3
_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_CPU_CHUNK_ELEMENTS = 2**18  # at most 1 MiB of float32 per CPU block, so it stays in cache


@functools.lru_cache(maxsize=64)
def _const(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """A small constant tensor, made once per device: building it from a Python list copies
    from pageable host memory, which makes the host wait for the GPU every time."""
    return torch.tensor(values, device=device, dtype=dtype)


def _stats(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    return (_const(IMAGENET_MEAN, device, dtype).view(3, 1, 1),
            _const(IMAGENET_STD, device, dtype).view(3, 1, 1))


def _check_images(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(
            f"expected uint8 images shaped (..., 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )


def _to_unit_float(images_uint8: Tensor) -> Tensor:
    return torch.div(images_uint8, 255)  # one pass; uint8 / int promotes to float32


def _normalize_(x: Tensor) -> Tensor:
    mean, std = _stats(x.device, x.dtype)
    return x.sub_(mean).div_(std)


def normalize(images_uint8: Tensor) -> Tensor:
    """uint8 (..., 3, H, W) -> float32 ImageNet-normalised; the only transform for evaluation.

    Equals torchvision's ``Normalize(IMAGENET_MEAN, IMAGENET_STD)(ToTensor()(img))``.
    """
    _check_images(images_uint8)
    return _normalize_(_to_unit_float(images_uint8))


def _gray(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma, as torchvision's rgb_to_grayscale on float."""
    r, g, b = x.unbind(1)
    return (r * _LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(1)


def _per_sample(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _adjust_hue(x: Tensor, hue: Tensor) -> Tensor:
    """torchvision's adjust_hue (RGB -> HSV, shift H, HSV -> RGB) with one factor per sample.

    HSV -> RGB uses the closed form c_n = V - V*S*clamp(min(k, 4 - k), 0, 1) with
    k = (n + 6H) mod 6, n = 5, 3, 1 for R, G, B, which equals torchvision's piecewise table;
    V*S is max - min, so S is never formed.
    """
    r, g, b = x.unbind(1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    cr = maxc - minc
    crd = torch.where(cr == 0, torch.ones_like(cr), cr)
    rc = (maxc - r).div_(crd)
    gc = (maxc - g).div_(crd)
    bc = (maxc - b).div_(crd)
    # Sextant-valued hue in [-1, 5): red max -> bc - gc, green -> 2 + rc - bc, else 4 + gc - rc.
    h_red = bc - gc
    h_blue = gc.add_(4).sub_(rc)
    h_green = rc.add_(2).sub_(bc)
    h6 = torch.where(maxc == r, h_red, torch.where(maxc == g, h_green, h_blue))
    h6 = h6.add_(_per_sample(hue).squeeze(1) * 6)
    n = _const((5.0, 3.0, 1.0), x.device, x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(h6.unsqueeze(1) + n, 6)
    w = torch.minimum(k, 4 - k).clamp_(0, 1)
    return maxc.unsqueeze(1) - cr.unsqueeze(1) * w


def _blend_ops(x: Tensor, op: Tensor, f: Tensor, active: Tensor) -> Tensor:
    """One jitter slot for a whole batch: each sample's own op among brightness, contrast,
    saturation as torchvision's ``_blend`` (target 0, gray mean, gray image); samples with
    ``active`` false keep x exactly (weight 1)."""
    gray = _gray(x)
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    target = torch.where(
        _per_sample(op == _SATURATION),
        gray,
        torch.where(_per_sample(op == _CONTRAST), mean, torch.zeros_like(mean)),
    )
    w = _per_sample(torch.where(active, f, torch.ones_like(f)))
    return torch.lerp(target.expand_as(x), x, w).clamp_(0, 1)


def _color_jitter_batched(x: Tensor, order: Tensor, factors: Tensor) -> Tensor:
    """Each sample's four jitter ops in its own order, on the whole batch with ``where``.

    ``order[i, k]`` is the op sample i applies at slot k (0 brightness, 1 contrast,
    2 saturation, 3 hue, torchvision's numbering); ``factors[i, op]`` its factor. Every sample
    applies hue exactly once, so the batch runs as: the blend ops before each sample's hue
    (three masked slots), hue once for all, the blend ops after it (three masked slots); a
    masked-out slot leaves a sample exactly unchanged. Six blends and one hue instead of four
    of each, and no data-dependent shapes, hence no host synchronisation on an accelerator.
    """
    is_hue = order == _HUE
    slots = torch.arange(4, device=order.device).expand_as(order)
    pos = (is_hue.long() * slots).sum(1)  # the slot of each sample's hue
    # The three blend ops of each sample in its order (hue sorted last, then dropped).
    blends = order.gather(1, torch.argsort(is_hue.long() * 4 + slots, dim=1)[:, :3])
    for before in (True, False):
        for j in range(3):
            op = blends[:, j]
            f = factors.gather(1, op[:, None]).squeeze(1)
            x = _blend_ops(x, op, f, (j < pos) if before else (j >= pos))
        if before:
            x = _adjust_hue(x, factors[:, _HUE])
    return x


def _color_jitter_group(x: Tensor, order: list[int], factors: Tensor) -> Tensor:
    """The jitter for samples that share one op order: torchvision's maths, contiguous."""
    for op in order:
        f = _per_sample(factors[:, op])
        if op == _HUE:
            x = _adjust_hue(x, factors[:, op])
            continue
        if op == _BRIGHTNESS:
            x = x * f
        else:
            gray = _gray(x)
            target = gray.mean(dim=(1, 2, 3), keepdim=True) if op == _CONTRAST else gray
            x = (x * f).add_(target * (1 - f))
        x = x.clamp_(0, 1)
    return x


def _flip(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    return torch.where(_per_sample(mask), x.flip(dim), x)


def _flip_subset_(x: Tensor, mask: Tensor, dim: int) -> None:
    idx = mask.nonzero().squeeze(1)
    if idx.numel():
        x.index_copy_(0, idx, x.index_select(0, idx).flip(dim))


def _rot90_subset_(x: Tensor, rot: Tensor) -> None:
    for k in (1, 2, 3):
        idx = (rot == k).nonzero().squeeze(1)
        if idx.numel():
            x.index_copy_(0, idx, torch.rot90(x.index_select(0, idx), k, dims=(-2, -1)))


class TrainAugment(torch.nn.Module):
    """The paper's training augmentation on a uint8 batch, one random draw per sample.

    ``extra`` adds remote-sensing augmentations (scenes have no canonical "up"): a vertical
    flip coin and a uniform 90-degree rotation, which with the horizontal flip cover all eight
    symmetries of the square.
    """

    def __init__(
        self,
        grayscale_p: float = 0.2,
        jitter: float = 0.4,
        hflip: bool = True,
        extra: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= grayscale_p <= 1.0:
            raise ValueError(f"grayscale_p={grayscale_p} must be in [0, 1]")
        if not 0.0 <= jitter <= 0.5:
            raise ValueError(f"jitter={jitter} must be in [0, 0.5] (the hue range is +-jitter)")
        self.grayscale_p = float(grayscale_p)
        self.jitter = float(jitter)
        self.hflip = bool(hflip)
        self.extra = bool(extra)

    def extra_repr(self) -> str:
        return (
            f"grayscale_p={self.grayscale_p}, jitter={self.jitter}, hflip={self.hflip}, "
            f"extra={self.extra}"
        )

    def draw(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """The (B, 12) uniforms a batch uses, drawn on the generator's device in one call,
        whatever the flags (so a (seed, step) pair always consumes the same stream)."""
        return torch.rand(batch_size, _N_DRAWS, generator=generator, device=generator.device)

    def forward(self, images_uint8: Tensor, generator: torch.Generator) -> Tensor:
        """(B, 3, S, S) uint8 on any device -> normalised float32 (B, 3, S, S), same device."""
        _check_images(images_uint8)
        if images_uint8.ndim != 4:
            raise ValueError(f"expected a batch (B, 3, H, W), got {tuple(images_uint8.shape)}")
        if self.extra and images_uint8.shape[-1] != images_uint8.shape[-2]:
            raise ValueError(f"90-degree rotations need square images, got {images_uint8.shape}")
        u = self.draw(images_uint8.shape[0], generator).to(images_uint8.device)
        if images_uint8.device.type == "cpu":
            return self._apply_grouped(images_uint8, u)
        return self._apply_batched(images_uint8, u)

    def _params(self, u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Per-sample parameters from the uniforms: gray, hflip, vflip (bool), rotation (k),
        jitter order (B, 4) (a uniform permutation: argsort of iid uniforms), factors (B, 4)."""
        j = self.jitter
        lo = _const((max(0.0, 1 - j),) * 3 + (-j,), u.device, u.dtype)
        hi = _const((1 + j,) * 3 + (j,), u.device, u.dtype)
        return (
            u[:, _GRAY] < self.grayscale_p,
            (u[:, _HFLIP] < 0.5) & self.hflip,
            (u[:, _VFLIP] < 0.5) & self.extra,
            (u[:, _ROT] * 4).long().clamp_(max=3) * self.extra,
            u[:, _ORDER].argsort(dim=1),
            lo + (hi - lo) * u[:, _FACTOR],
        )

    def _apply_batched(self, images: Tensor, u: Tensor) -> Tensor:
        """Accelerator path: whole-batch ops selected with ``where``, no host synchronisation."""
        gray, hflip, vflip, rot, order, factors = self._params(u)
        x = _flip(_flip(images, hflip, -1), vflip, -2)
        if self.extra:
            for k in (1, 2, 3):
                x = torch.where(_per_sample(rot == k), torch.rot90(x, k, dims=(-2, -1)), x)
        x = _to_unit_float(x)
        x = torch.where(_per_sample(gray), _gray(x).expand_as(x), x)
        if self.jitter > 0:
            x = _color_jitter_batched(x, order, factors)
        return _normalize_(x)

    def _apply_grouped(self, images: Tensor, u: Tensor) -> Tensor:
        """CPU path: spatial ops on uint8 subsets, then samples grouped by (jitter order,
        grayscale coin) so every colour op runs on a contiguous, cache-sized block without
        per-sample selection (``where`` over a broadcast mask is slow on CPUs)."""
        gray, hflip, vflip, rot, order, factors = self._params(u)
        x8 = images.clone()
        _flip_subset_(x8, hflip, -1)
        _flip_subset_(x8, vflip, -2)
        _rot90_subset_(x8, rot)
        key = gray.long()
        if self.jitter > 0:
            key = key + 2 * (order * torch.tensor([64, 16, 4, 1])).sum(1)
        key, perm = torch.sort(key, stable=True)
        out = torch.empty(images.shape, dtype=torch.float32)
        mean, std = _stats(out.device, out.dtype)
        step = max(1, _CPU_CHUNK_ELEMENTS // images[0].numel())
        counts = torch.unique_consecutive(key, return_counts=True)[1].tolist()
        start = 0
        for count in counts:
            group = perm[start : start + count]
            start += count
            is_gray = bool(gray[group[0]])
            group_order = order[group[0]].tolist()
            for s in range(0, count, step):
                idx = group[s : s + step]
                x = _to_unit_float(x8.index_select(0, idx))
                if is_gray:
                    x = _gray(x).expand_as(x).contiguous()
                if self.jitter > 0:
                    x = _color_jitter_group(x, group_order, factors.index_select(0, idx))
                out.index_copy_(0, idx, x.sub_(mean).div_(std))
        return out


def paper_pil_transform(size: int, train: bool) -> Callable:
    """The reference per-sample torchvision pipeline of the paper's code (PIL image -> tensor).

    Used by the tests (distribution equivalence) and benchmark (c), never by training.
    """
    from torchvision import transforms as T

    steps: list[Callable] = [T.Resize((size, size))]
    if train:
        steps += [
            T.RandomGrayscale(0.2),
            T.ColorJitter(0.4, 0.4, 0.4, 0.4),
            T.RandomHorizontalFlip(),
        ]
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return T.Compose(steps)
