"""Preprocess: the one object that turns a file into a model's input, saved with the run."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from rsdml.data.bands import Bands, InputSpec
from rsdml.data.imageio import ImageReadError, read_bands
from rsdml.data.preprocess import Preprocess
from rsdml.errors import RsdmlError

SPEC = InputSpec((4, 3, 2, 8), (0, 1, 2), "uint16", "bands", (1.0, 2.0, 3.0, 4.0),
                 (5.0, 6.0, 7.0, 8.0))


def test_round_trip_and_fingerprint(tmp_path):
    for p in (Preprocess(64), Preprocess(32, SPEC)):
        p.save(tmp_path / "preprocess.json")
        assert Preprocess.load(tmp_path / "preprocess.json") == p
    other_stats = InputSpec(SPEC.bands, SPEC.rgb, SPEC.dtype, SPEC.normalization,
                            (1.0, 2.0, 3.0, 4.5), SPEC.std)
    prints = {Preprocess(32).fingerprint(), Preprocess(64).fingerprint(),
              Preprocess(32, SPEC).fingerprint(), Preprocess(32, other_stats).fingerprint()}
    assert len(prints) == 4  # size, bands and the statistics each change it
    (tmp_path / "bad.json").write_text('{"format": 1}')
    with pytest.raises(RsdmlError, match="bad.json cannot be read"):
        Preprocess.load(tmp_path / "bad.json")


def test_read_decodes_the_run_bands_at_its_size(tmp_path):
    scene = np.arange(20 * 20 * 9, dtype=np.uint16).reshape(20, 20, 9)
    tifffile.imwrite(tmp_path / "s.tif", scene, photometric="minisblack", planarconfig="contig")
    arr = Preprocess(10, SPEC).read(tmp_path / "s.tif")
    assert arr.shape == (10, 10, 4) and arr.dtype == np.uint16
    Image.new("RGB", (20, 20), (10, 20, 30)).save(tmp_path / "rgb.png")
    assert Preprocess(10).read(tmp_path / "rgb.png").shape == (10, 10, 3)
    eight = InputSpec((1, 2, 3), (0, 1, 2), "uint16", "bands", (0.0,) * 3, (1.0,) * 3)
    with pytest.raises(ImageReadError, match="trained on uint16"):  # 8-bit file, 16-bit model
        Preprocess(10, eight).read(tmp_path / "rgb.png")
    x = Preprocess(10, SPEC).normalizer()(torch.full((1, 4, 2, 2), 11, dtype=torch.uint8))
    assert x[0, :, 0, 0].tolist() == pytest.approx([2.0, 1.5, 8 / 7, 7 / 8])


def test_decoded_bytes_are_capped_before_decoding(tmp_path):
    """13 bands of uint16 at 300 x 300 are 0.09 MP but 2.34 MB decoded."""
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((300, 300, 13), np.uint16),
                     compression="zlib", photometric="minisblack", planarconfig="contig")
    with pytest.raises(ImageReadError, match="2,340,000 bytes") as e:
        read_bands(tmp_path / "b.tif", Bands(), max_pixels=1_000_000, max_bytes=1_000_000)
    assert e.value.kind == "too_large"
    # by default the limit is 8 bytes (16-bit RGBA) per allowed pixel
    with pytest.raises(ImageReadError, match="above the limit of 1,600,000"):
        read_bands(tmp_path / "b.tif", Bands(), max_pixels=200_000)
    assert read_bands(tmp_path / "b.tif", Bands(), max_pixels=1_000_000).shape == (300, 300, 13)
