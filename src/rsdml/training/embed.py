"""``rsdml embed``: a folder of images to an ``.npz`` of embeddings, through the training pipeline
(same decoded-image cache, same resize and normalisation as evaluation)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsdml.data.imageio import IMAGE_EXTENSIONS, check_image
from rsdml.errors import DatasetNotFoundError, RsdmlError
from rsdml.fsutil import atomic_write_bytes
from rsdml.models.embedding import build_model
from rsdml.training.checkpoint import load_checkpoint
from rsdml.training.inputs import embed_batches, image_inputs, place_model
from rsdml.training.run_dir import RunDir
from rsdml.training.runner import load_run_config, resolve_device
from rsdml.training.trainer import autocast_dtype

log = logging.getLogger(__name__)


def list_images(root: Path) -> tuple[list[str], list[str]]:
    """All image files below ``root`` (any depth, hidden files skipped): (good, bad) paths."""
    good, bad = [], []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        (bad if check_image(p) else good).append(rel.as_posix())
    return good, bad


def embed_folder(data: str | Path, run_dir: str | Path, out_file: str | Path, *,
                 checkpoint: str = "auto", device: str | None = None,
                 batch_size: int | None = None, quiet: bool = False, force: bool = False) -> int:
    """Embed every image below ``data``; ``force`` replaces an existing ``out_file``."""
    root = Path(data)
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist; check the path")
    out_path = Path(out_file)
    if not out_path.parent.is_dir():
        raise RsdmlError(f"--out folder {out_path.parent} does not exist; create it first")
    if out_path.is_dir():
        raise RsdmlError(f"--out {out_path} is a folder; give a file name such as emb.npz")
    if out_path.exists() and not force:
        raise RsdmlError(f"--out {out_path} already exists; add --force to replace it or "
                         "choose another file")
    run = RunDir(Path(run_dir))
    cfg = load_run_config(run)
    cfg = cfg.replace(quiet=quiet, data=str(root), **({"device": device} if device else {}),
                      **({"eval_batch_size": batch_size} if batch_size else {}))
    paths, bad = list_images(root)
    if bad:
        log.warning("skipped %d unreadable image(s) (first: %s)", len(bad), ", ".join(bad[:3]))
    if not paths:
        raise DatasetNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}; check the folder"
        )
    dev = resolve_device(cfg.device)
    model = build_model(cfg.replace(pretrained="none", weights=None)).to(dev)
    state = load_checkpoint(run.checkpoint(checkpoint), map_location=dev)
    model.load_state_dict(state["model"])
    from rsdml.data.cache import UndecodableImagesError, load_image_cache

    def cache_of(paths: list[str]) -> Any:
        return load_image_cache(root, paths, cfg.image_size, mode=cfg.cache,
                                cache_dir=cfg.cache_dir,
                                max_memory_bytes=int(cfg.cache_max_memory_gb * 2**30),
                                workers=cfg.workers, progress=not quiet)

    try:
        cache = cache_of(paths)
    except UndecodableImagesError as e:  # damage the fast check cannot see: skip those too
        log.warning("skipped %d image(s) that cannot be decoded (first: %s)", len(e.paths),
                    ", ".join(e.paths[:3]))
        paths = [p for p in paths if p not in set(e.paths)]
        if not paths:
            raise DatasetNotFoundError(f"no decodable images under {root}; check the folder") from None
        cache = cache_of(paths)
    # As evaluation embeds: the same precision, memory layout and batch loop.
    model = place_model(model, dev)
    inputs = image_inputs(cache, dev, cfg.device_cache)
    model.eval()
    emb = embed_batches(model, inputs, torch.arange(len(paths)), cfg.eval_batch_size,
                        autocast_dtype(cfg.amp, dev), not quiet, cfg.embedding_dim)
    import io

    buf = io.BytesIO()
    np.savez(buf, embeddings=emb, paths=np.asarray(paths))
    try:
        atomic_write_bytes(out_path, buf.getvalue())
    except OSError as e:
        raise RsdmlError(f"could not write {out_path} ({e.strerror or e}); choose another --out") from None
    return len(paths)
