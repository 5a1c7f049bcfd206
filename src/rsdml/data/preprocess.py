"""How an image file becomes a model's input: one object that travels with the model.

Why: "which bands, what size, which normalisation" used to be rebuilt by each command, and
``rsdml serve`` got it wrong (it decoded uploads as RGB for a ``--bands`` run) while ``rsdml
search`` got it right. A :class:`Preprocess` is made once when a run is trained, saved as
``RUN/preprocess.json`` beside the weights (the idea of timm's ``pretrained_cfg``), and
read back by evaluate, embed, index, search and serve. Its :meth:`~Preprocess.fingerprint`
(band statistics included) is part of the cache keys of anything derived from normalised
pixels, so features normalised with one run's statistics never serve another run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from rsdml.data.bands import Bands, InputSpec
from rsdml.errors import RsdmlError
from rsdml.fsutil import write_text_atomic

#: The file a run keeps its preprocessing in.
FILENAME = "preprocess.json"
FORMAT = 1


@dataclass(frozen=True)
class Preprocess:
    """File -> ``image_size`` x ``image_size`` x C pixels (:meth:`read`) -> normalised float
    tensor (:meth:`normalizer`). ``spec`` None: 8-bit RGB by the documented conversion rules
    and ImageNet's mean/std; else the run's bands at the data's bit depth
    (:class:`~rsdml.data.bands.InputSpec`, statistics from the training images)."""

    image_size: int
    spec: InputSpec | None = None

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or int(self.image_size) < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")

    @property
    def channels(self) -> int:
        return 3 if self.spec is None else self.spec.channels

    @property
    def dtype(self) -> str:
        return "uint8" if self.spec is None else self.spec.dtype

    @property
    def bands(self) -> Bands | None:
        """The bands to decode (None: the RGB rules)."""
        return None if self.spec is None else Bands(self.spec.bands)

    def read(self, path: str | Path, *, max_pixels: int | None = None,
             max_bytes: int | None = None) -> np.ndarray:
        """Decode and resize one file to the model's pixels (S x S x C, uint8 or uint16).

        Raises ImageReadError for a file that is not such an image, or whose bands or bit
        depth are not the ones the model was trained on."""
        from rsdml.data import imageio

        limits: dict[str, int] = {}
        if max_pixels is not None:
            limits["max_pixels"] = max_pixels
        if max_bytes is not None:
            limits["max_bytes"] = max_bytes
        if self.spec is None:
            return imageio.read_resized(path, self.image_size, **limits)
        arr = imageio.read_resized_bands(path, self.image_size, Bands(self.spec.bands), **limits)
        if arr.dtype.name != self.spec.dtype:
            raise imageio.ImageReadError(
                path, "unsupported", f"its bands are {arr.dtype.name}, but the model was trained "
                f"on {self.spec.dtype} bands; send an image of the same kind")
        return arr

    def normalizer(self) -> Callable[[Tensor], Tensor]:
        """uint8/uint16 (..., C, H, W) -> the float input the network was trained on."""
        if self.spec is None or self.spec.normalization == "imagenet":
            from rsdml.data.augment import normalize

            return normalize
        normalizer = self.spec.normalizer()
        assert normalizer is not None
        return normalizer

    def describe(self) -> str:
        """One line for people (reports, ``rsdml serve``'s /api/info)."""
        if self.spec is None:
            return f"8-bit RGB, bilinear resize to {self.image_size} px, ImageNet mean/std"
        norm = ("ImageNet mean/std" if self.spec.normalization == "imagenet"
                else "per-band mean/std of the training images")
        return (f"bands {','.join(map(str, self.spec.bands))} ({self.spec.dtype}), bilinear "
                f"resize to {self.image_size} px, {norm}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "image_size": int(self.image_size),
                "input": None if self.spec is None else self.spec.to_dict()}

    def fingerprint(self) -> str:
        """A short hash of everything that decides the model's input (for cache keys)."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def save(self, path: Path) -> None:
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> Preprocess:
        try:
            if d.get("format") != FORMAT:
                raise ValueError(f"format {d.get('format')}")
            spec = None
            if d["input"] is not None:
                s = d["input"]
                spec = InputSpec(tuple(int(b) for b in s["bands"]),
                                 tuple(s["rgb"]) if s["rgb"] is not None else None,  # type: ignore[arg-type]
                                 str(s["dtype"]), str(s["normalization"]),
                                 tuple(float(m) for m in s["mean"]),
                                 tuple(float(x) for x in s["std"]))
            return cls(int(d["image_size"]), spec)
        except (ValueError, KeyError, TypeError) as e:
            raise RsdmlError(f"{source} cannot be read ({type(e).__name__}: {e}); it records how "
                             "images become the model's input: restore it or train again") from None

    @classmethod
    def load(cls, path: Path) -> Preprocess:
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RsdmlError(f"{path} cannot be read ({type(e).__name__}); it records how images "
                             "become the model's input: restore it or train again") from None
        return cls.from_dict(d if isinstance(d, dict) else {}, str(path))
