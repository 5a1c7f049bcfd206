"""``rsdml search``: an index queried with an image file (embedded by the index's model, with the
preprocessing evaluation uses) or with an indexed image's stored vector; results as a table,
JSON or CSV.
"""

from __future__ import annotations

import csv
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsdml.errors import RsdmlError
from rsdml.retrieval.archive import ArchiveIndex, Hit
from rsdml.retrieval.identity import ModelIdentity

FORMATS = ("table", "json", "csv")


class _Stack:
    """The one method of ImageCache that ImageInputs uses, over in-memory query images."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        return self.images.index_select(0, index.cpu())


@lru_cache(maxsize=4)
def model_for(identity: ModelIdentity, run: str | None = None, device: str | None = None) -> Any:
    """An index's model, loaded once per process (a server answers many queries with it)."""
    from rsdml.retrieval.indexing import index_model

    return index_model(identity, run, device=device, quiet=True)


def embed_image(loaded: Any, path: str | Path) -> np.ndarray:
    """One image file's embedding, decoded, resized and normalised exactly as evaluation does
    (the run's Preprocess; the same layout and precision)."""
    path = Path(path)
    if not path.is_file():
        raise RsdmlError(f"--image {path} does not exist; check the path")
    return embed_pixels(loaded, loaded.preprocess.read(path))


def embed_pixels(loaded: Any, img: np.ndarray) -> np.ndarray:
    """The embedding of one image already decoded and resized by the run's
    ``Preprocess.read`` (S x S x C); ``rsdml serve`` decodes uploads itself, with its own
    limits."""
    from rsdml.training.inputs import ImageInputs, embed_batches, uses_channels_last
    from rsdml.training.trainer import autocast_dtype

    cfg, dev = loaded.cfg, loaded.device
    preprocess = loaded.preprocess
    channels = preprocess.channels
    if img.ndim != 3 or img.shape[2] != channels:
        raise RsdmlError(f"the image has {img.shape[2] if img.ndim == 3 else 1} band(s), but "
                         f"this model takes {channels} (the bands it was trained on)")
    images = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]
    inputs = ImageInputs(_Stack(images), dev, channels_last=uses_channels_last(dev),  # type: ignore[arg-type]
                         normalizer=preprocess.normalizer())
    return embed_batches(loaded.model, inputs, torch.arange(1), 1, autocast_dtype(cfg.amp, dev),
                         False, cfg.embedding_dim)[0]


def search_image(index_dir: str | Path, image: str | Path, k: int = 10, *,
                 run_dir: str | Path | None = None, device: str | None = None,
                 index: ArchiveIndex | None = None) -> list[Hit]:
    """The k indexed images nearest to an image file."""
    index = index if index is not None else ArchiveIndex.open(index_dir)
    loaded = model_for(index.identity, str(run_dir) if run_dir else None, device)
    return index.search(embed_image(loaded, image), _check_k(k))


def search_id(index_dir: str | Path, path: str, k: int = 10, *,
              index: ArchiveIndex | None = None) -> list[Hit]:
    """The k indexed images nearest to the indexed image ``path``, itself excluded."""
    index = index if index is not None else ArchiveIndex.open(index_dir)
    i = index.lookup(path)
    return index.search(index.vectors[i], _check_k(k), exclude=i)


def _check_k(k: int) -> int:
    if k < 1:
        raise RsdmlError(f"--k {k} must be at least 1")
    return k


def format_hits(hits: list[Hit], fmt: str, query: str = "") -> str:
    """``table`` (aligned, for reading), ``json`` (an object with the query and the results) or
    ``csv`` (rank,score,class,path,id; for spreadsheets and labelling)."""
    rows = [{"rank": r, "score": round(h.score, 6), "class": h.cls, "path": h.path, "id": h.id}
            for r, h in enumerate(hits, 1)]
    if fmt == "json":
        return json.dumps({"query": query, "results": rows}, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, ["rank", "score", "class", "path", "id"], lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({**row, "class": row["class"] or ""})
        return buf.getvalue().rstrip("\n")
    if fmt == "table":
        width = max([5, *(len(h.cls or "-") for h in hits)])
        lines = [f"{'rank':>4}  {'score':>7}  {'class':<{width}}  path"]
        lines += [f"{r:>4}  {h.score:7.4f}  {h.cls or '-':<{width}}  {h.path}"
                  for r, h in enumerate(hits, 1)]
        return "\n".join(lines)
    raise RsdmlError(f"--format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
