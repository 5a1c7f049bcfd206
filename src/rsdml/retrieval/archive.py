"""A persistent, searchable index of an image archive: one folder that holds the vectors, a faiss
index over them, what each vector is (path, class, image size) and which model made them.

Folder layout (see docs/retrieval.md)::

    INDEX/index.faiss   the faiss index (inner product on unit vectors = cosine)
    INDEX/vectors.npy   the unit float32 vectors, row i = faiss id i (exact re-ranking, --id,
                        and rebuilding any kind without re-embedding)
    INDEX/meta.json     format, kind, image folders, one entry per vector
    INDEX/model.json    the model identity (rsdml.retrieval.identity)

A folder is only ever written whole: built beside INDEX and renamed over it
(:func:`rsdml.fsutil.replace_dir`), so a reader or an interrupted build sees the old or the
new index, never a mix.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rsdml.errors import RsdmlError
from rsdml.fsutil import recover_dir, replace_dir, temp_dir_beside
from rsdml.retrieval.identity import ModelIdentity
from rsdml.retrieval.index import (
    APPROXIMATE_KINDS,
    ApproximateIndex,
    ExactIndex,
    decode_scores,
    l2_normalize,
    order_key,
)

FORMAT = 1
KINDS = ("auto", "flat", *APPROXIMATE_KINDS)
#: ``--kind auto``: exact search below this many vectors (a flat scan of 100k x 128 floats
#: takes a few ms), IVF up to ``_PQ_FROM``, compressed IVF-PQ beyond.
EXACT_BELOW = 100_000
_PQ_FROM = 2_000_000
FILES = ("index.faiss", "vectors.npy", "meta.json", "model.json")


def choose_kind(kind: str, n: int) -> tuple[str, str]:
    """(kind, why) for ``--kind``; ``auto`` picks by the number of vectors."""
    if kind not in KINDS:
        raise RsdmlError(f"--kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind, "as asked"
    if n < EXACT_BELOW:
        return "flat", f"{n} vectors < {EXACT_BELOW}: exact search"
    if n < _PQ_FROM:
        return "ivf", f"{n} vectors >= {EXACT_BELOW}: approximate IVF, re-ranked exactly"
    return "ivfpq", f"{n} vectors >= {_PQ_FROM}: compressed IVF-PQ, re-ranked exactly"


@dataclass(frozen=True)
class Hit:
    """One search result: faiss id, cosine similarity, and the entry's metadata."""

    id: int
    score: float
    path: str
    cls: str | None


class ArchiveIndex:
    """An index folder in memory: entries, unit vectors, the faiss searcher and the model."""

    def __init__(self, identity: ModelIdentity, kind: str, roots: list[str],
                 entries: list[dict[str, Any]], vectors: np.ndarray,
                 searcher: ExactIndex | ApproximateIndex | None = None) -> None:
        if len(entries) != len(vectors):
            raise ValueError(f"{len(entries)} entries for {len(vectors)} vectors")
        if vectors.ndim != 2 or vectors.shape[1] != identity.embedding_dim:
            raise RsdmlError(f"embeddings of shape {vectors.shape} do not match the model's "
                             f"dimension {identity.embedding_dim}; embed with the same run")
        self.identity = identity
        self.kind = kind
        self.roots = roots
        self.entries = entries
        self.vectors = vectors
        # An image is its folder and its path in it: two folders may reuse relative paths.
        self.by_key = {(e.get("root", 0), e["path"]): i for i, e in enumerate(entries)}
        if len(self.by_key) != len(entries):
            raise ValueError("duplicate (folder, path) entries in an index")
        self.by_path: dict[str, list[int]] = {}
        for i, e in enumerate(entries):
            self.by_path.setdefault(e["path"], []).append(i)
        self.searcher = searcher if searcher is not None else self._build_searcher()

    def __len__(self) -> int:
        return len(self.entries)

    # --- building -----------------------------------------------------------------------
    @classmethod
    def create(cls, identity: ModelIdentity, kind: str, roots: list[str],
               entries: list[dict[str, Any]], vectors: np.ndarray) -> ArchiveIndex:
        """A new index over ``vectors`` (normalised here) of an already chosen kind."""
        if kind not in KINDS[1:]:
            raise RsdmlError(f"index kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
        return cls(identity, kind, roots, entries, l2_normalize(vectors))

    def _build_searcher(self) -> ExactIndex | ApproximateIndex:
        if self.kind == "flat":
            return ExactIndex(self.vectors, normalized=True)
        return ApproximateIndex(self.vectors, kind=self.kind, normalized=True)

    def extended(self, entries: list[dict[str, Any]], vectors: np.ndarray,
                 replace: dict[int, int] | None = None) -> ArchiveIndex:
        """A new index with ``entries``/``vectors`` appended; ``replace`` maps an existing id to
        a row of ``vectors`` whose vector and entry replace it (a changed image file).

        Pure appends extend the faiss index (IVF keeps its centroids, HNSW grows its graph);
        a replacement rebuilds it from the stored vectors, since not every kind can remove.
        """
        replace = replace or {}
        new = l2_normalize(vectors) if len(vectors) else vectors.astype(np.float32)
        all_entries = list(self.entries)
        all_vectors = self.vectors.copy()
        for old_id, row in replace.items():
            all_entries[old_id] = entries[row]
            all_vectors[old_id] = new[row]
        keep = [r for r in range(len(entries)) if r not in set(replace.values())]
        all_entries += [entries[r] for r in keep]
        all_vectors = np.concatenate([all_vectors, new[keep].reshape(-1, all_vectors.shape[1])])
        if replace:
            return ArchiveIndex(self.identity, self.kind, self.roots, all_entries, all_vectors)
        if self.kind == "flat":
            searcher: ExactIndex | ApproximateIndex = ExactIndex(all_vectors, normalized=True)
        else:
            searcher = ApproximateIndex.wrap(faiss.clone_index(self.searcher.index), self.kind)
            searcher.add(new[keep], normalized=True)
        return ArchiveIndex(self.identity, self.kind, self.roots, all_entries, all_vectors,
                            searcher)

    def root_id(self, root: str) -> int:
        """The number of an image folder in ``roots`` (added if new)."""
        if root not in self.roots:
            self.roots.append(root)
        return self.roots.index(root)

    # --- persistence --------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write the whole folder beside ``folder`` and rename it into place."""
        dest = Path(folder)
        if dest.exists() and not is_index(dest):
            raise RsdmlError(f"--out {dest} exists and is not an rsdml index; choose a new "
                             "folder name")
        if not dest.parent.is_dir():
            raise RsdmlError(f"the folder {dest.parent} does not exist; create it first")
        try:
            tmp = temp_dir_beside(dest)
        except OSError as e:
            raise RsdmlError(f"cannot write beside {dest} ({e.strerror or e}); check the "
                             "folder's permissions") from None
        try:
            self._write_files(tmp)
            replace_dir(tmp, dest)
        except BaseException as e:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise RsdmlError(f"could not write the index {dest} ({e.strerror or e}); free "
                                 "disk space (the previous index, if any, is untouched)") from None
            raise

    def _write_files(self, tmp: Path) -> None:
        faiss.write_index(self.searcher.index, str(tmp / "index.faiss"))
        np.save(tmp / "vectors.npy", self.vectors)
        meta = {"format": FORMAT, "kind": self.kind, "count": len(self), "roots": self.roots,
                "entries": self.entries}
        (tmp / "meta.json").write_text(json.dumps(meta) + "\n")
        (tmp / "model.json").write_text(json.dumps(self.identity.to_dict(), indent=2) + "\n")
        for name in FILES:
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())

    @classmethod
    def open(cls, folder: str | Path) -> ArchiveIndex:
        """Read an index folder written by :meth:`save`."""
        folder = Path(folder)
        recover_dir(folder)
        if not is_index(folder):
            raise RsdmlError(f"{folder} is not an rsdml index (no meta.json/model.json); build "
                             "one with `rsdml index DATA --run RUN --out INDEX`")
        try:
            meta = json.loads((folder / "meta.json").read_text())
            identity = ModelIdentity.from_dict(json.loads((folder / "model.json").read_text()),
                                               str(folder / "model.json"))
            vectors = np.load(folder / "vectors.npy")
            # flat search runs on the vectors themselves; index.faiss is that data for other tools
            raw = None if meta.get("kind") == "flat" else faiss.read_index(str(folder / "index.faiss"))
        except (OSError, ValueError, RuntimeError) as e:
            raise RsdmlError(f"index {folder} is damaged ({str(e).splitlines()[0][:120]}); "
                             "rebuild it with `rsdml index`") from None
        if meta.get("format") != FORMAT:
            raise RsdmlError(f"index {folder} has format {meta.get('format')}, this rsdml reads "
                             f"{FORMAT}; rebuild it with `rsdml index`")
        n_faiss = len(vectors) if raw is None else raw.ntotal
        if not (n_faiss == len(vectors) == len(meta["entries"])):
            raise RsdmlError(f"index {folder} is inconsistent ({n_faiss} faiss vectors, "
                             f"{len(vectors)} stored, {len(meta['entries'])} entries); rebuild it")
        kind = meta["kind"]
        searcher = (ExactIndex(vectors, normalized=True) if raw is None
                    else ApproximateIndex.wrap(raw, kind))
        return cls(identity, kind, list(meta["roots"]), list(meta["entries"]), vectors, searcher)

    # --- search -------------------------------------------------------------------------
    def search(self, query: np.ndarray, k: int, *, exclude: int | None = None) -> list[Hit]:
        """The k nearest entries to one query vector, best first (cosine, ties by lower id).

        Approximate kinds fetch extra candidates and re-rank them with the stored vectors, so
        every score shown is the exact cosine. ``exclude``: an id left out (the query itself).
        """
        q = l2_normalize(np.asarray(query, dtype=np.float32).reshape(1, -1))
        if q.shape[1] != self.vectors.shape[1]:
            raise RsdmlError(f"query has dimension {q.shape[1]}, the index {self.vectors.shape[1]}"
                             "; embed it with the index's model")
        want = k + (exclude is not None)
        if self.kind == "flat":
            scores, ids = self.searcher.search(q, want, normalized=True)
            scores, ids = scores[0], ids[0]
        else:
            fetch = min(len(self), max(4 * want, want + 16))
            _, cand = self.searcher.search(q, fetch, normalized=True)
            cand = np.unique(cand[0][cand[0] >= 0])
            exact = self.vectors[cand] @ q[0]
            keys = np.sort(order_key(exact, cand))[:want]
            scores, ids = decode_scores(keys), keys & 0xFFFFFFFF
        hits = [self.hit(int(i), float(s)) for s, i in zip(scores, ids) if int(i) != exclude]
        return hits[:k]

    def hit(self, i: int, score: float) -> Hit:
        e = self.entries[i]
        return Hit(i, score, e["path"], e.get("class"))

    def lookup(self, path: str) -> int:
        """The id of the entry with relative path ``path`` (or a full path below one of the
        index's image folders, where several folders hold that relative path)."""
        p = Path(path)
        if p.is_absolute():
            for r, root in enumerate(self.roots):
                if p.is_relative_to(root) and (r, p.relative_to(root).as_posix()) in self.by_key:
                    return self.by_key[(r, p.relative_to(root).as_posix())]
        ids = self.by_path.get(p.as_posix(), [])
        if not ids:
            raise RsdmlError(f"{path!r} is not in the index; give a relative path as `rsdml "
                             "search --format csv` lists them, or use --image FILE")
        if len(ids) > 1:
            folders = ", ".join(str(self.roots[self.entries[i].get("root", 0)]) for i in ids)
            raise RsdmlError(f"{path!r} is in {len(ids)} image folders of the index ({folders});"
                             " give the full path of the one you mean")
        return ids[0]


def is_index(folder: Path) -> bool:
    return (folder / "meta.json").is_file() and (folder / "model.json").is_file()
