"""The decoded-image cache: every image decoded and resized once, to uint8 at the training
resolution, instead of once per epoch.

Why: decoding and resizing JPEGs costs more than the model step on a CPU and starves a GPU.
The cache is one file per (data set version, resolution) under ``cache_dir`` (never beside
the images: the data folder may be read-only), held fully in RAM or memory-mapped when it is
larger than the memory budget. The file name carries a hash of the resolved data root, the
relative paths, every file's size and mtime (ns), the resolution, the format version and the
decoder's source, so any change makes a new cache.

File layout: a 4096-byte header (magic, then JSON: key, shape, dtype, CRC-32 of the data),
then the (N, 3, S, S) uint8 array; with ``--bands all|LIST`` (``bands=``) the (N, C, S, S)
array of the selected bands in the data's own bit depth (uint8 or uint16). A builder holds an exclusive ``flock`` on
``<file>.lock``, writes a temporary file, fsyncs it and ``os.replace``-s it into place, so a
reader sees either no file or a complete one; a second process building the same cache waits
on the lock and then reuses the first one's file. A file whose header, size or checksum is
wrong is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import secrets
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from rsdml.config import CACHE_MODES
from rsdml.data import imageio
from rsdml.data.bands import Bands
from rsdml.data.identity import add_files
from rsdml.errors import RsdmlError
from rsdml.fsutil import fsync_dir, touch
from rsdml.progress import progress as _progress

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: builds are still atomic, just not locked
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_MAGIC = b"RSDMLIMG"
_HEADER_BYTES = 4096
_IO_CHUNK = 16 * 2**20
_SUFFIX = ".rsdml-images"
_UINT8 = np.dtype(np.uint8)
#: The image cache files of a cache folder (named in ``load_image_cache``).
IMAGE_CACHE_GLOB = f"images-*{_SUFFIX}"


def default_cache_dir() -> Path:
    """``$RSDML_CACHE`` when set, else ``~/.cache/rsdml``."""
    env = os.environ.get("RSDML_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rsdml"


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (``ru_maxrss``), in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if os.uname().sysname == "Darwin" else int(peak) * 1024


@dataclass
class CacheStats:
    """What building or loading the cache cost; the benchmarks print :meth:`as_dict`.

    ``resident_bytes`` is the anonymous RAM the cache holds (the whole array in memory mode,
    0 in mmap mode, whose pages are reclaimable page cache). ``peak_rss_bytes`` is the
    process's peak RSS right after the build/load (it includes everything else the process
    did before, and mapped file pages it touched).
    """

    mode: str
    nbytes: int
    resident_bytes: int
    built: bool
    persisted: bool
    decode_seconds: float
    load_seconds: float
    peak_rss_bytes: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class ImageCache:
    """N decoded images as one (N, C, S, S) CPU tensor (in RAM or memory-mapped): C = 3 and
    uint8 by the RGB rules, else the selected bands in uint8 or uint16."""

    def __init__(self, images: torch.Tensor, size: int, path: Path | None, stats: CacheStats):
        self.images = images
        self.size = size
        self.path = path
        self.stats = stats

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def mode(self) -> str:
        return self.stats.mode

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return f"ImageCache(n={len(self)}, size={self.size}, mode={self.mode}, path={self.path})"

    def batch(self, index: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Images ``index`` as a new (B, 3, S, S) uint8 CPU tensor (or into ``out``, e.g. a
        pinned buffer reused every step)."""
        index = torch.as_tensor(index).to(device="cpu", dtype=torch.long)
        if out is not None:
            return torch.index_select(self.images, 0, index, out=out)
        return self.images.index_select(0, index)


class UndecodableImagesError(RsdmlError):
    """Images that passed the fast check before training but fail to decode (damage inside
    their compressed data). ``paths`` are relative to the data root; a caller that may still
    change its image list (a new run, ``rsdml embed``) leaves them out and builds again."""

    def __init__(self, root: Path, errors: dict[str, imageio.ImageReadError]) -> None:
        self.paths = sorted(errors)
        self.details = {p: errors[p].detail for p in self.paths}
        shown = ", ".join(f"{p} ({self.details[p]})" for p in self.paths[:3])
        more = f" (+{len(self.paths) - 3} more)" if len(self.paths) > 3 else ""
        super().__init__(
            f"{len(self.paths)} image(s) in {root} cannot be decoded (damaged inside their "
            f"compressed data): {shown}{more}; remove or re-save them"
        )


class _Corrupt(Exception):
    """The cache file exists but cannot be trusted (the message says why)."""


class _WriteFailed(Exception):
    """Writing the cache file failed (disk full, read-only, ...); the build goes to RAM."""


def load_image_cache(
    root: str | Path,
    paths: Sequence[str],
    size: int,
    *,
    mode: str = "auto",
    cache_dir: str | Path | None = None,
    max_memory_bytes: int = 4 * 2**30,
    workers: int = 0,
    progress: bool = True,
    bands: Bands | None = None,
) -> ImageCache:
    """The images ``root/paths[i]`` decoded by ``imageio.read_resized(..., size)``, built once
    and reused while the files, their sizes and mtimes and ``size`` stay the same.

    ``mode``: ``memory`` (whole array in RAM), ``mmap`` (read-only file mapping), ``auto``
    (memory when N*3*S*S <= ``max_memory_bytes``, else mmap). ``workers`` decoding threads
    (0 = one per CPU). ``bands``: keep these bands at the data's bit depth
    (``imageio.read_resized_bands``) instead of the 8-bit RGB rules; the first image fixes the
    number of bands and the dtype, and every other image must match it.
    """
    if mode not in CACHE_MODES:
        raise RsdmlError(f"cache mode {mode!r} is unknown; use one of {', '.join(CACHE_MODES)}")
    if int(size) < 1:
        raise RsdmlError(f"image size {size} must be a positive number of pixels")
    if workers < 0:
        raise RsdmlError(f"workers={workers} must be >= 0 (0 = one per CPU)")
    root = Path(root).expanduser().resolve()
    paths = [str(p) for p in paths]
    channels, dtype = _probe(root, paths, int(size), bands)
    shape = (len(paths), channels, int(size), int(size))
    nbytes = int(np.prod(shape)) * dtype.itemsize
    want = mode if mode != "auto" else ("memory" if nbytes <= max_memory_bytes else "mmap")
    if not paths:
        empty = torch.from_numpy(np.empty(shape, dtype=dtype))
        return ImageCache(empty, shape[-1], None, _stats(want, 0, False, False, 0.0, 0.0))

    key = _cache_key(root, paths, shape[-1], bands)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    file = cache_dir / f"images-{shape[-1]}px-{len(paths)}-{key[:24]}{_SUFFIX}"
    build = _Build(root, paths, shape, key, workers, progress, bands, dtype)

    seen = _identity(file)
    found = _open_existing(file, key, shape, want, dtype)
    if found is not None:
        return found
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(file.with_name(file.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        log.warning(
            "cache folder %s is not writable (%s); building the image cache without saving "
            "it (set --cache-dir or $RSDML_CACHE to a writable folder to reuse it)",
            cache_dir,
            e.strerror or e,
        )
        return build.unpersisted(want)
    with _locked(lock_fd):
        # Another process may have built it while this one waited for the lock (a file that
        # is still the one found invalid above is not read twice).
        now = _identity(file)
        if now is not None and now != seen:
            found = _open_existing(file, key, shape, want, dtype)
            if found is not None:
                return found
        try:
            return build.persisted(file, want)
        except _WriteFailed as e:
            failure = e
    # Outside the lock, so that other processes do not wait for this private build.
    log.warning("could not write the image cache %s (%s); building it unsaved", file, failure)
    return build.unpersisted(want)


def _probe(root: Path, paths: list[str], size: int,
           bands: Bands | None) -> tuple[int, np.dtype]:
    """(bands per image, dtype) of the cache: 3 and uint8 by the RGB rules, else those of the
    first image that decodes with ``bands`` (the build checks every other image against it)."""
    if bands is None or not paths:
        return 3, np.dtype(np.uint8)
    for rel in paths:
        try:
            img = imageio.read_resized_bands(root / rel, 1, bands)
        except imageio.ImageReadError:
            continue  # reported with the others by the build
        return int(img.shape[2]), img.dtype
    return 3, np.dtype(np.uint8)


def _identity(file: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(file)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _stats(
    mode: str, nbytes: int, built: bool, persisted: bool, decode_s: float, load_s: float
) -> CacheStats:
    return CacheStats(
        mode=mode,
        nbytes=nbytes,
        resident_bytes=nbytes if mode == "memory" else 0,
        built=built,
        persisted=persisted,
        decode_seconds=round(decode_s, 3),
        load_seconds=round(load_s, 3),
        peak_rss_bytes=peak_rss_bytes(),
    )


def _decoder_fingerprint() -> str:
    """Hash of the decoding module's source: a change in how images are decoded or resized
    must not reuse pixels decoded the old way."""
    try:
        return hashlib.blake2b(Path(imageio.__file__).read_bytes(), digest_size=8).hexdigest()
    except (OSError, TypeError):
        return "unknown"


def _cache_key(root: Path, paths: Sequence[str], size: int, bands: Bands | None = None) -> str:
    h = hashlib.blake2b(digest_size=20)
    head: dict[str, object] = {"format": FORMAT_VERSION, "size": size, "root": str(root)}
    if bands is not None:  # absent for the RGB rules, so their keys are as before
        head["bands"] = [list(bands.select) if bands.select else "all"]
    head["decoder"] = _decoder_fingerprint()
    h.update(json.dumps(head, sort_keys=True).encode())
    add_files(h, root, paths)  # the one content identity of every cache
    return h.hexdigest()


@contextmanager
def _locked(fd: int) -> Iterator[None]:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _header(key: str, shape: tuple[int, ...], crc: int, dtype: np.dtype) -> bytes:
    meta = {"version": FORMAT_VERSION, "key": key, "shape": list(shape), "dtype": dtype.name}
    meta.update({"data_offset": _HEADER_BYTES, "checksum": f"crc32:{crc:08x}"})
    body = json.dumps(meta, sort_keys=True).encode()
    head = _MAGIC + len(body).to_bytes(4, "little") + body
    if len(head) > _HEADER_BYTES:  # pragma: no cover - the JSON is ~200 bytes
        raise AssertionError("cache header too long")
    return head.ljust(_HEADER_BYTES, b"\0")


def _read_header(f: BinaryIO, key: str, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Check the header against what this call expects; returns the stored CRC-32."""
    head = f.read(_HEADER_BYTES)
    if len(head) < _HEADER_BYTES or not head.startswith(_MAGIC):
        raise _Corrupt("bad header")
    length = int.from_bytes(head[len(_MAGIC) : len(_MAGIC) + 4], "little")
    try:
        meta = json.loads(head[len(_MAGIC) + 4 : len(_MAGIC) + 4 + length])
        algo, crc_hex = meta["checksum"].split(":")
        crc = int(crc_hex, 16)
        fields = (meta["version"], meta["key"], tuple(meta["shape"]), meta["dtype"])
        offset = meta["data_offset"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise _Corrupt(f"bad header ({e})") from e
    if algo != "crc32" or offset != _HEADER_BYTES:
        raise _Corrupt("bad header (unknown checksum or offset)")
    if fields != (FORMAT_VERSION, key, tuple(shape), dtype.name):
        raise _Corrupt("header does not match the data set")
    actual = os.fstat(f.fileno()).st_size
    if actual != _HEADER_BYTES + int(np.prod(shape)) * dtype.itemsize:
        raise _Corrupt(f"wrong size ({actual} bytes)")
    return crc


def _open_existing(file: Path, key: str, shape: tuple[int, ...], want: str,
                   dtype: np.dtype) -> ImageCache | None:
    """The cache in ``file`` if it is complete and its checksum matches, else None.

    The CRC-32 of the whole data is checked on every open: in memory mode in the same pass
    that reads the file, in mmap mode by one sequential read (which also warms the page cache).
    """
    start = time.perf_counter()
    nbytes = int(np.prod(shape)) * dtype.itemsize
    try:
        f = open(file, "rb")  # noqa: SIM115 - closed by the `with f:` below (open errors apart)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("cannot open the image cache %s (%s); rebuilding it", file, e)
        return None
    try:
        with f:
            expected = _read_header(f, key, shape, dtype)
            if want == "memory":
                array = np.empty(shape, dtype=dtype)
                crc = _read_into(f, memoryview(array.reshape(-1).view(np.uint8)))
            else:
                crc = _read_into(f, memoryview(bytearray(min(_IO_CHUNK, nbytes))), nbytes)
            if crc != expected:
                raise _Corrupt("checksum mismatch")
        if want == "mmap":
            # Copy-on-write: the file is never written through this mapping, and the tensor is
            # writable (torch warns on read-only arrays); nothing is copied unless written.
            array = np.memmap(file, dtype=dtype, mode="c", offset=_HEADER_BYTES, shape=shape)
    except _Corrupt as e:
        log.warning("the image cache %s is corrupt (%s); rebuilding it", file, e)
        return None
    except OSError as e:
        log.warning("cannot read the image cache %s (%s); rebuilding it", file, e)
        return None
    stats = _stats(want, nbytes, False, True, 0.0, time.perf_counter() - start)
    touch(file)  # "last used", for `rsdml cache clear --older-than`
    return ImageCache(torch.from_numpy(array), shape[-1], file, stats)


def _read_into(f: BinaryIO, buf: memoryview, total: int | None = None) -> int:
    """Read ``total`` bytes (default len(buf)) from f, into buf (cycling through it when it is
    smaller), returning their CRC-32."""
    total = len(buf) if total is None else total
    crc, done = 0, 0
    while done < total:
        at = done % len(buf)
        want = min(_IO_CHUNK, total - done, len(buf) - at)
        got = f.readinto(buf[at : at + want])
        if not got:
            raise _Corrupt("truncated")
        crc = zlib.crc32(buf[at : at + got], crc)
        done += got
    return crc


class _Build:
    """Decoding the images into an array, a file, or both."""

    def __init__(
        self,
        root: Path,
        paths: list[str],
        shape: tuple[int, int, int, int],
        key: str,
        workers: int,
        show: bool,
        bands: Bands | None = None,
        dtype: np.dtype = _UINT8,
    ) -> None:
        self.root, self.paths, self.shape, self.key = root, paths, shape, key
        self.workers = workers or os.cpu_count() or 1
        self.show = show
        self.bands, self.dtype = bands, dtype
        self.nbytes = int(np.prod(shape)) * dtype.itemsize
        self.per_image = self.nbytes // shape[0]

    def _decode_all(self, sink: Callable[[int, np.ndarray], None]) -> float:
        """Decode every image in a thread pool, handing (i, 3xSxS array) to ``sink``; at most
        a few images per thread are in flight, so memory stays flat whatever N is."""
        start = time.perf_counter()
        size = self.shape[-1]
        failed: dict[str, imageio.ImageReadError] = {}

        def work(i: int) -> None:
            path = self.root / self.paths[i]
            try:
                if self.bands is None:
                    img = imageio.read_resized(path, size)
                else:
                    img = imageio.read_resized_bands(path, size, self.bands)
            except imageio.ImageReadError as e:  # found all in one pass, reported together
                failed[self.paths[i]] = e
                return
            channels = self.shape[1]
            if self.bands is not None and (img.shape[2] != channels or img.dtype != self.dtype):
                raise RsdmlError(
                    f"{path} has {img.shape[2]} band(s) of {img.dtype}, but the other images "
                    f"have {channels} of {self.dtype}; every image must have the same bands "
                    "(remove it, or choose --bands that all images have)")
            if img.shape != (size, size, channels) or img.dtype != self.dtype:
                raise RuntimeError(
                    f"decoding {path} at {size}px returned {img.dtype} {img.shape}, "
                    f"expected {self.dtype} {(size, size, channels)}"
                )
            sink(i, np.ascontiguousarray(img.transpose(2, 0, 1)))

        def completed(pool: ThreadPoolExecutor) -> Iterator[None]:
            pending: set[Future[None]] = set()
            for i in range(len(self.paths)):
                pending.add(pool.submit(work, i))
                if len(pending) >= 4 * self.workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        fut.result()
                        yield
            for fut in pending:
                fut.result()
                yield

        desc = f"caching {len(self.paths)} images at {size}px"
        with ThreadPoolExecutor(self.workers, thread_name_prefix="rsdml-decode") as pool:
            done = completed(pool)
            for _ in _progress(done, total=len(self.paths), desc=desc, enabled=self.show):
                pass
        if failed:
            raise UndecodableImagesError(self.root, failed)
        return time.perf_counter() - start

    def _into_array(self) -> tuple[np.ndarray, float]:
        array = np.empty(self.shape, dtype=self.dtype)

        def sink(i: int, img: np.ndarray) -> None:
            array[i] = img

        return array, self._decode_all(sink)

    def _into_fd(self, fd: int) -> float:
        """Decode straight into the file with positional writes: nothing is held in RAM."""

        def sink(i: int, img: np.ndarray) -> None:
            _pwrite_all(fd, memoryview(img.reshape(-1).view(np.uint8)),
                        _HEADER_BYTES + i * self.per_image)

        return self._decode_all(sink)

    def unpersisted(self, want: str) -> ImageCache:
        """A cache nobody else will reuse: in RAM, or in an anonymous temporary file when it
        exceeds the memory budget (and one can be made)."""
        if want == "mmap":
            try:
                tmp = tempfile.TemporaryFile()  # noqa: SIM115 - `with tmp:` below
            except OSError:
                log.warning("no temporary folder is writable; holding the image cache in RAM")
            else:
                with tmp:
                    os.ftruncate(tmp.fileno(), _HEADER_BYTES + self.nbytes)
                    try:
                        seconds = self._into_fd(tmp.fileno())
                    except _WriteFailed as e:
                        log.warning("temporary image cache failed (%s); holding it in RAM", e)
                    else:
                        array = np.memmap(tmp, self.dtype, "c", _HEADER_BYTES, self.shape)
                        stats = _stats("mmap", self.nbytes, True, False, seconds, 0.0)
                        return ImageCache(torch.from_numpy(array), self.shape[-1], None, stats)
        array, seconds = self._into_array()
        stats = _stats("memory", self.nbytes, True, False, seconds, 0.0)
        return ImageCache(torch.from_numpy(array), self.shape[-1], None, stats)

    def persisted(self, file: Path, want: str) -> ImageCache:
        """Build ``file`` atomically (caller holds the lock) and return the cache."""
        for stale in file.parent.glob(file.name + ".tmp.*"):  # left by a killed builder
            stale.unlink(missing_ok=True)
        tmp = file.with_name(f"{file.name}.tmp.{os.getpid()}.{secrets.token_hex(4)}")
        array: np.ndarray | None = None
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as e:
            raise _WriteFailed(e.strerror or str(e)) from e
        try:
            try:
                os.ftruncate(fd, _HEADER_BYTES + self.nbytes)
            except OSError as e:
                raise _WriteFailed(e.strerror or str(e)) from e
            if want == "memory":
                array, seconds = self._into_array()
                crc = self._write_array(fd, array)
            else:
                seconds = self._into_fd(fd)
                with os.fdopen(os.dup(fd), "rb") as f:
                    f.seek(_HEADER_BYTES)
                    crc = _read_into(f, memoryview(bytearray(_IO_CHUNK)), self.nbytes)
            _pwrite_all(fd, memoryview(_header(self.key, self.shape, crc, self.dtype)), 0)
            try:
                os.fsync(fd)
                os.replace(tmp, file)
            except OSError as e:
                raise _WriteFailed(e.strerror or str(e)) from e
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        fsync_dir(file.parent)
        if array is None:
            array = np.memmap(file, self.dtype, "c", _HEADER_BYTES, self.shape)
        stats = _stats(want, self.nbytes, True, True, seconds, 0.0)
        return ImageCache(torch.from_numpy(array), self.shape[-1], file, stats)

    def _write_array(self, fd: int, array: np.ndarray) -> int:
        flat = memoryview(array.reshape(-1).view(np.uint8))
        crc = 0
        for at in range(0, self.nbytes, _IO_CHUNK):
            chunk = flat[at : at + _IO_CHUNK]
            crc = zlib.crc32(chunk, crc)
            _pwrite_all(fd, chunk, _HEADER_BYTES + at)
        return crc


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    try:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + done)
    except OSError as e:
        raise _WriteFailed(e.strerror or str(e)) from e
