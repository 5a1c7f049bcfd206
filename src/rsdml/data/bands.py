"""Which bands of a scene the network sees, and how they are normalised.

Why: Sentinel-2 scenes (EuroSAT MS) have 13 bands; the default RGB rule of
:mod:`rsdml.data.imageio` keeps the first three, stretched to 8 bit. ``--bands all`` or
``--bands 4,3,2,8`` keeps the chosen bands at the data's bit depth (uint8 or uint16), and
``--rgb-bands`` says which of them are red, green and blue (for the pretrained first
convolution and the report's thumbnails).

What a run's network saw is written once to ``RUN/bands.json`` (:class:`InputSpec`): the
band numbers, the dtype, and the per-band mean and std computed from the training images.
``rsdml evaluate``, ``embed`` and ``index`` read it back, so they feed the model exactly what
training fed it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rsdml.errors import RsdmlError
from rsdml.fsutil import write_text_atomic

RGB = "rgb"
ALL = "all"
#: Bit depths the N-band path keeps as they are (anything else is refused with the fix).
BAND_DTYPES = ("uint8", "uint16")
_STATS_CHUNK = 64  # images per chunk while computing band statistics


def parse_band_list(text: str, flag: str) -> tuple[int, ...]:
    """``"4,3,2"`` -> ``(4, 3, 2)``: 1-based band numbers, distinct, or a one-line error."""
    parts = [p.strip() for p in str(text).replace(" ", ",").split(",") if p.strip()]
    try:
        numbers = tuple(int(p) for p in parts)
    except ValueError:
        numbers = ()
    if not numbers or any(n < 1 for n in numbers):
        raise RsdmlError(f"{flag} {text!r} must be rgb, all, or band numbers counted from 1, "
                         "e.g. 4,3,2,8")
    if len(set(numbers)) != len(numbers):
        raise RsdmlError(f"{flag} {text!r} names a band twice; list each band once")
    return numbers


@dataclass(frozen=True)
class Bands:
    """A band selection: ``select`` = 1-based band numbers in channel order (None = every
    band of the files); ``rgb`` = the band numbers of red, green, blue (None = the first three
    selected bands)."""

    select: tuple[int, ...] | None = None
    rgb: tuple[int, int, int] | None = None

    @classmethod
    def parse(cls, bands: str, rgb_bands: str | None = None) -> Bands | None:
        """The selection ``--bands`` / ``--rgb-bands`` name; None for ``--bands rgb`` (the
        default 8-bit RGB rule, unchanged)."""
        text = str(bands).strip().lower()
        rgb = None
        if rgb_bands is not None:
            numbers = parse_band_list(rgb_bands, "--rgb-bands")
            if len(numbers) != 3:
                raise RsdmlError(f"--rgb-bands {rgb_bands!r} must name 3 bands (red, green, "
                                 "blue), e.g. 4,3,2 for Sentinel-2")
            rgb = (numbers[0], numbers[1], numbers[2])
        if text == RGB:
            if rgb is not None:
                raise RsdmlError("--rgb-bands needs --bands all or a band list (--bands rgb "
                                 "always uses the first three bands)")
            return None
        select = None if text == ALL else parse_band_list(bands, "--bands")
        if rgb is not None and select is not None and not set(rgb) <= set(select):
            raise RsdmlError(f"--rgb-bands {rgb_bands} must be among --bands {bands}")
        return cls(select, rgb)

    def indices(self, n_file_bands: int, path: str | Path) -> list[int]:
        """0-based band indices of a file with ``n_file_bands`` bands (error if too few)."""
        if self.select is None:
            return list(range(n_file_bands))
        if max(self.select) > n_file_bands:
            raise RsdmlError(f"--bands {_join(self.select)} asks for band {max(self.select)}, "
                             f"but {path} has {n_file_bands} band(s); choose bands 1 to "
                             f"{n_file_bands}")
        return [b - 1 for b in self.select]

    def resolved(self, n_file_bands: int) -> tuple[tuple[int, ...], tuple[int, int, int] | None]:
        """(selected band numbers, channel positions of R, G, B or None) for files with
        ``n_file_bands`` bands."""
        select = self.select or tuple(range(1, n_file_bands + 1))
        rgb = self.rgb or (tuple(select[:3]) if len(select) >= 3 else None)
        if rgb is None:
            return select, None
        if not set(rgb) <= set(select):
            raise RsdmlError(f"--rgb-bands {_join(rgb)} must be among the {len(select)} bands "
                             "of the images")
        return select, (select.index(rgb[0]), select.index(rgb[1]), select.index(rgb[2]))


def _join(numbers: Sequence[int]) -> str:
    return ",".join(str(n) for n in numbers)


# --------------------------------------------------------------------------- statistics


def band_statistics(images: Tensor, index: Tensor | np.ndarray | None = None) -> tuple[
        list[float], list[float]]:
    """Per-band mean and standard deviation (population) of ``images[index]`` (N, C, H, W)
    in raw units, accumulated in float64 chunk by chunk (the cache may be memory-mapped)."""
    idx = torch.arange(images.shape[0]) if index is None else torch.as_tensor(index).long()
    if idx.numel() == 0:
        raise RsdmlError("no training images to compute the band statistics from")
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    count = 0
    for chunk in idx.split(_STATS_CHUNK):
        x = to_float(gather(images, chunk)).to(torch.float64)
        total += x.sum(dim=(0, 2, 3))
        total_sq += (x * x).sum(dim=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_(min=0)
    return mean.tolist(), var.sqrt().tolist()


# --------------------------------------------------------------------------- the run's input


@dataclass(frozen=True)
class InputSpec:
    """What a run's network sees (``RUN/bands.json``).

    ``normalization``: ``imagenet`` when the input is 8-bit red, green, blue in that order
    (the pretrained trunks' own statistics, exactly today's RGB path), else ``bands``: each
    band standardised with the training images' ``mean`` and ``std``.
    """

    bands: tuple[int, ...]
    rgb: tuple[int, int, int] | None  # channel positions of R, G, B
    dtype: str
    normalization: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return len(self.bands)

    @classmethod
    def from_images(cls, bands: Bands, n_file_bands: int, images: Tensor,
                    train_index: Tensor | np.ndarray) -> InputSpec:
        """The spec of cached ``images`` (N, C, S, S), statistics from ``train_index``."""
        select, rgb = bands.resolved(n_file_bands)
        dtype = str(images.dtype).removeprefix("torch.")
        mean, std = band_statistics(images, train_index)
        imagenet = dtype == "uint8" and len(select) == 3 and rgb == (0, 1, 2)
        return cls(tuple(select), rgb, dtype, "imagenet" if imagenet else "bands",
                   tuple(mean), tuple(std))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> InputSpec:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            spec = cls(tuple(int(b) for b in d["bands"]),
                       tuple(d["rgb"]) if d["rgb"] is not None else None,  # type: ignore[arg-type]
                       str(d["dtype"]), str(d["normalization"]),
                       tuple(float(m) for m in d["mean"]), tuple(float(s) for s in d["std"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RsdmlError(f"{path} cannot be read ({type(e).__name__}); it records the "
                             "bands the run was trained on: restore it or train again") from None
        if len(spec.mean) != spec.channels or len(spec.std) != spec.channels:
            raise RsdmlError(f"{path} is damaged (mean/std do not match the bands); restore it")
        return spec

    def normalizer(self) -> BandNormalize | None:
        """The N-band normalisation, or None where the ImageNet one applies."""
        return None if self.normalization == "imagenet" else BandNormalize(self.mean, self.std)


def to_float(images: Tensor) -> Tensor:
    """uint8/uint16 pixels as float32 values. uint16 goes through an int16 view: PyTorch's
    unsigned 16-bit type has only basic operators on every device, int16 has them all."""
    if images.dtype == torch.uint16:
        return images.view(torch.int16).to(torch.int32).bitwise_and_(0xFFFF).to(torch.float32)
    return images.to(torch.float32)


def gather(images: Tensor, index: Tensor) -> Tensor:
    """``images.index_select(0, index)``, for uint16 through an int16 view (see to_float)."""
    if images.dtype == torch.uint16:
        return images.view(torch.int16).index_select(0, index).view(torch.uint16)
    return images.index_select(0, index)


class BandNormalize:
    """uint8/uint16 (..., C, H, W) -> float32 ``(x - mean) / std`` per band (raw units)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        # A constant band (std 0) is centred, not divided by zero.
        self.std = tuple(float(s) if s > 0 and math.isfinite(s) else 1.0 for s in std)

    def stats(self, device: torch.device) -> tuple[Tensor, Tensor]:
        c = len(self.mean)
        return (torch.tensor(self.mean, device=device).view(c, 1, 1),
                torch.tensor(self.std, device=device).view(c, 1, 1))

    def __call__(self, images: Tensor) -> Tensor:
        if images.shape[-3] != len(self.mean):
            raise ValueError(f"expected {len(self.mean)} bands, got {tuple(images.shape)}")
        mean, std = self.stats(images.device)
        x = to_float(images) if images.dtype != torch.float32 else images
        return x.sub_(mean).div_(std)
