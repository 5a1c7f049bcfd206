"""Which model made a set of embeddings: vectors from two models live in different spaces, so
an index records its model and refuses to mix in (or be queried with) another's.

The identity that matters is the checkpoint's content (its sha256) and how images become
network input (image size, preprocessing); the run folder is recorded so ``rsdml search
--image`` can load the model again, but a moved run folder is still the same model.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rsdml.errors import RsdmlError

#: How an image becomes network input (see rsdml.data.imageio.read_resized and
#: rsdml.data.augment.normalize); a change here must change this string.
PREPROCESSING = "rgb8 -> bilinear resize to SxS (aspect not kept) -> ImageNet mean/std"


def preprocessing(bands: str) -> str:
    """The preprocessing string of a run with ``--bands bands``."""
    if str(bands).lower() == "rgb":
        return PREPROCESSING
    return (f"bands {bands} at the data's bit depth -> bilinear resize to SxS (aspect not "
            "kept) -> the run's bands.json")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    run: str
    checkpoint: str
    checkpoint_sha256: str
    image_size: int
    backbone: str
    embedding_dim: int
    preprocessing: str = PREPROCESSING

    @classmethod
    def of_run(cls, run_dir: str | Path, checkpoint: Path, cfg: Any) -> ModelIdentity:
        """The identity of ``checkpoint`` of the run in ``run_dir`` with its config ``cfg``."""
        return cls(run=str(Path(run_dir).resolve()), checkpoint=str(Path(checkpoint).resolve()),
                   checkpoint_sha256=file_sha256(Path(checkpoint)),
                   image_size=int(cfg.image_size), backbone=str(cfg.backbone),
                   embedding_dim=int(cfg.embedding_dim),
                   preprocessing=preprocessing(getattr(cfg, "bands", "rgb")))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> ModelIdentity:
        try:
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except TypeError:
            raise RsdmlError(f"{source} does not record a complete model identity; rebuild "
                             "it with `rsdml index`") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def difference(self, other: ModelIdentity) -> str | None:
        """None for the same model, else the first field that differs (run folder excluded)."""
        for name in ("checkpoint_sha256", "image_size", "embedding_dim", "preprocessing",
                     "backbone"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                short = (lambda v: str(v)[:12]) if name == "checkpoint_sha256" else str
                return f"{name} {short(a)} != {short(b)}"
        return None

    def same_run(self, other: ModelIdentity) -> bool:
        """The same run folder and checkpoint file (the model in it may have changed)."""
        shape = ("image_size", "embedding_dim", "preprocessing", "backbone")
        return (Path(self.run).resolve() == Path(other.run).resolve()
                and Path(self.checkpoint).name == Path(other.checkpoint).name
                and all(getattr(self, f) == getattr(other, f) for f in shape))

    def check_same(self, other: ModelIdentity, what: str) -> None:
        """Refuse ``what`` (embeddings or a run) from another model than this index's."""
        diff = self.difference(other)
        if diff is not None and diff.startswith("checkpoint_sha256") and self.same_run(other):
            raise RsdmlError(f"the run {other.run} was trained further since the index was made "
                             f"(its {Path(self.checkpoint).name} changed: {diff}); rebuild the "
                             "index with `rsdml index ... --force` to search with the new "
                             "model, or restore the old checkpoint")
        if diff is not None:
            raise RsdmlError(f"{what} comes from another model than the index's ({diff}); "
                             f"use the run the index was built with ({self.run}) or build a "
                             "new index")
