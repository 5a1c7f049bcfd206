"""Decoding rules of rsdml.data.imageio, one test per case (docs/data.md)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from rsdml.data.imageio import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    ImageReadError,
    check_image,
    read_resized,
    read_rgb,
)
from rsdml.errors import RsdmlError

LOGGER = "rsdml.data.imageio"


def _rgb(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def jpeg_bytes(h: int = 12, w: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_rgb(h, w)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelname == "WARNING"]


def test_public_constants() -> None:
    assert set(IMAGE_EXTENSIONS) == {".jpg", ".jpeg", ".png", ".tif", ".tiff"}
    assert MAX_PIXELS == 178_956_970
    assert issubclass(ImageReadError, RsdmlError)


def test_rgb_png_is_read_exactly(tmp_path: Path) -> None:
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_rgb(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3)
    np.testing.assert_array_equal(out, rgb)
    assert check_image(tmp_path / "a.png") is None


def test_grayscale_is_replicated_and_warns_once(tmp_path, caplog) -> None:
    gray = _rgb()[:, :, 0]
    for name in ("g1.png", "g2.png"):
        Image.fromarray(gray).save(tmp_path / name)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        a = read_rgb(tmp_path / "g1.png")
        read_rgb(tmp_path / "g2.png")
    for c in range(3):
        np.testing.assert_array_equal(a[:, :, c], gray)
    msgs = _warnings(caplog)
    assert len(msgs) == 1 and "grayscale" in msgs[0] and "g1.png" in msgs[0]


def test_palette_goes_through_its_palette(tmp_path, caplog) -> None:
    im = Image.fromarray(_rgb()).convert("P")
    im.save(tmp_path / "p.png")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = read_rgb(tmp_path / "p.png")
    pal = np.array(im.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(out, pal[np.asarray(im)])
    assert any("palette" in m for m in _warnings(caplog))


def test_rgba_drops_alpha_and_keeps_stored_colour(tmp_path, caplog) -> None:
    rgb = _rgb()
    alpha = np.zeros(rgb.shape[:2], np.uint8)  # fully transparent: colour must survive
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "a.png")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = read_rgb(tmp_path / "a.png")
    np.testing.assert_array_equal(out, rgb)
    assert any("alpha" in m for m in _warnings(caplog))


def test_cmyk_jpeg_is_converted_by_pillow(tmp_path, caplog) -> None:
    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "c.jpg")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = read_rgb(tmp_path / "c.jpg")
    with Image.open(tmp_path / "c.jpg") as im:
        assert im.mode == "CMYK"
        expected = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(out, expected)
    assert any("CMYK" in m for m in _warnings(caplog))


def test_16bit_tiff_uses_2_98_percentile_stretch(tmp_path, caplog) -> None:
    band = np.arange(100, dtype=np.uint16).reshape(10, 10)  # values 0..99
    tifffile.imwrite(tmp_path / "a.tif", band)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = read_rgb(tmp_path / "a.tif")
    # hand-computed: p2 = 1.98, p98 = 97.02 -> v maps to round((v - 1.98) * 255 / 95.04)
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 0 and out[9, 9, 0] == 255
    assert out[5, 0, 0] == 129  # v = 50: 48.02 * 255 / 95.04 = 128.84
    assert out[0, 2, 0] == 0  # v = 2: 0.02 * 2.683 = 0.05
    assert out[1, 0, 0] == 22  # v = 10: 8.02 * 2.683 = 21.52
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 1])
    assert any("percentile" in m for m in _warnings(caplog))


def test_16bit_png_follows_the_same_rule_as_tiff(tmp_path) -> None:
    band = (np.random.default_rng(1).integers(0, 4096, (9, 11))).astype(np.uint16)
    Image.fromarray(band).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode.startswith("I")
    tifffile.imwrite(tmp_path / "a.tif", band)
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.png"), read_rgb(tmp_path / "a.tif"))


def test_float_tiff_with_nan_is_stretched_per_band(tmp_path) -> None:
    data = np.random.default_rng(2).normal(size=(10, 12, 3)).astype(np.float32)
    data[:, :, 2] *= 1000  # band scale must not matter: stretched per band
    data[0, 0, :] = np.nan
    tifffile.imwrite(tmp_path / "f.tif", data, photometric="rgb")
    out = read_rgb(tmp_path / "f.tif")
    assert out.dtype == np.uint8 and out.shape == (10, 12, 3)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])  # non-finite -> lower bound
    for c in range(3):
        assert out[:, :, c].max() == 255 and out[1:, :, c].min() == 0


def test_constant_band_becomes_zero(tmp_path) -> None:
    tifffile.imwrite(tmp_path / "c.tif", np.full((6, 6), 1234, np.uint16))
    assert read_rgb(tmp_path / "c.tif").max() == 0


@pytest.mark.parametrize(
    "layout",
    [
        dict(planarconfig="separate"),  # SYX: band-interleaved GeoTIFF
        dict(planarconfig="contig"),  # YXS: pixel-interleaved GeoTIFF
        dict(),  # one page per band (tifffile's default for a stack)
    ],
)
def test_five_band_tiff_keeps_first_three_bands(tmp_path, caplog, layout) -> None:
    bands = np.random.default_rng(3).integers(0, 5000, (5, 10, 14)).astype(np.uint16)
    data = bands.transpose(1, 2, 0) if layout.get("planarconfig") == "contig" else bands
    tifffile.imwrite(tmp_path / "m.tif", data, photometric="minisblack", **layout)
    tifffile.imwrite(tmp_path / "rgb.tif", bands[:3].transpose(1, 2, 0), photometric="rgb")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = read_rgb(tmp_path / "m.tif")
    np.testing.assert_array_equal(out, read_rgb(tmp_path / "rgb.tif"))
    assert out.shape == (10, 14, 3)
    assert any("first three bands" in m for m in _warnings(caplog))


def test_channel_last_stack_written_without_photometric(tmp_path) -> None:
    # tifffile stores (H, W, 5) as H pages of W x 5; the small end is the band axis
    bands = np.random.default_rng(4).integers(0, 5000, (10, 14, 5)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "m.tif", bands, photometric="minisblack")
    tifffile.imwrite(tmp_path / "rgb.tif", bands[:, :, :3], photometric="rgb")
    np.testing.assert_array_equal(read_rgb(tmp_path / "m.tif"), read_rgb(tmp_path / "rgb.tif"))


def test_two_band_tiff_is_b1_b2_mean(tmp_path, caplog) -> None:
    b = np.zeros((2, 4, 4), np.uint8)
    b[0] = 200
    b[1] = 51
    b[0, 0, 0] = b[1, 0, 0] = 0
    tifffile.imwrite(tmp_path / "two.tif", b, photometric="minisblack", planarconfig="separate")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = read_rgb(tmp_path / "two.tif")
    np.testing.assert_array_equal(out[1, 1], [200, 51, 126])  # (200 + 51 + 1) // 2
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    assert any("2-band" in m for m in _warnings(caplog))


def test_rgba_tiff_drops_alpha_without_band_warning(tmp_path, caplog) -> None:
    rgb = _rgb()
    data = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])
    tifffile.imwrite(tmp_path / "a.tif", data, photometric="rgb", extrasamples=["unassalpha"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = read_rgb(tmp_path / "a.tif")
    np.testing.assert_array_equal(out, rgb)
    msgs = _warnings(caplog)
    assert any("alpha" in m for m in msgs) and not any("three bands" in m for m in msgs)


@pytest.mark.parametrize("mode", ["P", "CMYK", "1"])
def test_tiff_modes_match_pillow_conversion(tmp_path, mode) -> None:
    im = Image.fromarray(_rgb()).convert(mode)
    im.save(tmp_path / "m.tif")
    np.testing.assert_array_equal(read_rgb(tmp_path / "m.tif"), np.asarray(im.convert("RGB")))


def test_miniswhite_tiff_is_inverted_like_pillow(tmp_path) -> None:
    bits = np.zeros((4, 8), bool)
    bits[:, :4] = True  # stored 1 = black under MinIsWhite
    tifffile.imwrite(tmp_path / "w.tif", bits, photometric="miniswhite")
    out = read_rgb(tmp_path / "w.tif")
    with Image.open(tmp_path / "w.tif") as im:
        np.testing.assert_array_equal(out, np.asarray(im.convert("RGB")))
    assert out[0, 0, 0] == 0 and out[0, 7, 0] == 255


def test_lzw_tiff_without_imagecodecs_falls_back_to_pillow(tmp_path) -> None:
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    assert check_image(tmp_path / "lzw.tif") is None
    np.testing.assert_array_equal(read_rgb(tmp_path / "lzw.tif"), rgb)


def test_exif_orientation_is_not_applied(tmp_path) -> None:
    im = Image.fromarray(_rgb(h=10, w=20))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert read_rgb(tmp_path / "o.jpg").shape == (10, 20, 3)  # pixels as stored


def test_truncated_jpeg(tmp_path) -> None:
    data = jpeg_bytes(h=64, w=64)
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    reason = check_image(tmp_path / "t.jpg")
    assert reason is not None and reason.startswith("corrupt:") and "truncated" in reason
    with pytest.raises(ImageReadError, match=r"t\.jpg") as info:
        read_rgb(tmp_path / "t.jpg")
    assert info.value.kind == "corrupt" and "\n" not in str(info.value)


def test_jpeg_with_trailing_bytes_is_accepted(tmp_path) -> None:
    (tmp_path / "t.jpg").write_bytes(jpeg_bytes() + b"trailing junk from a camera")
    assert check_image(tmp_path / "t.jpg") is None
    assert read_rgb(tmp_path / "t.jpg").shape == (12, 16, 3)


def test_random_bytes_named_jpg(tmp_path, write_image) -> None:
    write_image(tmp_path / "r.jpg", "random")
    assert check_image(tmp_path / "r.jpg").startswith("corrupt:")
    with pytest.raises(ImageReadError, match=r"r\.jpg.*not a recognised image"):
        read_rgb(tmp_path / "r.jpg")


def test_empty_file(tmp_path) -> None:
    (tmp_path / "e.png").write_bytes(b"")
    assert check_image(tmp_path / "e.png") == "corrupt: empty file (0 bytes)"


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_truncated_png_and_tiff(tmp_path, write_image, ext) -> None:
    path = tmp_path / f"full.{ext}"
    write_image(path, "png" if ext == "png" else "tiff16")
    data = path.read_bytes()
    (tmp_path / f"cut.{ext}").write_bytes(data[: len(data) - 40])
    assert check_image(path) is None
    reason = check_image(tmp_path / f"cut.{ext}")
    assert reason is not None and reason.startswith("corrupt:")
    with pytest.raises(ImageReadError):
        read_rgb(tmp_path / f"cut.{ext}")


def test_complex_tiff_is_unsupported(tmp_path) -> None:
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((4, 4), np.complex64))
    assert check_image(tmp_path / "c.tif").startswith("unsupported:")


@pytest.mark.parametrize("kind", ["jpeg", "png", "tiff16"])
def test_decompression_bomb_is_refused(tmp_path, write_image, kind) -> None:
    path = write_image(tmp_path / f"big.{'tif' if kind == 'tiff16' else kind}", kind)
    assert check_image(path, max_pixels=12 * 16) is None  # exactly at the limit is fine
    reason = check_image(path, max_pixels=100)
    assert reason is not None and reason.startswith("too_large:") and "192" in reason
    with pytest.raises(ImageReadError, match="MAX_PIXELS"):
        read_rgb(path, max_pixels=100)


def test_pillow_bomb_error_becomes_image_read_error(tmp_path, write_image, monkeypatch) -> None:
    write_image(tmp_path / "p.png", "png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # Pillow refuses above 2x this
    with pytest.raises(ImageReadError) as info:
        read_rgb(tmp_path / "p.png")
    assert info.value.kind == "too_large"


def test_missing_file_and_folder(tmp_path) -> None:
    assert check_image(tmp_path / "nope.jpg").startswith("unreadable:")
    (tmp_path / "d.jpg").mkdir()
    assert check_image(tmp_path / "d.jpg").startswith("unreadable:")


def test_read_resized_is_bilinear_square_and_deterministic(tmp_path) -> None:
    rgb = _rgb(h=30, w=50)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    a = read_resized(tmp_path / "a.png", 20)
    b = read_resized(tmp_path / "a.png", 20)
    assert a.shape == (20, 20, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    expected = np.asarray(Image.fromarray(rgb).resize((20, 20), Image.BILINEAR))
    np.testing.assert_array_equal(a, expected)
    Image.fromarray(rgb[:20, :20]).save(tmp_path / "s.png")
    np.testing.assert_array_equal(read_resized(tmp_path / "s.png", 20), rgb[:20, :20])


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_read_resized_rejects_bad_size(tmp_path, write_image, size) -> None:
    write_image(tmp_path / "a.png", "png")
    with pytest.raises(ValueError, match="size"):
        read_resized(tmp_path / "a.png", size)
