"""Fixtures that write small, messy image folders like real archives (tmp_path only).

``write_image(path, kind)`` writes one file of a named kind; ``make_messy_folder(root)``
builds a whole class-per-folder data set with the usual debris and returns what a scan
should find. Tests get them through the fixtures at the end (``write_image``,
``make_messy_folder``, ``messy_folder``), so nothing imports this file by name.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from rsdml.data import imageio


def _rgb(seed: int, h: int = 12, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def jpeg_bytes(seed: int = 0, h: int = 12, w: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(seed, h, w)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def damaged_jpeg_bytes(seed: int = 0) -> bytes:
    """A JPEG damaged inside its coded data: every count of its first Huffman table is 255."""
    data = bytearray(jpeg_bytes(seed, 32, 32))
    at = data.find(b"\xff\xc4") + 5  # DHT marker, length (2), table class/id (1)
    data[at : at + 16] = b"\xff" * 16
    return bytes(data)


def write_image(path: Path, kind: str, seed: int = 0) -> Path:
    """Write one small file of ``kind`` at ``path`` (parents created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = _rgb(seed)
    rng = np.random.default_rng(seed)
    if kind == "jpeg":
        path.write_bytes(jpeg_bytes(seed))
    elif kind == "png":
        Image.fromarray(rgb).save(path, format="PNG")
    elif kind == "gray":
        Image.fromarray(rgb[:, :, 0]).save(path, format="PNG")
    elif kind == "palette":
        Image.fromarray(rgb).convert("P").save(path, format="PNG")
    elif kind == "rgba":
        Image.fromarray(np.dstack([rgb, rgb[:, :, :1]]), "RGBA").save(path, format="PNG")
    elif kind == "cmyk":
        Image.fromarray(rgb).convert("CMYK").save(path, format="JPEG")
    elif kind == "tiff16":
        tifffile.imwrite(path, rgb.astype(np.uint16) * 64, photometric="rgb")
    elif kind == "tiff_float":
        tifffile.imwrite(path, rgb.astype(np.float32) / 255, photometric="rgb")
    elif kind == "tiff5":
        bands = rng.integers(0, 4000, (5, 12, 16)).astype(np.uint16)
        tifffile.imwrite(path, bands, photometric="minisblack", planarconfig="separate")
    elif kind == "truncated_jpeg":  # cut inside the entropy-coded data, past the header
        data = jpeg_bytes(seed, 48, 48)
        path.write_bytes(data[: len(data) * 2 // 3])
    elif kind == "damaged_jpeg":  # header and end marker intact, Huffman table broken:
        path.write_bytes(damaged_jpeg_bytes(seed))  # passes the fast check, fails to decode
    elif kind == "random":
        path.write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not an image\n")
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return path


@dataclass
class MessyFolder:
    """A data folder and what a default (non-strict) scan of it should report."""

    root: Path
    good: dict[str, list[str]] = field(default_factory=dict)  # class -> relative paths
    corrupt: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    not_image: list[str] = field(default_factory=list)
    not_in_class: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return sorted(self.good)

    @property
    def paths(self) -> list[str]:
        return [p for c in self.classes for p in sorted(self.good[c])]


def make_messy_folder(root: Path) -> MessyFolder:
    """Three usable classes with odd modes and mixed-case names, plus the usual debris."""
    m = MessyFolder(root=root)
    layout = {
        "Beach": [("b1.jpg", "jpeg"), ("b2.JPG", "jpeg"), ("b3.png", "gray"),
                  ("b4.Tif", "tiff16")],
        "Forest": [("f1.jpeg", "jpeg"), ("f2.PNG", "palette"), ("f3.png", "rgba"),
                   ("f4.tiff", "tiff5")],
        "Port": [("p1.jpg", "cmyk"), ("p2.TIFF", "tiff_float"), ("sub/p3.jpg", "jpeg")],
    }
    for seed, (cls, files) in enumerate(layout.items()):
        for i, (name, kind) in enumerate(files):
            write_image(root / cls / name, kind, seed=10 * seed + i)
            m.good.setdefault(cls, []).append(f"{cls}/{name}")
    for rel, kind in [("Beach/bad.jpg", "truncated_jpeg"), ("Forest/noise.jpg", "random"),
                      ("Port/zero.png", "empty")]:
        write_image(root / rel, kind)
        m.corrupt.append(rel)
    for rel in ["Beach/.DS_Store", "Forest/._f1.jpeg", ".DS_Store"]:
        (root / rel).write_bytes(b"\x00\x01junk")
        m.hidden.append(rel)
    (root / "Port" / ".thumbs").mkdir()
    write_image(root / "Port" / ".thumbs" / "t.jpg", "jpeg")
    m.hidden.append("Port/.thumbs")
    for rel in ["Beach/Thumbs.db", "Forest/notes.txt", "Port/desktop.ini"]:
        write_image(root / rel, "text")
        m.not_image.append(rel)
    write_image(root / "README.txt", "text")
    m.not_in_class.append("README.txt")
    (root / "Empty").mkdir()
    (root / "Empty" / "Thumbs.db").write_bytes(b"x")
    m.not_image.append("Empty/Thumbs.db")
    m.empty_classes.append("Empty")
    return m


@pytest.fixture(autouse=True)
def _fresh_rule_warnings():
    """Each test sees the once-per-process conversion warnings afresh."""
    imageio._reset_warnings()
    yield
    imageio._reset_warnings()


@pytest.fixture(name="write_image")
def _write_image_fixture():
    """``write_image(path, kind, seed=0) -> path`` (kinds: see the function)."""
    return write_image


@pytest.fixture(name="make_messy_folder")
def _make_messy_folder_fixture():
    """``make_messy_folder(root) -> MessyFolder``."""
    return make_messy_folder


@pytest.fixture
def messy_folder(tmp_path: Path) -> MessyFolder:
    """A messy data folder under tmp_path and what a default scan should report."""
    return make_messy_folder(tmp_path / "data")


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, list[str]]:
    """20 random 32x32 images in two class folders (mixed formats): the cache tests' data."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    paths = []
    for i in range(20):
        rel = f"class{i % 2}/img{i:02d}.{'png' if i % 3 else 'jpg'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / rel)
        paths.append(rel)
    return root, paths
