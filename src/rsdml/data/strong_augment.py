"""The two views of an unlabelled image that consistency methods (FixMatch and successors)
compare: a weak view whose confident predictions become pseudo-labels, and a strong view that
must predict them. Batched on the training device, one random draw per sample from the step's
generator, so a (seed, step) pair reproduces both views exactly (as ``TrainAugment`` does).

* weak: the eight symmetries of the square (a scene has no "up") and a shift of up to 12.5 %
  of the side with reflected borders: labels cannot change.
* strong (RGB): the weak view's kind of geometry plus RandAugment as FixMatch uses it: two
  operations drawn uniformly (with replacement) from 14, each at a uniform random magnitude,
  then Cutout (a square of up to half the side, filled with the mean). Colour operations run
  first, on [0, 1] pixels with torchvision's maths (``transforms.v2.functional`` where the
  operation has no per-sample magnitude); all geometry (symmetry, shift, rotate, shear,
  translate) is then one affine resampling per sample.
* strong (N bands): channel-mixing and 8-bit colour operations mean nothing for 13 Sentinel-2
  bands, so the two operations come from identity and the five geometric ones; per-band
  brightness and contrast factors (as ``BandAugment``) and Cutout follow.

On an accelerator the colour operations run on the subsets of samples that drew them (a few
host synchronisations per batch, against a model step that costs far more).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from rsdml.data.augment import _gray, _normalize_, normalize
from rsdml.data.bands import to_float

#: The FixMatch RandAugment list, in this order (an op's id is its position).
RGB_OPS = ("identity", "autocontrast", "brightness", "color", "contrast", "equalize",
           "posterize", "rotate", "sharpness", "shear_x", "shear_y", "solarize",
           "translate_x", "translate_y")
BAND_OPS = ("identity", "rotate", "shear_x", "shear_y", "translate_x", "translate_y")
GEOMETRIC = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})
MAX_ROTATE_DEG, MAX_SHEAR, MAX_TRANSLATE = 30.0, 0.3, 0.3
MAX_SHIFT = 0.125  # the weak view's shift, a fraction of the side
MAX_CUTOUT = 0.5   # Cutout's largest side, a fraction of the image's

# Columns of the per-sample uniforms (fixed, so the stream never depends on the options).
_HFLIP, _VFLIP, _ROT, _SHIFT_X, _SHIFT_Y = 0, 1, 2, 3, 4
_OP, _MAG = (5, 7), (6, 8)
_CUT_X, _CUT_Y, _CUT_SIZE = 9, 10, 11
_N_DRAWS = 12


def _per_sample(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _factor(m: Tensor) -> Tensor:
    """PIL-enhance factor from a magnitude in [0, 1]: 0.1 .. 1.9 (1 = unchanged)."""
    return 1.0 + (2.0 * m - 1.0) * 0.9


def _blend(x: Tensor, target: Tensor, f: Tensor) -> Tensor:
    """torchvision's ``_blend``: f * x + (1 - f) * target, clamped to [0, 1]."""
    return torch.lerp(target.expand_as(x), x, _per_sample(f)).clamp_(0, 1)


def _sharpness_target(x: Tensor) -> Tensor:
    """torchvision's degenerate image for ``adjust_sharpness``: a 3x3 smoothing (centre weight
    5 of 13) inside, the original pixels on the border."""
    k = torch.ones(3, 3, device=x.device, dtype=x.dtype)
    k[1, 1] = 5.0
    k = (k / k.sum()).expand(x.shape[1], 1, 3, 3)
    inner = F.conv2d(x, k, groups=x.shape[1])
    out = x.clone()
    out[..., 1:-1, 1:-1] = inner
    return out


def color_op(name: str, x: Tensor, m: Tensor) -> Tensor:
    """One colour operation on a (B, 3, H, W) float batch in [0, 1] with per-sample magnitudes
    ``m`` in [0, 1]; the same maths as torchvision's functional op of that name."""
    if name == "identity":
        return x
    if name == "autocontrast":
        return TF.autocontrast(x)
    if name == "equalize":
        return TF.equalize(x)
    if name == "brightness":
        return _blend(x, torch.zeros_like(x[:, :1]), _factor(m))
    if name == "color":
        return _blend(x, _gray(x), _factor(m))
    if name == "contrast":
        return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), _factor(m))
    if name == "sharpness":
        return _blend(x, _sharpness_target(x), _factor(m))
    if name == "posterize":  # keep 4..8 bits of the 8-bit value
        bits = posterize_bits(m)
        mask = (255 - (2 ** (8 - bits) - 1)).to(torch.uint8)
        x8 = (x * 255).round_().to(torch.uint8)
        return (x8 & _per_sample(mask)).float().div_(255)
    if name == "solarize":  # invert every value at or above the threshold
        return torch.where(x >= _per_sample(m), 1.0 - x, x)
    raise ValueError(f"unknown colour operation {name!r}")


def posterize_bits(m: Tensor) -> Tensor:
    return (4 + (m * 5).long()).clamp_(max=8)


def _geometry(u: Tensor, size: int, ops: tuple[str, ...] | None) -> Tensor:
    """(B, 2, 3) affine matrices (output -> input, normalised coordinates): a symmetry of the
    square, an integer shift, then the drawn geometric operations (``ops``: the op list)."""
    b, dev = u.shape[0], u.device
    rot = (u[:, _ROT] * 4).long().clamp_(max=3)
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=dev)[rot]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=dev)[rot]
    hf = torch.where(u[:, _HFLIP] < 0.5, -1.0, 1.0)
    vf = torch.where(u[:, _VFLIP] < 0.5, -1.0, 1.0)
    m = torch.zeros(b, 3, 3, device=dev)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos * hf, -sin * vf, sin * hf, cos * vf
    r = round(MAX_SHIFT * size)
    shift = (u[:, [_SHIFT_X, _SHIFT_Y]] * (2 * r + 1)).floor_().clamp_(max=2 * r) - r
    m[:, :2, 2] = shift * (2.0 / size)  # whole pixels: the resampling stays exact
    m[:, 2, 2] = 1.0
    if ops is not None:
        for slot in range(2):
            op = (u[:, _OP[slot]] * len(ops)).long().clamp_(max=len(ops) - 1)
            g = torch.eye(3, device=dev).repeat(b, 1, 1)
            v = 2.0 * u[:, _MAG[slot]] - 1.0  # symmetric magnitude in [-1, 1]
            for name in GEOMETRIC:
                sel = op == ops.index(name)
                if name == "rotate":
                    a = v * math.radians(MAX_ROTATE_DEG)
                    rot_g = torch.stack([torch.stack([a.cos(), -a.sin()], 1),
                                         torch.stack([a.sin(), a.cos()], 1)], 1)
                    g[:, :2, :2] = torch.where(sel[:, None, None], rot_g, g[:, :2, :2])
                elif name == "shear_x":
                    g[:, 0, 1] = torch.where(sel, v * MAX_SHEAR, g[:, 0, 1])
                elif name == "shear_y":
                    g[:, 1, 0] = torch.where(sel, v * MAX_SHEAR, g[:, 1, 0])
                elif name == "translate_x":
                    g[:, 0, 2] = torch.where(sel, v * MAX_TRANSLATE * 2, g[:, 0, 2])
                else:
                    g[:, 1, 2] = torch.where(sel, v * MAX_TRANSLATE * 2, g[:, 1, 2])
            m = m @ g
    return m[:, :2, :]


def _resample(x: Tensor, theta: Tensor, padding: str) -> Tensor:
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def _cutout_(x: Tensor, u: Tensor) -> Tensor:
    """Zero (the normalised mean) a square of side up to MAX_CUTOUT of the image per sample."""
    h, w = x.shape[-2:]
    side = u[:, _CUT_SIZE] * MAX_CUTOUT
    cy, cx = u[:, _CUT_Y] * h, u[:, _CUT_X] * w
    ys = torch.arange(h, device=x.device, dtype=x.dtype) + 0.5
    xs = torch.arange(w, device=x.device, dtype=x.dtype) + 0.5
    inside_y = (ys[None] - cy[:, None]).abs() <= (side * h / 2)[:, None]
    inside_x = (xs[None] - cx[:, None]).abs() <= (side * w / 2)[:, None]
    box = inside_y[:, :, None] & inside_x[:, None, :]
    return x.masked_fill_(box[:, None], 0.0)


class ViewAugment(torch.nn.Module):
    """uint8 (RGB) or uint8/uint16 (N bands) batch -> normalised float32 view, weak or strong.

    ``normalizer``: None for 8-bit RGB (ImageNet statistics, RandAugment's colour operations);
    else the run's per-band normalisation (``BandNormalize``), and the band operations."""

    def __init__(self, strong: bool, normalizer: Callable[[Tensor], Tensor] | None = None,
                 band_jitter: float = 0.2) -> None:
        super().__init__()
        self.strong = bool(strong)
        self.normalizer = normalizer
        self.band_jitter = float(band_jitter)

    @property
    def ops(self) -> tuple[str, ...]:
        return RGB_OPS if self.normalizer is None else BAND_OPS

    def extra_repr(self) -> str:
        return f"strong={self.strong}, ops={len(self.ops) if self.strong else 0}"

    def draw(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """The per-sample uniforms (B, 12) and, for strong N-band views, (B, 2C) band factors."""
        b = images.shape[0]
        u = torch.rand(b, _N_DRAWS, generator=generator, device=generator.device)
        bands = None
        if self.strong and self.normalizer is not None:
            bands = torch.rand(b, 2 * images.shape[1], generator=generator, device=generator.device)
        return u.to(images.device), None if bands is None else bands.to(images.device)

    def forward(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
            raise ValueError(f"expected a batch of square images (B, C, S, S), got {tuple(images.shape)}")
        u, band_u = self.draw(images, generator)
        size = images.shape[-1]
        if self.normalizer is None:
            if self.strong:
                x = images.float().div_(255)
                x = self.color_ops(x, u)
                x = _normalize_(x)
            else:
                x = normalize(images)
        else:
            x = to_float(images)
            if band_u is not None:
                x = _band_jitter(x, band_u, self.band_jitter)
            x = self.normalizer(x)
        theta = _geometry(u, size, self.ops if self.strong else None)
        x = _resample(x, theta, "zeros" if self.strong else "reflection")
        return _cutout_(x, u) if self.strong else x

    def color_ops(self, x: Tensor, u: Tensor) -> Tensor:
        """The drawn colour operations, slot by slot, each on the samples that drew it."""
        ops = self.ops
        for slot in range(2):
            op = (u[:, _OP[slot]] * len(ops)).long().clamp_(max=len(ops) - 1)
            for k, name in enumerate(ops):
                if name == "identity" or name in GEOMETRIC:
                    continue
                idx = (op == k).nonzero().squeeze(1)
                if idx.numel():
                    x.index_copy_(0, idx, color_op(name, x.index_select(0, idx),
                                                   u[idx, _MAG[slot]]))
        return x


def _band_jitter(x: Tensor, u: Tensor, jitter: float) -> Tensor:
    """Per-sample, per-band brightness then contrast factors in [1 - jitter, 1 + jitter]."""
    c = x.shape[1]
    lo, span = 1.0 - jitter, 2.0 * jitter
    bright = (lo + span * u[:, :c])[:, :, None, None]
    contrast = (lo + span * u[:, c:])[:, :, None, None]
    x = x * bright
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean).mul_(contrast).add_(mean).clamp_(min=0)
