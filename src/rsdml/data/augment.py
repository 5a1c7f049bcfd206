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
_CPU_CHUNK_ELEMENTS = 2**18  # 1 MiB of float32 per chunk: stays in L2 on most CPUs


def _stats(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, device=device, dtype=dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device, dtype=dtype).view(3, 1, 1)
    return mean, std


def _check_images(images: Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(
            f"expected uint8 images shaped (..., 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )


def _to_unit_float(images_uint8: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    return images_uint8.to(dtype).div_(255)


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
    n = torch.tensor((5.0, 3.0, 1.0), device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(h6.unsqueeze(1) + n, 6)
    w = torch.minimum(k, 4 - k).clamp_(0, 1)
    return maxc.unsqueeze(1) - cr.unsqueeze(1) * w


def _color_jitter(x: Tensor, order: Tensor, factors: Tensor, *, subset_hue: bool) -> Tensor:
    """Apply each sample's four jitter ops in that sample's own order.

    ``order[i, k]`` is the op (0 brightness, 1 contrast, 2 saturation, 3 hue) sample i applies
    at slot k; ``factors[i, op]`` its factor. At each slot every non-hue sample does one blend
    ``clamp(f * x + (1 - f) * target)`` (target 0, its gray mean, or its gray image: torchvision's
    _blend), and hue samples keep x exactly (f = 1). Hue runs on the hue samples only when
    ``subset_hue`` (CPU: less work), otherwise on all and is selected with ``where`` (no host
    sync on accelerators).
    """
    for k in range(4):
        op = order[:, k]
        f = factors.gather(1, op[:, None]).squeeze(1)
        is_hue = op == _HUE
        gray = _gray(x)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        target = torch.where(
            _per_sample(op == _SATURATION),
            gray,
            torch.where(_per_sample(op == _CONTRAST), mean, torch.zeros_like(mean)),
        )
        fb = _per_sample(torch.where(is_hue, torch.ones_like(f), f))
        x = (x * fb).add_(target * (1 - fb)).clamp_(0, 1)
        if subset_hue:
            idx = is_hue.nonzero().squeeze(1)
            if idx.numel():
                x.index_copy_(0, idx, _adjust_hue(x.index_select(0, idx), f.index_select(0, idx)))
        else:
            x = torch.where(_per_sample(is_hue), _adjust_hue(x, torch.where(is_hue, f, 0)), x)
    return x


def _flip(x: Tensor, mask: Tensor, dim: int) -> Tensor:
    return torch.where(_per_sample(mask), x.flip(dim), x)


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
        """The (B, 12) uniforms a batch uses; drawn on the generator's device in one call."""
        return torch.rand(batch_size, _N_DRAWS, generator=generator, device=generator.device)

    def forward(self, images_uint8: Tensor, generator: torch.Generator) -> Tensor:
        """(B, 3, S, S) uint8 on any device -> normalised float32 (B, 3, S, S), same device."""
        _check_images(images_uint8)
        if images_uint8.ndim != 4:
            raise ValueError(f"expected a batch (B, 3, H, W), got {tuple(images_uint8.shape)}")
        if self.extra and images_uint8.shape[-1] != images_uint8.shape[-2]:
            raise ValueError(f"90-degree rotations need square images, got {images_uint8.shape}")
        u = self.draw(images_uint8.shape[0], generator).to(images_uint8.device)
        if images_uint8.device.type != "cpu":
            return self._apply(images_uint8, u)
        # On a CPU, ~40 elementwise passes run far faster on chunks that stay in cache (and
        # whose buffers the allocator reuses) than on one 50 MB batch tensor.
        out = torch.empty(images_uint8.shape, dtype=torch.float32)
        step = max(1, _CPU_CHUNK_ELEMENTS // images_uint8[0].numel())
        for start in range(0, images_uint8.shape[0], step):
            stop = start + step
            out[start:stop] = self._apply(images_uint8[start:stop], u[start:stop])
        return out

    def _apply(self, x: Tensor, u: Tensor) -> Tensor:
        if self.hflip:
            x = _flip(x, u[:, _HFLIP] < 0.5, -1)
        if self.extra:
            x = _flip(x, u[:, _VFLIP] < 0.5, -2)
            rot = (u[:, _ROT] * 4).long().clamp_(max=3)
            for k in (1, 2, 3):
                x = torch.where(_per_sample(rot == k), torch.rot90(x, k, dims=(-2, -1)), x)
        x = _to_unit_float(x)
        if self.grayscale_p > 0:
            to_gray = _per_sample(u[:, _GRAY] < self.grayscale_p)
            x = torch.where(to_gray, _gray(x).expand_as(x), x)
        if self.jitter > 0:
            j = self.jitter
            lo = torch.tensor([max(0.0, 1 - j)] * 3 + [-j], device=x.device)
            hi = torch.tensor([1 + j] * 3 + [j], device=x.device)
            factors = lo + (hi - lo) * u[:, _FACTOR]
            order = u[:, _ORDER].argsort(dim=1)  # a uniform random permutation per sample
            x = _color_jitter(x, order, factors, subset_hue=x.device.type == "cpu")
        return _normalize_(x)


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
