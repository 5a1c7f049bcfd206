"""``rsdml index``: images (a folder, or an ``.npz`` from ``rsdml embed``) to an index folder, and
extending one. Embedding goes through ``rsdml embed``'s steps (same cache, preprocessing and
batch loop as evaluation), so indexed vectors equal the ones the metrics were computed on.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rsdml.errors import DatasetNotFoundError, RsdmlError
from rsdml.retrieval.archive import ArchiveIndex, choose_kind, is_index
from rsdml.retrieval.identity import ModelIdentity
from rsdml.retrieval.trusted import remember
from rsdml.vectors import l2_normalize

log = logging.getLogger(__name__)


def load_model(run_dir: str | Path, *, checkpoint: str = "auto", device: str | None = None,
               batch_size: int | None = None, quiet: bool = False) -> tuple[Any, ModelIdentity]:
    """(loaded model, its identity) of a run folder's checkpoint."""
    from rsdml.training.embed import load_run_model

    loaded = load_run_model(run_dir, checkpoint=checkpoint, device=device,
                            batch_size=batch_size, quiet=quiet)
    return loaded, ModelIdentity.of_run(run_dir, loaded.checkpoint, loaded.cfg)


def index_model(ident: ModelIdentity, run_dir: str | Path | None, *, device: str | None = None,
                batch_size: int | None = None, quiet: bool = False) -> Any:
    """An index's model (identity ``ident``), loaded from ``run_dir`` (default: the run the
    index records) and checked to be the same checkpoint."""
    if run_dir is None:
        if not Path(ident.run).is_dir():
            raise RsdmlError(f"the index's run folder {ident.run} is gone; pass --run with the "
                             "folder where that run is now")
        run_dir, checkpoint = ident.run, ident.checkpoint
        if not Path(checkpoint).is_file():  # the run moved within itself: same file name
            checkpoint = str(Path(ident.run) / "checkpoints" / Path(checkpoint).name)
    else:
        checkpoint = str(Path(run_dir) / "checkpoints" / Path(ident.checkpoint).name)
        if not Path(checkpoint).is_file():
            checkpoint = "auto"
    loaded, found = load_model(run_dir, checkpoint=checkpoint, device=device,
                               batch_size=batch_size, quiet=quiet)
    ident.check_same(found, f"run {run_dir}")
    return loaded


def image_class(rel: str) -> str | None:
    """The class of an image: its first folder level below DATA (None directly in DATA)."""
    parts = rel.split("/")
    return parts[0] if len(parts) > 1 else None


def image_entry(root: Path, rel: str, root_id: int) -> dict[str, Any]:
    """What an index records of an image: path, class, folder, pixel size, and the file's size
    and mtime (how ``--add`` recognises an image it already holds)."""
    entry: dict[str, Any] = {"path": rel, "class": image_class(rel), "root": root_id,
                             "width": None, "height": None, "bytes": None, "mtime_ns": None}
    try:
        st = os.stat(root / rel)
        entry["bytes"], entry["mtime_ns"] = st.st_size, st.st_mtime_ns
    except OSError:
        return entry
    try:
        from PIL import Image

        with Image.open(root / rel) as im:  # reads the header only
            entry["width"], entry["height"] = im.size
    except Exception:  # e.g. a multi-band TIFF Pillow cannot open: size unknown
        pass
    return entry


def _same_file(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("bytes") == b.get("bytes") and a.get("mtime_ns") == b.get("mtime_ns")


def _read_npz(path: Path) -> tuple[np.ndarray, list[str], ModelIdentity | None, Path | None]:
    """(embeddings, paths, model identity or None, image folder or None) of an embed .npz."""
    try:
        with np.load(path, allow_pickle=False) as z:
            emb, paths = z["embeddings"], [str(p) for p in z["paths"]]
            ident = (ModelIdentity.from_dict(json.loads(str(z["model"])), str(path))
                     if "model" in z.files else None)
            root = Path(str(z["root"])) if "root" in z.files else None
    except (OSError, ValueError, KeyError) as e:
        raise RsdmlError(f"{path} is not an `rsdml embed` .npz ({str(e)[:100]}); give an image "
                         "folder or the .npz `rsdml embed` wrote") from None
    if emb.ndim != 2 or len(emb) != len(paths):
        raise RsdmlError(f"{path} holds {emb.shape} embeddings for {len(paths)} paths; "
                         "re-run `rsdml embed`")
    return emb, paths, ident, root


def _npz_identity(path: Path, ident: ModelIdentity | None, run: ModelIdentity | None) -> ModelIdentity:
    """The model of an .npz: its recorded identity (checked against ``--run``'s if given), or
    for an .npz written before identities were recorded, ``--run``'s, which must be given."""
    if ident is None:
        if run is None:
            raise RsdmlError(f"{path} does not record which model made it (an older `rsdml "
                             "embed`); pass --run with that run, or re-run `rsdml embed`")
        log.warning("%s does not record its model; trusting --run %s", path, run.run)
        return run
    if run is not None:
        run.check_same(ident, f"{path}")
    return ident


def _gather(data: Path, index: ArchiveIndex | None, run_dir: str | Path | None, *,
            checkpoint: str, device: str | None, batch_size: int | None,
            quiet: bool) -> tuple[ModelIdentity, str, list[dict[str, Any]], np.ndarray, int]:
    """(identity, image folder, entries, vectors, images seen) of DATA, skipping images ``index`` already
    holds unchanged; entries get their folder number from ``index`` when there is one."""
    if data.is_file() and data.suffix == ".npz":
        emb, paths, ident, root = _read_npz(data)
        run_ident = None
        if run_dir is not None:
            run_ident = load_model(run_dir, checkpoint=checkpoint, device=device, quiet=quiet)[1]
        ident = _npz_identity(data, ident, run_ident)
        if index is not None:
            index.identity.check_same(ident, f"{data}")
        root_str = str(root) if root is not None else str(data.resolve())
        root_dir = root if root is not None and root.is_dir() else None
        rid = index.root_id(root_str) if index is not None else 0
        entries = [image_entry(root_dir, p, rid) if root_dir is not None
                   else {"path": p, "class": image_class(p), "root": rid, "width": None,
                         "height": None, "bytes": None, "mtime_ns": None} for p in paths]
        seen = len(entries)
        if index is not None:
            unit = l2_normalize(emb)
            fresh = [i for i, e in enumerate(entries) if not _held(index, e, unit[i])]
            entries, emb = [entries[i] for i in fresh], emb[fresh]
        return ident, root_str, entries, emb.astype(np.float32), seen
    if not data.is_dir():
        raise DatasetNotFoundError(f"{data} is neither an image folder nor an .npz from "
                                   "`rsdml embed`; check the path")
    if is_index(data):
        raise RsdmlError(f"{data} is an rsdml index, not an image folder; give the image folder "
                         "(or the `rsdml embed` .npz) to index")
    from rsdml.data.scan import list_images
    from rsdml.training.embed import embed_paths_sharded

    if index is None:
        if run_dir is None:
            raise RsdmlError("--run is required to index an image folder; give the run folder "
                             "whose model embeds the images")
        loaded, ident = load_model(run_dir, checkpoint=checkpoint, device=device,
                                   batch_size=batch_size, quiet=quiet)
    else:
        loaded = index_model(index.identity, run_dir, device=device, batch_size=batch_size, quiet=quiet)
        ident = index.identity
    root = data.resolve()
    paths, bad = list_images(root)
    if bad:
        log.warning("skipped %d unreadable image(s) (first: %s)", len(bad), ", ".join(bad[:3]))
    if not paths:
        raise DatasetNotFoundError(f"no images found under {data}; check the folder")
    rid = index.root_id(str(root)) if index is not None else 0
    entries = {p: image_entry(root, p, rid) for p in paths}
    seen = len(paths)
    if index is not None:
        paths = [p for p in paths if not _held(index, entries[p])]
    if not paths:
        return ident, str(root), [], np.zeros((0, ident.embedding_dim), np.float32), seen
    emb, paths = embed_paths_sharded(loaded, root, paths, quiet=quiet)  # over the ranks
    return ident, str(root), [entries[p] for p in paths], emb, seen


def _held(index: ArchiveIndex, entry: dict[str, Any], vector: np.ndarray | None = None) -> bool:
    """Whether ``index`` holds this image unchanged: at the same relative path (in its own
    image folder or, copied, in another) with the same file size and mtime, or (an .npz whose
    image files cannot be found) with the same vector. A changed file in its own folder is
    not held (its vector is replaced); one in another folder is another image (added)."""
    own = index.by_key.get((entry["root"], entry["path"]))
    for i in ([own] if own is not None else index.by_path.get(entry["path"], [])):
        if entry.get("bytes") is not None:
            if _same_file(index.entries[i], entry):
                return True
        elif vector is not None and np.allclose(index.vectors[i], vector, atol=1e-6):
            return True
    return False


def _data_path(data: str | Path) -> Path:
    """DATA as a path: a folder or .npz as given, or a downloaded data set's name resolved."""
    from rsdml.data.datasets import resolve_data

    return Path(resolve_data(str(data)) or data)


def build_index(data: str | Path, out: str | Path, *, run_dir: str | Path | None = None,
                kind: str = "auto", checkpoint: str = "auto", device: str | None = None,
                batch_size: int | None = None, quiet: bool = False,
                force: bool = False) -> ArchiveIndex:
    """Embed DATA with the run's model and write a new index folder at ``out``."""
    out = Path(out)
    if out.exists() and not force:
        raise RsdmlError(f"--out {out} already exists; add --force to replace it, or extend it "
                         "with `rsdml index --add`")
    if out.exists() and not is_index(out):  # checked before embedding, and again when saving
        raise RsdmlError(f"--out {out} exists and is not an rsdml index; choose a new folder "
                         "name")
    from rsdml.training import distributed
    from rsdml.training.embed import run_device_type

    # Under torchrun each rank embeds a slice of the images; rank 0 writes the index.
    with distributed.joined(run_device_type(device, run_dir)) as d:
        ident, root, entries, vectors, _ = _gather(_data_path(data), None, run_dir,
                                                   checkpoint=checkpoint, device=device,
                                                   batch_size=batch_size, quiet=quiet or not d.is_main)
        if not entries:
            raise DatasetNotFoundError(f"nothing to index in {data}; check the path")
        chosen, why = choose_kind(kind, len(entries))
        log.info("index kind %s (%s)", chosen, why)
        index = ArchiveIndex.create(ident, chosen, [root], entries, vectors)
        if d.is_main:
            index.save(out)
            remember(index.roots)  # `rsdml serve` shows thumbnails of folders indexed here
    return index


class Added(NamedTuple):
    """What ``rsdml index --add`` did: images new to the index, images whose changed file
    replaced their vector, images it held unchanged."""

    index: ArchiveIndex
    added: int
    skipped: int
    replaced: int


def add_to_index(index_dir: str | Path, data: str | Path, *, run_dir: str | Path | None = None,
                 checkpoint: str = "auto", device: str | None = None,
                 batch_size: int | None = None, quiet: bool = False) -> Added:
    """Extend an index with DATA's images it does not hold unchanged.

    An image of an indexed folder whose file changed replaces its old vector; an image of
    another folder is added even where its relative path is one the index holds already.
    """
    from rsdml.training import distributed
    from rsdml.training.embed import run_device_type

    index = ArchiveIndex.open(index_dir)
    n_before = len(index)
    data_path = _data_path(data)
    if data_path.is_dir() and data_path.resolve() == Path(index_dir).resolve():
        raise RsdmlError(f"{data} is the index itself; give the image folder to add")
    run = run_dir if run_dir is not None else index.identity.run
    with distributed.joined(run_device_type(device, run if Path(run).is_dir() else None)) as d:
        _, _, entries, vectors, seen = _gather(data_path, index, run_dir, checkpoint=checkpoint,
                                               device=device, batch_size=batch_size,
                                               quiet=quiet or not d.is_main)
        replace = {index.by_key[(e["root"], e["path"])]: r for r, e in enumerate(entries)
                   if (e["root"], e["path"]) in index.by_key}
        if entries:
            index = index.extended(entries, vectors, replace)
            if d.is_main:  # under torchrun rank 0 writes
                index.save(index_dir)
                remember(index.roots)
    return Added(index, len(index) - n_before, seen - len(entries), len(replace))

