"""Fast mode (``--freeze-backbone``): trunk features computed once and cached on disk.

With the trunk frozen and no augmentation, a trunk feature of an image never changes during
training, so only the head and the loss need to run each step. This differs from the paper,
which fine-tunes the whole network with augmented images.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rsdml.allocator import kept_memory
from rsdml.config import TrainConfig
from rsdml.data.augment import normalize
from rsdml.data.cache import ImageCache, default_cache_dir
from rsdml.data.identity import content_identity
from rsdml.data.preprocess import Preprocess
from rsdml.data.split import Split
from rsdml.fsutil import touch
from rsdml.models.embedding import EmbeddingNet
from rsdml.progress import progress
from rsdml.training.inputs import uses_channels_last

log = logging.getLogger(__name__)
FEATURE_FORMAT = 3  # 3: the files' sizes and mtimes in the key (rsdml.data.identity)


def feature_key(cfg: TrainConfig, split: Split, preprocess: Preprocess) -> str:
    """What the cached trunk features depend on: the images, the trunk's weights and the
    model's input (``preprocess``: bands, size and the normalisation statistics, which under
    ``--bands`` come from each run's own training images)."""
    weights = None
    if cfg.weights:
        p = Path(cfg.weights)
        weights = [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] if p.exists() else cfg.weights
    ident = {
        "format": FEATURE_FORMAT,
        "data": str(Path(cfg.data or "").resolve()),
        # names, sizes and mtimes: an image replaced in place makes new features
        "files": content_identity(Path(cfg.data or "").resolve(), split.paths),
        "backbone": cfg.backbone,
        "pretrained": cfg.pretrained,
        "weights": weights,
        # A randomly initialised trunk depends on the seed.
        "seed": cfg.seed if cfg.pretrained == "none" and not cfg.weights else None,
        "preprocess": preprocess.fingerprint(),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


@torch.inference_mode()
def compute_features(model: EmbeddingNet, cache: ImageCache, device: torch.device,
                     batch_size: int, show_progress: bool = True,
                     normalizer: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    model.eval()
    chunks = torch.arange(len(cache)).split(batch_size)
    # The input in the layout build_session gives the model.
    layout = torch.channels_last if uses_channels_last(device) else torch.contiguous_format
    norm = normalizer or normalize
    with kept_memory():
        out = [model.forward_features(
                   norm(cache.batch(c).to(device)).contiguous(memory_format=layout)).float().cpu()
               for c in progress(chunks, total=len(chunks), desc="trunk features",
                                 enabled=show_progress)]
    return torch.cat(out)


def cache_folder(cfg: TrainConfig) -> Path:
    """Where the run's trunk features, views and activations are cached."""
    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()


def frozen_features(cfg: TrainConfig, split: Split, model: EmbeddingNet, cache: ImageCache,
                    device: torch.device, preprocess: Preprocess,
                    key: str | None = None) -> Tensor:
    """``key``: :func:`feature_key`, where the caller has it already (it stats every file)."""
    folder = cache_folder(cfg)
    path = folder / f"features-{key or feature_key(cfg, split, preprocess)}.pt"
    if path.is_file():
        try:
            feats = torch.load(path, weights_only=True)
            if isinstance(feats, Tensor) and feats.shape[0] == len(split.paths):
                touch(path)  # "last used", for `rsdml cache clear --older-than`
                return feats
        except Exception:
            pass
        log.warning("feature cache %s is damaged; computing the features again", path)
    feats = compute_features(model, cache, device, cfg.eval_batch_size, not cfg.quiet,
                             preprocess.normalizer())
    try:
        import io

        from rsdml.fsutil import atomic_write_bytes

        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(feats, buf)
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        log.warning("could not cache trunk features in %s (%s); they will be computed again", folder, e)
    return feats


#: Bump when ``rsdml.evaluation.copies.altered_copy`` changes: the cached copies go stale.
COPY_FORMAT = 1


def copy_features(key: str, folder: Path, rows: np.ndarray,
                  compute: Callable[[np.ndarray], Tensor]) -> Tensor:
    """Trunk features (float32) of the altered copies of the images ``rows`` (the copy-detection
    measure's queries). A frozen trunk gives an image's copy the same feature in every run on
    these images (``key``: :func:`feature_key`), so each is computed once, by ``compute(rows)``,
    and kept in ``copies-KEY-fN.npz`` beside the views. Running the 500 copies through the
    trunk, with the images read for them, was 24 s of a 97 s run on AID (2 cores)."""
    path = folder / f"copies-{key}-f{COPY_FORMAT}.npz"
    saved_rows, saved = np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    if path.is_file():
        try:
            with np.load(path) as z:
                saved_rows, saved = z["rows"].astype(np.int64), z["features"].astype(np.float32)
            if len(saved_rows) != len(saved) or np.any(np.diff(saved_rows) <= 0):
                raise ValueError("rows and features disagree")
        except Exception as e:
            log.warning("copy cache %s is damaged (%s); computing the copies again", path, e)
            saved_rows, saved = np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    rows = np.asarray(rows, np.int64)
    missing = np.setdiff1d(rows, saved_rows)
    if len(missing):
        new = compute(missing).float().numpy()
        merged = np.concatenate([saved_rows, missing])
        order = np.argsort(merged, kind="stable")
        saved_rows = merged[order]
        saved = (np.concatenate([saved, new]) if len(saved) else new)[order]
        try:
            from rsdml.fsutil import atomic_write_npz

            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_npz(path, rows=saved_rows, features=saved)
        except OSError as e:
            log.warning("could not cache the copies' features in %s (%s)", folder, e)
    else:
        touch(path)  # "last used", for `rsdml cache clear --older-than`
    return torch.from_numpy(saved[np.searchsorted(saved_rows, rows)])


def frozen_views(cfg: TrainConfig, split: Split, model: EmbeddingNet, cache: ImageCache,
                 device: torch.device, preprocess: Preprocess,
                 announce: bool = True, key: str | None = None) -> tuple[Tensor, bool]:
    """(N, V, F) cached trunk features of every image's views (``rsdml.training.views``), and
    whether they are memory-mapped (``announce``: say what training does with them; ``key``:
    as for :func:`frozen_features`)."""
    from rsdml.training.views import ViewPlan, view_features

    assert cfg.view_stages is not None
    plan = ViewPlan(cfg.view_weak, cfg.view_strong, cfg.view_stages)
    spec = preprocess.spec
    band_norm = spec.normalizer() if spec is not None else None
    limit = cfg.cache_max_memory_bytes
    if announce and not cfg.quiet:
        import sys

        where = "at the pixels" if plan.stages == 0 else f"below the trunk's last {plan.stages} stages"
        print(f"rsdml: fast mode (trunk frozen): {cfg.method} on {plan.count} cached views an image "
              f"({plan.weak} symmetries + {plan.strong} strong, made {where}); built once, reused by "
              "every run on these images", file=sys.stderr, flush=True)
    feats = view_features(key or feature_key(cfg, split, preprocess), cache_folder(cfg), plan,
                          model, cache, device, preprocess.normalizer(), band_norm, limit,
                          not cfg.quiet)
    return feats, feats.numel() * 2 > limit


def frozen_activations(cfg: TrainConfig, split: Split, model: EmbeddingNet, cache: ImageCache,
                       device: torch.device, preprocess: Preprocess) -> tuple[Tensor, bool, Any]:
    """(N, C, H, W) cached activations at the input of the last ``--train-stages`` stages,
    whether they are memory-mapped, and the model's trunk cut there."""
    from rsdml.models.stages import TrunkCut
    from rsdml.training.views import activations

    limit = cfg.cache_max_memory_bytes
    acts = activations(feature_key(cfg, split, preprocess), cache_folder(cfg), cfg.train_stages, model,
                       cache, device, preprocess.normalizer(), limit, not cfg.quiet)
    return acts, acts.numel() * 2 > limit, TrunkCut(model.trunk, cfg.train_stages)
