"""``rsdml embed``: a folder of images to an ``.npz`` of embeddings, through the training pipeline
(same decoded-image cache, same resize and normalisation as evaluation). ``rsdml index``
reuses the loading and embedding steps (:func:`load_run_model`, :func:`embed_paths`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsdml.config import TrainConfig
from rsdml.data.bands import InputSpec
from rsdml.data.imageio import IMAGE_EXTENSIONS
from rsdml.data.preprocess import Preprocess
from rsdml.data.scan import list_images  # noqa: F401  (re-exported)
from rsdml.errors import DatasetNotFoundError, RsdmlError
from rsdml.fsutil import atomic_write_npz
from rsdml.models.embedding import build_model
from rsdml.retrieval.identity import ModelIdentity
from rsdml.training import distributed
from rsdml.training.bands import run_preprocess
from rsdml.training.checkpoint import load_checkpoint
from rsdml.training.distributed import resolve_device
from rsdml.training.inputs import embed_batches, image_inputs, place_model
from rsdml.training.run_folder import RunFolder
from rsdml.training.trainer import autocast_dtype

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A run's model in evaluation mode on its device, with the config that embeds for it."""

    model: Any
    cfg: TrainConfig
    device: torch.device
    checkpoint: Path
    preprocess: Preprocess  # how a file becomes the model's input (RUN/preprocess.json)

    @property
    def spec(self) -> InputSpec | None:
        """The run's N-band input (RUN/bands.json); None = RGB."""
        return self.preprocess.spec


def load_run_model(run_dir: str | Path, *, checkpoint: str = "auto", device: str | None = None,
                   batch_size: int | None = None, quiet: bool = False,
                   data: str | Path | None = None) -> LoadedModel:
    """Load a run's checkpoint once, as evaluation does (placed for its input layout)."""
    run = RunFolder.open(run_dir, "--run")
    cfg = run.read_config()
    cfg = cfg.replace(quiet=quiet, **({"data": str(data)} if data is not None else {}),
                      **({"device": device} if device else {}),
                      **({"eval_batch_size": batch_size} if batch_size else {}))
    ckpt = run.existing_checkpoint(checkpoint)
    dev = resolve_device(cfg.device)
    preprocess = run_preprocess(cfg, run, None, None, create=False)
    model = build_model(cfg.replace(pretrained="none", weights=None), preprocess.spec).to(dev)
    state = load_checkpoint(ckpt, map_location=dev)
    model.load_state_dict(state["model"])
    model = place_model(model, dev)
    model.eval()
    return LoadedModel(model, cfg, dev, ckpt, preprocess)


def embed_paths(loaded: LoadedModel, root: Path, paths: list[str], *,
                quiet: bool = False) -> tuple[np.ndarray, list[str]]:
    """Embeddings of ``root/paths`` through the decoded-image cache, as evaluation embeds;
    images that turn out undecodable are skipped with a warning: (embeddings, kept paths)."""
    from rsdml.data.cache import UndecodableImagesError, load_image_cache

    cfg, dev = loaded.cfg, loaded.device

    def cache_of(paths: list[str]) -> Any:
        return load_image_cache(root, paths, cfg.image_size, mode=cfg.cache,
                                cache_dir=cfg.cache_dir,
                                max_memory_bytes=cfg.cache_max_memory_bytes,
                                workers=cfg.workers, progress=not quiet,
                                bands=loaded.preprocess.bands)

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
    inputs = image_inputs(cache, dev, cfg.device_cache,
                          normalizer=loaded.preprocess.normalizer())
    emb = embed_batches(loaded.model, inputs, torch.arange(len(paths)), cfg.eval_batch_size,
                        autocast_dtype(cfg.amp, dev), not quiet, cfg.embedding_dim)
    return emb, paths


def embed_folder(data: str | Path, run_dir: str | Path, out_file: str | Path, *,
                 checkpoint: str = "auto", device: str | None = None,
                 batch_size: int | None = None, quiet: bool = False, force: bool = False) -> int:
    """Embed every image below ``data`` (a folder, or a downloaded data set's name); ``force``
    replaces an existing ``out_file``."""
    from rsdml.data.datasets import resolve_data

    root = Path(resolve_data(str(data)) or data)
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
    with distributed.joined(run_device_type(device, run_dir)) as d:
        return _embed_folder(root, run_dir, out_path, checkpoint, device, batch_size, quiet, d)


def run_device_type(device: str | None, run_dir: str | Path | None) -> str:
    """``cpu`` or ``cuda``: where a run's model will embed (``device``, else the run's)."""
    run = RunFolder(Path(run_dir)) if run_dir is not None else None
    name = device or (run.read_config().device if run is not None and run.config.is_file()
                      else "auto")
    return resolve_device(name).type


def embed_paths_sharded(loaded: LoadedModel, root: Path, paths: list[str], *,
                        quiet: bool = False) -> tuple[np.ndarray, list[str]]:
    """:func:`embed_paths` over the ranks of a ``torchrun`` group: each rank embeds a
    contiguous slice of ``paths`` and every rank gets all of them, in order (one process:
    ``embed_paths`` itself)."""
    d = distributed.current()
    if d.world_size == 1:
        return embed_paths(loaded, root, paths, quiet=quiet)
    lo, hi = d.rank * len(paths) // d.world_size, (d.rank + 1) * len(paths) // d.world_size
    part = embed_paths(loaded, root, paths[lo:hi], quiet=quiet) if hi > lo else (
        np.zeros((0, loaded.cfg.embedding_dim), np.float32), [])
    parts = distributed.gather_objects(part)
    return np.concatenate([p[0] for p in parts]), [path for p in parts for path in p[1]]


def _embed_folder(root: Path, run_dir: str | Path, out_path: Path, checkpoint: str,
                  device: str | None, batch_size: int | None, quiet: bool,
                  d: distributed.Dist) -> int:
    """Under torchrun each rank embeds a contiguous slice of the sorted image list and rank 0
    merges the slices, in order, into the one output file."""
    quiet = quiet or not d.is_main
    loaded = load_run_model(run_dir, checkpoint=checkpoint, device=device,
                            batch_size=batch_size, quiet=quiet, data=root)
    paths, bad = distributed.broadcast(list_images(root) if d.is_main else None)
    if bad:
        log.warning("skipped %d unreadable image(s) (first: %s)", len(bad), ", ".join(bad[:3]))
    if not paths:
        raise DatasetNotFoundError(
            f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}; check the folder"
        )
    emb, paths = embed_paths_sharded(loaded, root, paths, quiet=quiet)
    if not d.is_main:  # rank 0 writes the file
        return len(paths)
    # The model's identity and the image folder travel with the vectors, so `rsdml index` can
    # refuse them for another model's index and find the images' files.
    identity = ModelIdentity.of_run(run_dir, loaded.checkpoint, loaded.cfg)
    try:
        atomic_write_npz(out_path, embeddings=emb, paths=np.asarray(paths),
                         model=np.asarray(json.dumps(identity.to_dict())),
                         root=np.asarray(str(root.resolve())))
    except OSError as e:
        raise RsdmlError(f"could not write {out_path} ({e.strerror or e}); choose another --out") from None
    return len(paths)
