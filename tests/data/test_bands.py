"""Band selection, N-band decoding and caching, band statistics, the N-band augmentation and
the adapted first convolution, on constructed data (tmp_path only)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from rsdml.data import imageio
from rsdml.data.band_augment import BandAugment
from rsdml.data.bands import BandNormalize, Bands, InputSpec, band_statistics
from rsdml.data.cache import load_image_cache
from rsdml.errors import RsdmlError
from rsdml.models.registry import adapt_conv_weight, adapt_input_channels
from rsdml.models.resnet import resnet18


def _ms(seed: int, h: int = 20, w: int = 20, bands: int = 13, dtype=np.uint16) -> np.ndarray:
    hi = 4000 if dtype == np.uint16 else 256
    return np.random.default_rng(seed).integers(0, hi, (h, w, bands)).astype(dtype)


def test_parse():
    assert Bands.parse("rgb") is None
    assert Bands.parse("all") == Bands(None, None)
    assert Bands.parse("4,3,2,8") == Bands((4, 3, 2, 8), None)
    assert Bands.parse("all", "4,3,2") == Bands(None, (4, 3, 2))
    for bad, msg in (("0,1", "counted from 1"), ("a", "counted from 1"), ("2,2", "twice")):
        with pytest.raises(RsdmlError, match=msg):
            Bands.parse(bad)
    with pytest.raises(RsdmlError, match="3 bands"):
        Bands.parse("all", "4,3")
    with pytest.raises(RsdmlError, match="among"):
        Bands.parse("4,3,8", "4,3,2")
    with pytest.raises(RsdmlError, match="needs --bands"):
        Bands.parse("rgb", "1,2,3")
    assert Bands(None, None).resolved(13) == (tuple(range(1, 14)), (0, 1, 2))
    assert Bands(None, (4, 3, 2)).resolved(13)[1] == (3, 2, 1)
    assert Bands((8, 4, 3, 2), None).resolved(13) == ((8, 4, 3, 2), (0, 1, 2))


def test_read_bands_keeps_dtype_and_order(tmp_path):
    arr = _ms(0)
    f = tmp_path / "a.tif"
    tifffile.imwrite(f, arr, photometric="minisblack", planarconfig="contig")
    got = imageio.read_bands(f, Bands(None))
    assert got.dtype == np.uint16 and np.array_equal(got, arr)
    got = imageio.read_bands(f, Bands((4, 3, 2, 8)))
    assert np.array_equal(got, arr[:, :, [3, 2, 1, 7]])
    # channel-first (as many GeoTIFF writers store bands) reads the same
    g = tmp_path / "b.tif"
    tifffile.imwrite(g, arr.transpose(2, 0, 1), photometric="minisblack")
    assert np.array_equal(imageio.read_bands(g, Bands(None)), arr)
    with pytest.raises(RsdmlError, match="band 14"):
        imageio.read_bands(f, Bands((14,)))
    h = tmp_path / "f.tif"
    tifffile.imwrite(h, arr.astype(np.float32), photometric="minisblack")
    with pytest.raises(imageio.ImageReadError, match="--bands rgb"):
        imageio.read_bands(h, Bands(None))


def test_uint8_band_resize_equals_rgb_resize(tmp_path):
    """--bands 4,3,2 on 8-bit data gives exactly the pixels of RGB files of those bands."""
    arr = _ms(1, 23, 31, dtype=np.uint8)
    tifffile.imwrite(tmp_path / "ms.tif", arr, photometric="minisblack")
    Image.fromarray(np.ascontiguousarray(arr[:, :, [3, 2, 1]])).save(tmp_path / "rgb.png")
    a = imageio.read_resized_bands(tmp_path / "ms.tif", 16, Bands((4, 3, 2)))
    b = imageio.read_resized(tmp_path / "rgb.png", 16)
    assert a.dtype == np.uint8 and np.array_equal(a, b)


def test_uint16_resize_stays_uint16(tmp_path):
    arr = np.full((10, 10, 13), 60000, np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", arr, photometric="minisblack", planarconfig="contig")
    out = imageio.read_resized_bands(tmp_path / "a.tif", 7, Bands(None))
    assert out.shape == (7, 7, 13) and out.dtype == np.uint16 and (out == 60000).all()


def test_cache_uint16_round_trip_and_mismatch(tmp_path):
    root = tmp_path / "data" / "c"
    root.mkdir(parents=True)
    for i in range(3):
        tifffile.imwrite(root / f"{i}.tif", _ms(i, 16, 16), photometric="minisblack")
    paths = [f"c/{i}.tif" for i in range(3)]
    for mode in ("memory", "mmap"):
        cache = load_image_cache(tmp_path / "data", paths, 16, mode=mode,
                                 cache_dir=tmp_path / "cache", progress=False, bands=Bands(None))
        assert cache.images.dtype == torch.uint16 and cache.images.shape == (3, 13, 16, 16)
        want = _ms(1, 16, 16).transpose(2, 0, 1).astype(np.int64)
        assert np.array_equal(cache.images[1].numpy().astype(np.int64), want)
        assert cache.nbytes == 3 * 13 * 16 * 16 * 2
    # reused from the file (built: False), also for the other mode
    again = load_image_cache(tmp_path / "data", paths, 16, cache_dir=tmp_path / "cache",
                             progress=False, bands=Bands(None))
    assert not again.stats.built
    # the RGB cache of the same files is another cache (3 bands, 8-bit)
    rgb = load_image_cache(tmp_path / "data", paths, 16, cache_dir=tmp_path / "cache",
                           progress=False)
    assert rgb.images.shape == (3, 3, 16, 16) and rgb.images.dtype == torch.uint8
    tifffile.imwrite(root / "3.tif", _ms(3, 16, 16, bands=4), photometric="minisblack")
    with pytest.raises(RsdmlError, match="same bands"):
        load_image_cache(tmp_path / "data", [*paths, "c/3.tif"], 16,
                         cache_dir=tmp_path / "cache", progress=False, bands=Bands(None))


def test_band_statistics_on_constructed_data():
    images = torch.zeros(4, 2, 3, 3, dtype=torch.uint16)
    images[:, 0] = 1000
    images[0, 1] = 10
    images[1, 1] = 30
    images[2, 1] = 50000  # not a training image: must not count
    mean, std = band_statistics(images, np.array([0, 1]))
    assert mean == pytest.approx([1000.0, 20.0]) and std == pytest.approx([0.0, 10.0])
    norm = BandNormalize(mean, std)
    x = norm(images[:2])
    assert x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.zeros(2, 3, 3))  # constant band: centred, not /0
    assert torch.allclose(x[0, 1], torch.full((3, 3), -1.0))
    assert torch.allclose(x[1, 1], torch.full((3, 3), 1.0))


def test_input_spec_round_trip(tmp_path):
    images = torch.randint(0, 4000, (5, 4, 6, 6)).to(torch.uint16)
    spec = InputSpec.from_images(Bands((4, 3, 2, 8)), 13, images, np.arange(3))
    assert spec.rgb == (0, 1, 2) and spec.normalization == "bands" and spec.dtype == "uint16"
    spec.save(tmp_path / "bands.json")
    assert InputSpec.load(tmp_path / "bands.json") == spec
    rgb8 = InputSpec.from_images(Bands((4, 3, 2)), 13, images[:, :3].to(torch.uint8), [0])
    assert rgb8.normalization == "imagenet" and rgb8.normalizer() is None


def test_band_augment_is_seeded_and_keeps_shape():
    norm = BandNormalize([100.0] * 13, [10.0] * 13)
    aug = BandAugment(norm, extra=True)
    x = torch.randint(0, 4000, (6, 13, 8, 8)).to(torch.uint16)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and a.dtype == torch.float32 and torch.equal(a, b)
    flat = BandAugment(norm, jitter=0.0, hflip=False)
    assert torch.allclose(flat(x, torch.Generator()), norm(x))


def test_adapt_conv_weight_maps_rgb_and_rescales():
    w = torch.randn(8, 3, 3, 3)
    assert torch.equal(adapt_conv_weight(w, 3, (0, 1, 2)), w)
    new = adapt_conv_weight(w, 13, (3, 2, 1))
    assert new.shape == (8, 13, 3, 3)
    s = 3 / 13
    assert torch.allclose(new[:, 3], w[:, 0] * s) and torch.allclose(new[:, 1], w[:, 2] * s)
    assert torch.allclose(new[:, 0], w.mean(1) * s) and torch.allclose(new[:, 12], w.mean(1) * s)
    # a constant image of N bands gives the activation of the constant RGB image
    x3, x13 = torch.ones(1, 3, 5, 5), torch.ones(1, 13, 5, 5)
    f = torch.nn.functional.conv2d
    assert torch.allclose(f(x3, w), f(x13, new), atol=1e-5)


def test_adapt_input_channels_resnet():
    trunk = resnet18(False)
    before = trunk.conv1.weight.detach().clone()
    adapt_input_channels(trunk, 13, (3, 2, 1), pretrained=True)
    assert trunk.conv1.in_channels == 13
    assert torch.allclose(trunk.conv1.weight[:, 3], before[:, 0] * 3 / 13)
    assert trunk(torch.randn(2, 13, 32, 32)).shape == (2, 512)
    scratch = resnet18(False)
    adapt_input_channels(scratch, 5, None, pretrained=False)
    assert scratch.eval()(torch.randn(1, 5, 32, 32)).shape == (1, 512)


def test_thumbnail_uses_the_rgb_bands(tmp_path):
    from rsdml.evaluation.report import _thumbnail

    arr = np.zeros((16, 16, 13), np.uint16)
    arr[:, :8, 3] = 3000  # red (band 4) left half, blue (band 2) right half
    arr[:, 8:, 1] = 3000
    tifffile.imwrite(tmp_path / "a.tif", arr, photometric="minisblack", planarconfig="contig")
    rgb = imageio.read_rgb_bands(tmp_path / "a.tif", (4, 3, 2))
    assert rgb.dtype == np.uint8 and rgb[0, 0, 0] == 255 and rgb[0, 0, 2] == 0
    assert rgb[0, 15, 2] == 255 and rgb[0, 15, 0] == 0
    thumb = _thumbnail(tmp_path, "a.tif", (4, 3, 2))
    assert thumb is not None and thumb.shape[2] == 3 and thumb[0, 0, 0] == 255


@pytest.mark.parametrize("name", sorted(__import__("rsdml.models.registry",
                                                   fromlist=["BACKBONES"]).BACKBONES))
def test_every_backbone_adapts_to_13_bands(name):
    from rsdml.models.registry import create_backbone, first_conv

    try:
        trunk = create_backbone(name, pretrained="none")
    except RsdmlError as e:  # an optional backbone whose package is not installed
        pytest.skip(str(e))
    rgb = first_conv(trunk).weight.detach().clone()
    adapt_input_channels(trunk, 13, (3, 2, 1), pretrained=True)
    conv = first_conv(trunk)
    assert conv.in_channels == 13 and torch.allclose(conv.weight[:, 3], rgb[:, 0] * 3 / 13)
    for buf in ("_in_scale", "_in_shift"):  # EfficientNet-Lite's input map follows the bands
        if hasattr(trunk, buf):
            assert getattr(trunk, buf).shape[1] == 13
    assert trunk.eval()(torch.randn(1, 13, 64, 64)).shape == (1, trunk.num_features)


def test_uint16_above_int16_range_is_read_as_unsigned():
    from rsdml.data.bands import gather, to_float

    x = torch.tensor([0, 1, 40000, 65535], dtype=torch.int32).to(torch.uint16).view(4, 1, 1, 1)
    assert to_float(x).flatten().tolist() == [0.0, 1.0, 40000.0, 65535.0]
    picked = gather(x, torch.tensor([3, 2]))
    assert picked.dtype == torch.uint16 and to_float(picked).flatten().tolist() == [65535, 40000]
    mean, _ = band_statistics(x.reshape(1, 1, 2, 2))
    assert mean == pytest.approx([(1 + 40000 + 65535) / 4])
