"""Reading one image file into the model's input format: H x W x 3 uint8 RGB.

Remote-sensing archives hold more than 8-bit RGB JPEGs: grayscale, palette and RGBA PNGs,
CMYK JPEGs, 16-bit / float / multi-band GeoTIFFs, truncated downloads, files that are not
images at all. Every such case is either converted by a fixed rule (docs/data.md; each rule
warns once per process) or refused with an :class:`ImageReadError` that names the file.

TIFFs are decoded with tifffile (any dtype, any band count, channel-first or channel-last);
everything else with Pillow. EXIF orientation is deliberately *not* applied (docs/data.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from rsdml.data.bands import BAND_DTYPES, Bands
from rsdml.errors import RsdmlError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
"""File name endings that count as images (compared case-insensitively)."""

MAX_PIXELS: int = 178_956_970
"""Decompression-bomb limit on width x height (Pillow's own hard limit, about 13,377^2).
A scene tile is usually well below a megapixel; anything above this is refused."""

BYTES_PER_PIXEL: int = 8
"""The decoded-bytes limit is ``max_pixels`` x this unless given (``max_bytes``): what a
16-bit RGBA image at the pixel limit takes. A multi-band TIFF passes the pixel check with every
band still to allocate (13 bands of uint16 are 26 bytes a pixel), so its decoded size, height x
width x bands x bytes per sample, is checked against this from the header, before decoding."""

STRETCH_PERCENTILES: tuple[float, float] = (2.0, 98.0)
"""Per-band linear stretch applied to 16-bit, 32-bit and float data (docs/data.md)."""

# We enforce ``max_pixels`` ourselves before decoding, so Pillow's softer warning threshold
# (half of its hard limit) would only add noise; its hard limit still applies.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SUPPORTED_KINDS = "biuf"  # bool, signed / unsigned integer, float
_HEAD_BYTES = 1 << 16  # JPEG headers (EXIF thumbnail included) nearly always fit
_TAIL_BYTES = 4096
_JPEG_PADDING = b"\x00\r\n\t "  # some writers pad after the end-of-image marker

# tifffile logs every malformed tag of a damaged file; the check reports such a file once,
# so its messages are muted while rsdml reads a TIFF (per thread, nothing else is touched).
_tiff_quiet = threading.local()


class _MuteWhileReading(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_tiff_quiet, "on", False)


logging.getLogger("tifffile").addFilter(_MuteWhileReading())


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    before = getattr(_tiff_quiet, "on", False)
    _tiff_quiet.on = True
    try:
        yield
    finally:
        _tiff_quiet.on = before


_warned: set[str] = set()
_warned_lock = threading.Lock()

_RULES = {
    "grayscale": "grayscale images are replicated to 3 channels",
    "palette": "palette images are converted to RGB through their palette",
    "alpha": "the alpha channel of RGBA / LA / PA images is dropped (colour kept as stored)",
    "cmyk": "CMYK images are converted to RGB with Pillow's CMYK->RGB conversion",
    "stretch": "16-bit, 32-bit and float images are converted to 8-bit with a per-band "
    "2-98 percentile linear stretch",
    "two_band": "2-band images become RGB = (band 1, band 2, mean of both)",
    "many_bands": "images with more than 3 bands keep only the first three bands as RGB "
    "(--bands all or --bands 4,3,2,8 keeps the others; docs/data.md)",
    "multi_frame": "multi-frame / multi-page images use the first frame only",
}


class ImageReadError(RsdmlError):
    """An image file cannot be used; the message is one line naming the file and the fix.

    ``kind`` is a short category ("corrupt", "too_large", "unsupported", "unreadable") that
    the folder scan uses to group problems.
    """

    def __init__(self, path: str | Path, kind: str, detail: str) -> None:
        self.path = str(path)
        self.kind = kind
        self.detail = detail
        fix = {
            "too_large": "downscale or tile it, or remove it from the data folder",
            "unreadable": "check its permissions",
        }.get(kind, "remove it or re-save it as an 8-bit RGB PNG/JPEG")
        super().__init__(f"cannot read image {self.path}: {detail}; {fix}")


def _warn_rule(rule: str, path: str | Path) -> None:
    """Warn the first time a conversion rule applies in this process (not once per file)."""
    with _warned_lock:
        if rule in _warned:
            return
        _warned.add(rule)
    log.warning("%s (first seen in %s; see docs/data.md)", _RULES[rule], path)


def _reset_warnings() -> None:
    """Forget which rules have warned (for tests)."""
    with _warned_lock:
        _warned.clear()


def _too_large(w: int, h: int, max_pixels: int) -> str | None:
    if w * h > max_pixels:
        return f"{w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} (MAX_PIXELS)"
    return None


def _byte_limit(max_pixels: int, max_bytes: int | None) -> int:
    return max_pixels * BYTES_PER_PIXEL if max_bytes is None else max_bytes


def _too_many_bytes(shape: tuple[int, ...], itemsize: int, max_bytes: int) -> str | None:
    n = math.prod(shape) * itemsize
    if n > max_bytes:
        dims = "x".join(str(d) for d in shape)
        return (f"{dims} samples of {itemsize} byte(s) decode to {n:,} bytes, above the limit "
                f"of {max_bytes:,}")
    return None


def _sniff(path: Path, head_bytes: int = 16) -> tuple[bytes, int, bytes]:
    """(first ``head_bytes`` bytes, file size, last bytes); ImageReadError if unopenable."""
    try:
        with open(path, "rb") as f:
            head = f.read(head_bytes)
            size = f.seek(0, 2)
            if size <= len(head):
                tail = head[-_TAIL_BYTES:]
            else:
                f.seek(max(0, size - _TAIL_BYTES))
                tail = f.read()
    except IsADirectoryError:
        raise ImageReadError(path, "unreadable", "is a folder, not a file") from None
    except FileNotFoundError:
        raise ImageReadError(path, "unreadable", "file not found") from None
    except PermissionError:
        raise ImageReadError(path, "unreadable", "permission denied") from None
    except OSError as e:
        raise ImageReadError(path, "unreadable", f"cannot open ({e.strerror or e})") from None
    if size == 0:
        raise ImageReadError(path, "corrupt", "empty file (0 bytes)")
    return head, size, tail


# --------------------------------------------------------------------------- conversion


def _stretch(band: np.ndarray) -> np.ndarray:
    """One band of any numeric dtype -> uint8 by the documented percentile stretch."""
    data = band.astype(np.float64, copy=False)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(band.shape, np.uint8)
    lo, hi = np.percentile(data[finite], STRETCH_PERCENTILES)
    if hi <= lo:  # constant band (after clipping the tails): no contrast to stretch
        return np.zeros(band.shape, np.uint8)
    out = (np.where(finite, data, lo) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _bands_to_rgb(arr: np.ndarray, path: Path) -> np.ndarray:
    """H x W x B array of any supported dtype -> H x W x 3 uint8 by the documented rules."""
    if arr.dtype.kind not in _SUPPORTED_KINDS:
        raise ImageReadError(path, "unsupported", f"unsupported pixel type {arr.dtype}")
    bands = arr.shape[2]
    if bands > 3:
        _warn_rule("many_bands", path)
        arr = arr[:, :, :3]
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        _warn_rule("stretch", path)
        arr = np.stack([_stretch(arr[:, :, i]) for i in range(arr.shape[2])], axis=2)
    if arr.shape[2] == 1:
        _warn_rule("grayscale", path)
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 2:
        _warn_rule("two_band", path)
        mean = ((arr[:, :, 0].astype(np.uint16) + arr[:, :, 1] + 1) // 2).astype(np.uint8)
        arr = np.concatenate([arr, mean[:, :, None]], axis=2)
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------- TIFF


def _tiff_layout(shape: tuple[int, ...], axes: str) -> tuple[int, int, list[int]]:
    """(height, width, axis order giving H, W, then bands...) for a tifffile series.

    Explicit sample / channel axes (YXS, SYX, CYX) are trusted. For a stack of pages (axes
    Q or I: one page per band, or tifffile's default for channel-last data written without
    ``photometric``) the smaller of the first and last dimension is the band axis.
    """
    keep = [i for i, n in enumerate(shape) if n != 1]
    shape_k = [shape[i] for i in keep]
    axes_k = "".join(axes[i] for i in keep) if len(axes) == len(shape) else ""
    if len(keep) == 0:
        return 1, 1, []
    if len(keep) == 1:
        raise ValueError(f"one-dimensional image data of shape {shape}")
    if len(keep) == 2:
        return shape_k[0], shape_k[1], keep
    if len(keep) == 3 and not ({"S", "C"} & set(axes_k)):
        # no trustworthy axis labels: the band axis is the smaller end
        if shape_k[2] < shape_k[0]:
            return shape_k[0], shape_k[1], keep
        return shape_k[1], shape_k[2], [keep[1], keep[2], keep[0]]
    if "Y" in axes_k and "X" in axes_k:
        y, x = axes_k.index("Y"), axes_k.index("X")
    else:
        y, x = len(keep) - 2, len(keep) - 1
    rest = [j for j in range(len(keep)) if j not in (y, x)]
    # samples (S) vary fastest, so that the first bands are the first page's samples
    rest.sort(key=lambda j: axes_k[j] == "S" if axes_k else False)
    order = [keep[y], keep[x]] + [keep[j] for j in rest]
    return shape_k[y], shape_k[x], order


def _tiff_photometric(page: Any) -> str:
    try:
        return tifffile.PHOTOMETRIC(page.photometric).name
    except (ValueError, TypeError):
        return "UNKNOWN"


def _check_tiff(path: Path, size: int, max_pixels: int, codec_check: bool = True,
                max_bytes: int | None = None) -> None:
    """Header-only TIFF check: readable tags, sane shape and dtype, data inside the file.

    ``codec_check``: for a compression tifffile cannot decode alone, decode it with Pillow
    now (the fallback read_rgb uses), so the check never keeps a file read_rgb refuses.
    """
    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tf:
            if not tf.series:
                raise ImageReadError(path, "corrupt", "TIFF holds no image data")
            series = tf.series[0]
            if np.dtype(series.dtype).kind not in _SUPPORTED_KINDS:
                raise ImageReadError(path, "unsupported", f"unsupported pixel type {series.dtype}")
            shape = tuple(int(n) for n in series.shape)
            if len(series.axes) != len(shape) or 0 in shape:
                raise ImageReadError(path, "corrupt", f"damaged TIFF (image shape {shape})")
            h, w, _ = _tiff_layout(shape, series.axes)
            if (msg := _too_large(w, h, max_pixels)) is not None:
                raise ImageReadError(path, "too_large", msg)
            limit = _byte_limit(max_pixels, max_bytes)
            if (msg := _too_many_bytes(shape, np.dtype(series.dtype).itemsize, limit)):
                raise ImageReadError(path, "too_large", msg)
            pages = [p for p in series.pages if p is not None]
            if not pages or sum(math.prod(p.shape) for p in pages) != math.prod(shape):
                raise ImageReadError(path, "corrupt", "damaged TIFF (pages do not match shape)")
            itemsize = np.dtype(series.dtype).itemsize
            for page in pages:
                counts = [int(n) for n in page.databytecounts]
                ends = [int(o) + n for o, n in zip(page.dataoffsets, counts) if n]
                if not ends:
                    raise ImageReadError(path, "corrupt", "TIFF page has no image data")
                if max(ends) > size:
                    raise ImageReadError(
                        path, "corrupt", "truncated TIFF (image data runs past the end of file)"
                    )
                uncompressed = int(page.compression) == 1 and page.bitspersample % 8 == 0
                if uncompressed and sum(counts) < math.prod(page.shape) * itemsize:
                    raise ImageReadError(
                        path, "corrupt", "damaged TIFF (strips hold fewer bytes than the image)"
                    )
            first = pages[0]
    except ImageReadError:
        raise
    except Exception as e:  # tifffile raises many types on malformed headers
        raise ImageReadError(path, "corrupt", f"damaged TIFF ({_short(e)})") from None
    if codec_check and not _tifffile_decodes(first):
        try:
            _read_pil(path, max_pixels)
        except ImageReadError as e:
            raise _no_codec(path, first, e) from None


def _tifffile_decodes(page: Any) -> bool:
    """Whether tifffile can decode ``page`` without the optional imagecodecs package."""
    try:
        return (
            int(page.compression) in tifffile.TIFF.DECOMPRESSORS
            and int(page.predictor) in tifffile.TIFF.UNPREDICTORS
        )
    except Exception:
        return False


def _no_codec(path: Path, page: Any, pil_error: ImageReadError) -> ImageReadError:
    name = getattr(page.compression, "name", str(page.compression))
    return ImageReadError(
        path,
        "unsupported",
        f"TIFF compression {name} (predictor {int(page.predictor)}) needs the imagecodecs "
        f"package (pip install imagecodecs); Pillow: {pil_error.detail}",
    )


def _read_tiff(path: Path, size: int, max_pixels: int, raw: bool = False,
               max_bytes: int | None = None) -> np.ndarray:
    """The TIFF as H x W x 3 uint8 by the RGB rules, or (``raw``) as H x W x bands in its own
    dtype (for the multispectral path; a TIFF only Pillow decodes comes back as RGB)."""
    _check_tiff(path, size, max_pixels, codec_check=False, max_bytes=max_bytes)
    try:
        with _quiet_tifffile(), tifffile.TiffFile(path) as tf:
            series = tf.series[0]
            page = series.pages[0]
            photometric = _tiff_photometric(page)
            extrasamples = tuple(int(e) for e in (getattr(page, "extrasamples", ()) or ()))
            colormap = getattr(page, "colormap", None)
            if len(series.pages) > 1 and series.axes[:1] == "I":
                _warn_rule("multi_frame", path)
            series_shape = tuple(int(n) for n in series.shape)
            h, w, order = _tiff_layout(series_shape, series.axes)
            if not _tifffile_decodes(page):
                # e.g. LZW or JPEG without the optional imagecodecs package: Pillow/libtiff
                # decodes the common ones itself (with Pillow's mode rules)
                try:
                    return _read_pil(path, max_pixels)
                except ImageReadError as e:
                    raise _no_codec(path, page, e) from None
            arr = series.asarray()
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(path, "corrupt", f"cannot decode TIFF ({_short(e)})") from None
    if arr.ndim != len(series_shape):
        raise ImageReadError(path, "corrupt", f"damaged TIFF (data {arr.shape} vs {series_shape})")
    # singleton axes go last: they do not change the H x W x bands layout
    order = order + [i for i in range(arr.ndim) if i not in order]
    arr = np.transpose(arr, order).reshape(h, w, -1)
    if raw:
        return arr
    if photometric == "PALETTE" and colormap is not None and arr.shape[2] == 1:
        _warn_rule("palette", path)
        cmap = np.asarray(colormap)
        idx = np.clip(arr[:, :, 0].astype(np.int64), 0, cmap.shape[1] - 1)
        rgb = cmap[:, idx].transpose(1, 2, 0)
        return (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 else rgb.astype(np.uint8)
    if photometric == "SEPARATED" and arr.shape[2] == 4 and arr.dtype == np.uint8:
        _warn_rule("cmyk", path)
        return np.asarray(Image.fromarray(np.ascontiguousarray(arr), "CMYK").convert("RGB"))
    if photometric == "MINISWHITE":  # 0 means white: flip to the usual sense
        if arr.dtype == np.bool_:
            arr = ~arr
        elif arr.dtype.kind == "u":
            arr = np.iinfo(arr.dtype).max - arr
        else:
            arr = -arr.astype(np.float64)  # the stretch maps it to 0..255 anyway
    if arr.shape[2] in (2, 4) and extrasamples and extrasamples[-1] in (1, 2):
        _warn_rule("alpha", path)  # associated / unassociated alpha: drop it
        arr = arr[:, :, :-1]
    return _bands_to_rgb(arr, path)


# --------------------------------------------------------------------------- Pillow

_PIL_RULE = {"L": "grayscale", "1": "grayscale", "P": "palette", "PA": "alpha", "LA": "alpha",
             "La": "alpha", "RGBA": "alpha", "RGBa": "alpha", "CMYK": "cmyk"}


def _open_pil(path: Path, max_pixels: int) -> Image.Image:
    try:
        im = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, "too_large", _short(e)) from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "corrupt", "not a recognised image format") from None
    except Exception as e:
        raise ImageReadError(
            path, "corrupt", f"truncated or damaged header ({_short(e)})"
        ) from None
    if (msg := _too_large(*im.size, max_pixels)) is not None:
        im.close()
        raise ImageReadError(path, "too_large", msg)
    return im


def _read_pil(path: Path, max_pixels: int) -> np.ndarray:
    im = _open_pil(path, max_pixels)
    with im:
        if getattr(im, "n_frames", 1) > 1:
            _warn_rule("multi_frame", path)
        try:
            im.load()
        except Exception as e:
            raise ImageReadError(path, "corrupt", f"truncated or damaged ({_short(e)})") from None
        mode = im.mode
        if mode == "RGB":
            return np.asarray(im)
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            return _bands_to_rgb(np.asarray(im)[:, :, None], path)
        if mode == "P" and "transparency" in im.info:
            _warn_rule("palette", path)
            _warn_rule("alpha", path)
        elif mode in _PIL_RULE:
            _warn_rule(_PIL_RULE[mode], path)
        if mode in ("RGBa", "La"):  # premultiplied: undo it before dropping alpha
            im = im.convert(mode.replace("a", "A"))
        try:
            return np.asarray(im.convert("RGB"))
        except Exception as e:
            raise ImageReadError(
                path, "unsupported", f"unsupported image mode {mode} ({_short(e)})"
            ) from None


def _jpeg_size(buf: bytes) -> tuple[int, int] | None:
    """(width, height) from a clean baseline/progressive JPEG header, else None.

    A plain walk over the marker segments up to start-of-scan: several times faster than
    Pillow's parser. Anything unusual (other SOF types, odd lengths, no SOS in ``buf``)
    returns None and the caller falls back to Pillow, so this path only ever accepts.
    """
    if not buf.startswith(b"\xff\xd8"):
        return None
    i, n, dims = 2, len(buf), None
    while i + 4 <= n:
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # standalone markers: unexpected here
            return None
        length = (buf[i + 2] << 8) | buf[i + 3]
        if length < 2:
            return None
        if marker == 0xDA:  # start of scan: the header is complete
            return dims if i + 2 + length <= n else None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker > 0xC2 or dims is not None or i + 10 > n:
                return None  # lossless / arithmetic / hierarchical: let Pillow judge
            h = (buf[i + 5] << 8) | buf[i + 6]
            w = (buf[i + 7] << 8) | buf[i + 8]
            nc = buf[i + 9]
            if buf[i + 4] != 8 or not h or not w or nc not in (1, 3, 4) or length != 8 + 3 * nc:
                return None
            dims = (w, h)
        i += 2 + length
    return None


def _check_pil(path: Path, head: bytes, tail: bytes, max_pixels: int) -> None:
    """Header read plus a cheap per-format truncation check."""
    is_jpeg = head.startswith(_JPEG_MAGIC)
    has_eoi = is_jpeg and tail.rstrip(_JPEG_PADDING).endswith(b"\xff\xd9")
    if has_eoi and (dims := _jpeg_size(head)) is not None:
        if (msg := _too_large(*dims, max_pixels)) is not None:
            raise ImageReadError(path, "too_large", msg)
        return
    im = _open_pil(path, max_pixels)
    with im:
        try:
            if is_jpeg and has_eoi:
                return  # unusual header that Pillow accepts, ends properly
            if is_jpeg:
                # No end-of-image marker at the end: truncated, or valid with trailing
                # bytes. Only a full decode tells, and only such rare files pay for it.
                im.load()
            elif head.startswith(_PNG_MAGIC):
                im.verify()  # walks all chunks and checks their CRCs, no decompression
            else:
                im.load()  # rare formats behind an image extension: decode fully
        except Exception as e:
            what = "truncated JPEG" if is_jpeg else "truncated or damaged"
            raise ImageReadError(path, "corrupt", f"{what} ({_short(e)})") from None


# --------------------------------------------------------------------------- public API


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _diagnose(
    path: str | Path, max_pixels: int = MAX_PIXELS, full: bool = False
) -> ImageReadError | None:
    """The check behind :func:`check_image`, returning the error itself.

    ``full`` decodes the whole image (as :func:`read_rgb` does) instead of the fast check:
    several times slower, but it also finds damage inside the compressed data, which no
    header or end-marker test can see.
    """
    path = Path(path)
    if full:
        try:
            read_rgb(path, max_pixels=max_pixels)
        except ImageReadError as e:
            return e
        except Exception as e:  # read_rgb already maps decoder errors; belt and braces
            return ImageReadError(path, "corrupt", f"unexpected decoder error ({_short(e)})")
        return None
    try:
        head, size, tail = _sniff(path, _HEAD_BYTES)
        if head.startswith(_TIFF_MAGIC):
            _check_tiff(path, size, max_pixels)
        else:
            _check_pil(path, head, tail, max_pixels)
    except ImageReadError as e:
        return e
    except MemoryError:
        return ImageReadError(path, "too_large", "not enough memory to read it")
    except Exception as e:  # a decoder bug must not stop a scan of thousands of files
        return ImageReadError(path, "corrupt", f"unexpected decoder error ({_short(e)})")
    return None


def check_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> str | None:
    """Fast validity check (header + truncation test, no full decode for JPEG/PNG/TIFF).

    Returns ``None`` for a usable image, else ``"KIND: reason"`` where KIND is one of
    corrupt, too_large, unsupported, unreadable.
    """
    err = _diagnose(path, max_pixels)
    return None if err is None else f"{err.kind}: {err.detail}"


def read_rgb(path: str | Path, *, max_pixels: int = MAX_PIXELS,
             max_bytes: int | None = None) -> np.ndarray:
    """Decode ``path`` to an H x W x 3 uint8 array by the documented conversion rules."""
    return _decode(Path(path), max_pixels, raw=False, max_bytes=max_bytes)


def _decode(path: Path, max_pixels: int, *, raw: bool, max_bytes: int | None = None) -> np.ndarray:
    """A TIFF by tifffile (``raw``: its bands as stored), anything else by Pillow as RGB; every
    failure becomes one ImageReadError that says what is wrong with the file."""
    head, size, _ = _sniff(path)
    try:
        if head.startswith(_TIFF_MAGIC):
            return _read_tiff(path, size, max_pixels, raw=raw, max_bytes=max_bytes)
        return _read_pil(path, max_pixels)
    except ImageReadError:
        raise
    except MemoryError:
        raise ImageReadError(path, "too_large", "not enough memory to decode it") from None
    except Exception as e:
        raise ImageReadError(path, "corrupt", f"cannot decode ({_short(e)})") from None


def read_bands(path: str | Path, bands: Bands, *, max_pixels: int = MAX_PIXELS,
               max_bytes: int | None = None) -> np.ndarray:
    """Decode ``path`` to H x W x C keeping the selected bands at the file's bit depth
    (uint8 or uint16): the multispectral input (``--bands all|LIST``). A file that is not a
    TIFF is read as RGB (3 bands, uint8) by the RGB rules."""
    path = Path(path)
    arr = _decode(path, max_pixels, raw=True, max_bytes=max_bytes)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype.name not in BAND_DTYPES:
        raise ImageReadError(
            path, "unsupported", f"pixel type {arr.dtype} is not kept by --bands (8- or 16-bit "
            "unsigned integers only); convert the files, or use --bands rgb (8-bit stretch)")
    return np.ascontiguousarray(arr[:, :, bands.indices(arr.shape[2], path)])


def read_rgb_bands(path: str | Path, rgb: Sequence[int], *,
                   max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """H x W x 3 uint8 of the bands ``rgb`` (1-based: red, green, blue), each stretched by
    the documented percentile rule: a multispectral scene as people look at it."""
    arr = read_bands(path, Bands(tuple(rgb)), max_pixels=max_pixels)
    if arr.dtype == np.uint8:
        return arr
    return np.stack([_stretch(arr[:, :, i]) for i in range(arr.shape[2])], axis=2)


def read_resized_bands(path: str | Path, size: int, bands: Bands, *,
                       max_pixels: int = MAX_PIXELS, max_bytes: int | None = None) -> np.ndarray:
    """:func:`read_bands` resized to ``size`` x ``size`` band by band, in the same dtype.

    8-bit bands are resized in Pillow's mode L, which gives exactly the pixels of the RGB
    path's resize (``--bands 4,3,2`` on 8-bit data equals RGB files of those bands); 16-bit
    bands in mode F (bilinear, antialiased), rounded back to uint16.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    arr = read_bands(path, bands, max_pixels=max_pixels, max_bytes=max_bytes)
    if arr.shape[:2] == (size, size):
        return arr
    out = np.empty((int(size), int(size), arr.shape[2]), dtype=arr.dtype)
    for i in range(arr.shape[2]):
        if arr.dtype == np.uint8:
            im = Image.fromarray(arr[:, :, i], "L")
            out[:, :, i] = np.asarray(im.resize((int(size), int(size)), Image.BILINEAR))
        else:
            im = Image.fromarray(arr[:, :, i].astype(np.float32), "F")
            band = np.asarray(im.resize((int(size), int(size)), Image.BILINEAR))
            out[:, :, i] = np.clip(np.rint(band), 0, np.iinfo(arr.dtype).max)
    return out


def read_resized(path: str | Path, size: int, *, max_pixels: int = MAX_PIXELS,
                 max_bytes: int | None = None) -> np.ndarray:
    """Decode and resize to ``size`` x ``size`` (bilinear, antialiased): the cached input.

    Deterministic (Pillow's fixed-point resampling of the uint8 RGB array), so the cache and
    evaluation see the same pixels on every call. The aspect ratio is not kept.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    rgb = read_rgb(path, max_pixels=max_pixels, max_bytes=max_bytes)
    im = Image.fromarray(rgb)
    if im.size != (size, size):
        im = im.resize((int(size), int(size)), Image.BILINEAR)
    return np.asarray(im)

