"""Cached views for fast mode: the frozen trunk's features of several views of every image,
computed once, so consistency methods (FixMatch, FreeMatch, HR-Match) train in minutes on a CPU.

A view is made at a cut of the trunk (``rsdml.models.stages``): the stages below the cut run
once per image, the ``--view-stages`` stages above it once per view. Views:

* weak: the first ``--view-weak`` of the eight symmetries of the square (view 0 is the image
  itself, the one evaluation uses). A scene has no "up", so labels cannot change; on the pixels
  the symmetries are exact, at a cut they permute the activation map's grid.
* strong: ``--view-strong`` views. At the pixels, the existing strong augmentation
  (``ViewAugment``: RandAugment's operations and Cutout). At a cut: a random symmetry, a
  random crop of the map resized back (scale 0.5-1 of the side), Cutout of up to half the side
  (filled with the map's per-channel mean) and channel dropout (p = 0.1).

Every strong view is drawn from a fixed seed per (view, chunk of images), so a rebuild gives
the same vectors; the run's own seed only picks which cached view a step uses. The cache key
holds everything that changes a vector: the trunk-feature key (images' content, weights,
preprocessing, bands) plus the view plan. Storage is float16 in a ``.npy`` file written in
place chunk by chunk: an interrupted build resumes from its last finished chunk, and a cache
above ``--cache-max-memory-gb`` is memory-mapped instead of loaded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rsdml.allocator import kept_memory
from rsdml.data.activation_views import strong_activation, symmetry
from rsdml.data.cache import ImageCache
from rsdml.errors import RsdmlError
from rsdml.fsutil import atomic_write_text, touch
from rsdml.models.embedding import EmbeddingNet
from rsdml.models.stages import TrunkCut
from rsdml.progress import progress

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: builds are resumable, just not locked
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

VIEWS_FORMAT = 1
#: Images per chunk of a build: fixed, so the strong views' seeds never depend on a batch size.
CHUNK = 64
_VIEW_SEED = 0x5EED
_record_every = 16  # chunks between the records an interrupted build resumes from
#: The view caches of a cache folder (``rsdml cache`` lists and clears them).
VIEWS_GLOB = "views-*.npy"


@dataclass(frozen=True)
class ViewPlan:
    """Which views are cached: ``weak`` symmetries (1-8, the identity first), ``strong`` drawn
    views, made at the input of the trunk's last ``stages`` stages (0: at the pixels)."""

    weak: int
    strong: int
    stages: int

    @property
    def count(self) -> int:
        return self.weak + self.strong


def _seed(k: int, start: int) -> int:
    return int(np.random.SeedSequence([_VIEW_SEED, k, start]).generate_state(1, np.uint64)[0] >> 1)


ChunkFill = Callable[[Tensor, Tensor], Tensor]  # (positions, uint8 images) -> rows to store


def _view_fill(model: EmbeddingNet, device: torch.device, plan: ViewPlan,
               normalizer: Callable[[Tensor], Tensor],
               band_norm: Callable[[Tensor], Tensor] | None) -> ChunkFill:
    """The views of a chunk of images: (B, V, F) pooled trunk features."""
    from rsdml.data.strong_augment import ViewAugment
    from rsdml.training.inputs import uses_channels_last

    cut = TrunkCut(model.trunk, plan.stages if plan.stages > 0 else 10**6)
    strong_aug = ViewAugment(True, band_norm)
    layout = torch.channels_last if uses_channels_last(device) else torch.contiguous_format

    def fill(index: Tensor, images: Tensor) -> Tensor:
        images = images.to(device)
        a = cut.bottom(normalizer(images).contiguous(memory_format=layout))
        vecs = [cut.top(symmetry(a, j).contiguous(memory_format=layout)) for j in range(plan.weak)]
        for k in range(plan.strong):
            gen = torch.Generator().manual_seed(_seed(k, int(index[0])))
            if cut.at_pixels:
                s = strong_aug(images.cpu(), gen).to(device)
            else:
                s = strong_activation(a.float(), gen).to(a.dtype)
            vecs.append(cut.top(s.contiguous(memory_format=layout)))
        return torch.stack(vecs, 1)

    return fill


def _activation_fill(model: EmbeddingNet, device: torch.device, stages: int,
                     normalizer: Callable[[Tensor], Tensor]) -> ChunkFill:
    """The activations at the input of the trunk's last ``stages`` stages: (B, C, H, W)."""
    cut = TrunkCut(model.trunk, stages)

    def fill(index: Tensor, images: Tensor) -> Tensor:
        return cut.bottom(normalizer(images.to(device)))

    return fill


@torch.inference_mode()
def _build_into(arr: np.ndarray, done_chunks: int, model: EmbeddingNet, cache: ImageCache,
                fill: ChunkFill, desc: str, show_progress: bool,
                on_chunk: Callable[[int], None]) -> None:
    model.eval()
    starts = list(range(0, len(cache), CHUNK))
    with kept_memory():
        for c in progress(range(done_chunks, len(starts)), total=len(starts) - done_chunks,
                          desc=desc, enabled=show_progress):
            start = starts[c]
            index = torch.arange(start, min(start + CHUNK, len(cache)))
            rows = fill(index, cache.batch(index))
            arr[start:start + len(index)] = rows.float().cpu().numpy().astype(np.float16)
            on_chunk(c + 1)


def view_features(key: str, folder: Path, plan: ViewPlan, model: EmbeddingNet,
                  cache: ImageCache, device: torch.device,
                  normalizer: Callable[[Tensor], Tensor],
                  band_norm: Callable[[Tensor], Tensor] | None,
                  max_memory_bytes: int, show_progress: bool = True) -> Tensor:
    """(N, V, F) float16 trunk features of every image's views (``plan``), from the cache in
    ``folder`` or computed now; memory-mapped when larger than ``max_memory_bytes``."""
    path = folder / f"views-{key}-{_plan_key(plan)}.npy"
    shape = (len(cache), plan.count, int(model.num_features))
    fill = _view_fill(model, device, plan, normalizer, band_norm)
    return _cached(path, shape, model, cache, fill, f"views ({plan.count} an image)",
                   max_memory_bytes, show_progress, _space_fix(plan))


def activations(key: str, folder: Path, stages: int, model: EmbeddingNet, cache: ImageCache,
                device: torch.device, normalizer: Callable[[Tensor], Tensor],
                max_memory_bytes: int, show_progress: bool = True) -> Tensor:
    """(N, C, H, W) float16 activations of every image at the input of the trunk's last
    ``stages`` stages (``--train-stages``), cached like the views."""
    model.eval()
    with torch.inference_mode():
        probe = TrunkCut(model.trunk, stages).bottom(
            normalizer(cache.batch(torch.arange(1))).to(device))
    path = folder / f"views-{key}-act{VIEWS_FORMAT}s{stages}.npy"
    fill = _activation_fill(model, device, stages, normalizer)
    return _cached(path, (len(cache), *probe.shape[1:]), model, cache, fill,
                   f"activations below the last {stages} stage(s)", max_memory_bytes,
                   show_progress, "fewer --train-stages")


def _cached(path: Path, shape: tuple[int, ...], model: EmbeddingNet, cache: ImageCache,
            fill: ChunkFill, desc: str, max_memory_bytes: int, show_progress: bool,
            fix: str) -> Tensor:
    nbytes = int(np.prod(shape)) * 2
    mmap = nbytes > max_memory_bytes
    if not path.is_file():
        with _build_lock(path):  # a second process waits, then reuses the first one's file
            if not path.is_file():
                _build(path, shape, nbytes, model, cache, fill, desc, show_progress, fix)
    touch(path)
    arr = np.load(path, mmap_mode="r" if mmap else None)
    if arr.shape != shape:
        path.unlink(missing_ok=True)
        raise RsdmlError(f"the view cache {path} holds {arr.shape}, not {shape}; it was removed, "
                         "run the command again to rebuild it")
    if mmap:
        log.info("view cache of %.1f GiB is memory-mapped (above --cache-max-memory-gb)", nbytes / 2**30)
        with warnings.catch_warnings():  # read-only pages: only ever gathered from
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(np.asarray(arr))
    return torch.from_numpy(arr)


@contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """An exclusive lock beside the partial file (``rsdml cache clear`` keeps what is locked)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".partial.lock")
    with open(lock, "a+") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield


def _space_fix(plan: ViewPlan) -> str:
    return f"fewer views (--view-strong, now {plan.strong}; --view-weak, now {plan.weak})"


def _plan_key(plan: ViewPlan) -> str:
    return f"v{VIEWS_FORMAT}w{plan.weak}s{plan.strong}c{plan.stages}"


def check_space(folder: Path, nbytes: int, fix: str) -> None:
    """Refuse a cache that the cache folder's disk cannot hold, before any work."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if nbytes > free * 0.9:
        raise RsdmlError(
            f"the view cache needs {nbytes / 2**30:.1f} GiB but {folder} has "
            f"{free / 2**30:.1f} GiB free; use {fix} or a --cache-dir on a larger disk")


def _build(path: Path, shape: tuple[int, ...], nbytes: int, model: EmbeddingNet,
           cache: ImageCache, fill: ChunkFill, desc: str, show_progress: bool, fix: str) -> None:
    partial = path.with_name(path.name + ".partial")
    state = path.with_name(path.name + ".progress")
    done = 0
    if partial.is_file() and state.is_file():
        try:
            saved = json.loads(state.read_text())
            if tuple(saved["shape"]) == shape:
                done = int(saved["chunks"])
        except (ValueError, KeyError, OSError):
            done = 0
    if done == 0:
        check_space(path.parent, nbytes, fix)
        arr = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=shape)
    else:
        log.warning("resuming the view cache build at image %d of %d", done * CHUNK, shape[0])
        arr = np.load(partial, mmap_mode="r+")

    def on_chunk(chunks: int) -> None:  # every few chunks (and the last): flush, then record
        if chunks % _record_every == 0 or chunks * CHUNK >= shape[0]:
            arr.flush()
            atomic_write_text(state, json.dumps({"shape": list(shape), "chunks": chunks}))

    _build_into(arr, done, model, cache, fill, desc, show_progress, on_chunk)
    arr.flush()
    os.replace(partial, path)
    state.unlink(missing_ok=True)


#: ``--view-stages`` when not given: efficientnet_lite0's last block and head convolution, so
#: 12 views cost about 1.7 trunk passes at 150 px (``benchmarks/bench_views.py``); its last stage
#: alone (1.3 passes) is a 1x1 convolution, where a symmetry of the map no longer changes the
#: pooled feature, and 3 stages cost 3.4 passes.
DEFAULT_VIEW_STAGES = {"efficientnet_lite0": 2, "resnet18": 1}


def default_view_stages(backbone: str) -> int:
    return DEFAULT_VIEW_STAGES.get(backbone, 0)
