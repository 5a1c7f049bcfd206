"""Batched training augmentation for N-band (multispectral) images.

Why a second augmentation: the paper's pipeline (:class:`rsdml.data.augment.TrainAugment`)
mixes channels (grayscale, saturation, hue), which has no meaning for 13 Sentinel-2 bands.
Here only what is valid for any band set is applied: the horizontal flip (and, with
``--extra-augment``, the vertical flip and 90-degree rotations), then a brightness factor and
a contrast factor drawn per sample *and per band* (contrast around the band's own image mean).
Pixels stay in raw units (0..255 or 0..65535) until the run's per-band normalisation.

All random numbers of a batch come from one draw on the step's generator, so a (seed, step)
pair reproduces a batch exactly, as with the RGB augmentation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rsdml.data.bands import BandNormalize, to_float

_HFLIP, _VFLIP, _ROT, _FIRST_FACTOR = 0, 1, 2, 3


def _per_sample(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


class BandAugment(torch.nn.Module):
    """(B, C, S, S) uint8/uint16 -> normalised float32 (B, C, S, S), one draw per sample.

    ``jitter``: brightness and contrast factors are uniform in [1 - jitter, 1 + jitter] for
    each band (smaller than the RGB pipeline's 0.4: independent per-band factors already
    change the spectrum's shape, which is what separates the classes).
    """

    def __init__(self, normalize: BandNormalize, jitter: float = 0.2, hflip: bool = True,
                 extra: bool = False) -> None:
        super().__init__()
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter={jitter} must be in [0, 1)")
        self.normalize = normalize
        self.jitter = float(jitter)
        self.hflip = bool(hflip)
        self.extra = bool(extra)

    def extra_repr(self) -> str:
        return f"bands={len(self.normalize.mean)}, jitter={self.jitter}, extra={self.extra}"

    def draw(self, batch_size: int, bands: int, generator: torch.Generator) -> Tensor:
        """The (B, 3 + 2C) uniforms of a batch, whatever the flags."""
        return torch.rand(batch_size, _FIRST_FACTOR + 2 * bands, generator=generator,
                          device=generator.device)

    def forward(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if images.ndim != 4:
            raise ValueError(f"expected a batch (B, C, H, W), got {tuple(images.shape)}")
        if self.extra and images.shape[-1] != images.shape[-2]:
            raise ValueError(f"90-degree rotations need square images, got {images.shape}")
        b, c = images.shape[:2]
        u = self.draw(b, c, generator).to(images.device)
        x = to_float(images)
        if self.hflip:
            x = torch.where(_per_sample(u[:, _HFLIP] < 0.5), x.flip(-1), x)
        if self.extra:
            x = torch.where(_per_sample(u[:, _VFLIP] < 0.5), x.flip(-2), x)
            rot = (u[:, _ROT] * 4).long().clamp_(max=3)
            for k in (1, 2, 3):
                x = torch.where(_per_sample(rot == k), torch.rot90(x, k, dims=(-2, -1)), x)
        if self.jitter > 0:
            lo, span = 1.0 - self.jitter, 2.0 * self.jitter
            bright = (lo + span * u[:, _FIRST_FACTOR:_FIRST_FACTOR + c])[:, :, None, None]
            contrast = (lo + span * u[:, _FIRST_FACTOR + c:_FIRST_FACTOR + 2 * c])[:, :, None, None]
            x = x * bright
            mean = x.mean(dim=(2, 3), keepdim=True)
            x = (x - mean).mul_(contrast).add_(mean).clamp_(min=0)
        return self.normalize(x)
