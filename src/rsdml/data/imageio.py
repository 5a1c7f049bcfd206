"""Reading one image file into the model's input format (minimal version; hardened in issue 6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def read_rgb(path: str | Path) -> np.ndarray:
    """Decode ``path`` to an H x W x 3 uint8 array."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def read_resized(path: str | Path, size: int) -> np.ndarray:
    """Decode and resize to ``size`` x ``size`` (bilinear, antialiased): the cached input."""
    rgb = read_rgb(path)
    im = Image.fromarray(rgb)
    if im.size != (size, size):
        im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im)
