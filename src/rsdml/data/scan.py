"""Finding the images of a class-per-folder data set and weeding out the unusable ones.

A data folder is ``ROOT/CLASS/.../IMAGE.ext``: every non-hidden sub-folder of ROOT is a class
(sorted by name), and every image file below it (any depth, like torchvision's ImageFolder)
belongs to that class. The rules (which files count, what is skipped, what is an error) are
in docs/data.md. The scan runs before training, so a bad file costs a warning at start-up
rather than a crash in epoch 40.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from rsdml.data.imageio import IMAGE_EXTENSIONS, MAX_PIXELS, ImageReadError, _diagnose, check_image
from rsdml.errors import DatasetNotFoundError, RsdmlError
from rsdml.progress import progress as _progress

log = logging.getLogger(__name__)

BAD_IMAGE_KINDS = ("corrupt", "too_large", "unsupported", "unreadable")
"""Problem reasons for files that look like images but cannot be used (skipped or strict)."""
IGNORED_KINDS = ("hidden", "not_image", "not_in_class")
"""Problem reasons for files that are never images of the data set (always ignored)."""

_SHOW = 5  # how many names a warning lists
_LAYOUT = "put each class's images in its own sub-folder: DATA/CLASS/IMAGE.jpg"
_HIDDEN_DIRS = ("__MACOSX",)  # macOS zip debris, treated like a hidden folder

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, eq=False)
class ScanResult:
    """The usable images of a data folder, their labels, and everything that was left out."""

    root: Path
    classes: list[str]  # sorted class-folder names that keep >= 1 usable image
    paths: list[str]  # relative POSIX paths "Class/file.jpg", sorted by (class, name)
    labels: np.ndarray  # int64 index into classes, one per path
    problems: dict[str, list[str]]  # reason -> sorted relative paths (only non-empty reasons)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _HIDDEN_DIRS


def _list_class(
    root: Path, name: str, problems: dict[str, list[str]], broken: dict[str, str],
    seen: set[str], claimed: set[str],
) -> list[str]:
    """Relative paths of the image files below ROOT/NAME (recursive, links followed once).

    ``seen``: real paths of the folders read so far, shared by all classes, so no folder is
    read twice. ``claimed``: the data root and every class folder: a link to one of them from
    inside a class (e.g. back to the root) is not followed, or other classes' images would
    be read again under this class's label.
    """
    found: list[str] = []
    stack = [(root / name, name)]
    while stack:
        folder, rel = stack.pop()
        real = os.path.realpath(folder)
        if real in seen or (rel != name and real in claimed):
            problems["repeated_folder"].append(rel)
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            raise RsdmlError(
                f"cannot list folder {folder}: {e.strerror or e}; check its permissions"
            ) from None
        for entry in entries:
            child = f"{rel}/{entry.name}"
            if _is_hidden(entry.name):
                problems["hidden"].append(child)
                continue
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError:
                is_dir = is_file = False
            if is_dir:
                stack.append((Path(entry.path), child))
            elif not _is_image_name(entry.name):
                problems["not_image"].append(child)
            elif is_file:
                found.append(child)
            else:
                problems["unreadable"].append(child)
                broken[child] = "unreadable: broken link or not a regular file"
    return found


def _ordered_map(fn: Callable[[T], R], items: list[T], workers: int) -> Iterator[R]:
    """``map`` over a thread pool, in order, with a bounded number of files in flight."""
    if workers <= 1 or len(items) < 64:
        yield from map(fn, items)
        return
    ex = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rsdml-scan")
    try:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(ex.submit(fn, item))
            if len(pending) >= 8 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _names(items: Iterable[str], details: dict[str, str] | None = None) -> str:
    items = list(items)
    shown = [f"{p} ({details[p]})" if details and p in details else p for p in items[:_SHOW]]
    more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(shown) + more


def _root_entries(root: Path) -> list[os.DirEntry[str]]:
    fix = "pass --data a folder with one sub-folder per class (DATA/CLASS/IMAGE.jpg)"
    if not root.exists():
        raise DatasetNotFoundError(f"data folder {root} does not exist; {fix}")
    if not root.is_dir():
        raise DatasetNotFoundError(f"data folder {root} is a file, not a folder; {fix}")
    try:
        return sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        raise DatasetNotFoundError(
            f"cannot list data folder {root}: {e.strerror or e}; check its permissions"
        ) from None


def scan_image_folder(
    root: str | Path,
    *,
    strict: bool = False,
    check: bool = True,
    progress: bool = True,
    min_per_class: int = 1,
    max_pixels: int = MAX_PIXELS,
    full_decode: bool = False,
    workers: int | None = None,
) -> ScanResult:
    """List the usable images of ``root`` (one sub-folder per class) with their labels.

    Hidden and non-image files are ignored (one warning). With ``check`` every image gets a
    fast validity check (header + truncation test, on a thread pool); bad ones are skipped
    with one warning, or raise :class:`RsdmlError` when ``strict``. Class folders left with
    no usable image are dropped with a warning (``strict``: error); a class with fewer than
    ``min_per_class`` images is an error naming it. ``workers`` threads run the check
    (default: 1 for the fast check, up to 8 for ``full_decode``; more help on slow or
    network disks).

    The fast check reads headers and end markers; it cannot see damage inside the compressed
    data, so a file it keeps may still fail to decode later (``read_rgb`` then raises
    :class:`ImageReadError`). ``full_decode`` decodes every image instead (several times
    slower) and so guarantees that every kept image decodes.
    """
    root = Path(root).expanduser().absolute()
    problems: dict[str, list[str]] = {
        k: [] for k in (*IGNORED_KINDS, *BAD_IMAGE_KINDS, "repeated_folder")
    }
    details: dict[str, str] = {}

    class_names: list[str] = []
    entries = _root_entries(root)
    for entry in entries:
        if _is_hidden(entry.name):
            problems["hidden"].append(entry.name)
        elif entry.is_dir():
            class_names.append(entry.name)
        else:
            problems["not_in_class"].append(entry.name)
    if not class_names:
        if not entries:
            raise DatasetNotFoundError(f"data folder {root} is empty; {_LAYOUT}")
        visible = [e.name for e in entries if not _is_hidden(e.name)]
        if not visible:
            raise DatasetNotFoundError(
                f"data folder {root} holds only hidden files ({_names(problems['hidden'])}); "
                f"{_LAYOUT}"
            )
        raise DatasetNotFoundError(
            f"data folder {root} holds {len(visible)} file(s) but no class sub-folders "
            f"({_names(visible)}); {_LAYOUT}"
        )

    seen: set[str] = set()
    claimed = {os.path.realpath(root), *(os.path.realpath(root / c) for c in class_names)}
    per_class = {name: _list_class(root, name, problems, details, seen, claimed)
                 for name in class_names}
    repeated = problems.pop("repeated_folder")
    if repeated:
        log.warning(
            "not reading %d linked folder(s) again (a link back into %s, or a folder linked "
            "twice): %s", len(repeated), root, _names(sorted(repeated)),
        )
    if not any(per_class.values()):
        exts = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
        raise DatasetNotFoundError(
            f"the {len(class_names)} class folder(s) of {root} hold no image files ({exts}); "
            f"{_LAYOUT}"
        )

    ignored = sorted(p for k in IGNORED_KINDS for p in problems[k])
    if ignored:
        log.warning(
            "ignored %d hidden or non-image file(s) in %s: %s", len(ignored), root, _names(ignored)
        )

    if check:
        flat = [p for name in class_names for p in per_class[name]]
        if workers is None:
            # Header parsing holds the GIL (threads were slower on warm files: 0.5 s vs
            # 0.7-1.3 s for AID's 10,000); Pillow's decoders release it.
            workers = min(8, os.cpu_count() or 1) if full_decode else 1

        def diagnose(rel: str) -> ImageReadError | None:
            return _diagnose(root / rel, max_pixels, full_decode)

        results = _progress(
            _ordered_map(diagnose, flat, workers),
            total=len(flat),
            desc="decoding images" if full_decode else "checking images",
            enabled=progress,
        )
        bad: set[str] = set()
        for i, err in enumerate(results):  # run the iterator out: the bar ends at 100%
            rel = flat[i]
            if err is not None:
                problems[err.kind].append(rel)
                details[rel] = f"{err.kind}: {err.detail}"
                bad.add(rel)
        per_class = {c: [p for p in ps if p not in bad] for c, ps in per_class.items()}
    bad_images = sorted(p for k in BAD_IMAGE_KINDS for p in problems[k])
    if bad_images:
        listed = _names(bad_images, details)
        if strict:
            raise RsdmlError(
                f"{len(bad_images)} unusable image(s) in {root}: {listed}; remove or re-save "
                f"them, or run without --strict to skip them"
            )
        log.warning("skipping %d unusable image(s) in %s: %s", len(bad_images), root, listed)

    empty = [c for c in class_names if not per_class[c]]
    if empty:
        problems["empty_class"] = empty
        if strict:
            raise RsdmlError(
                f"{len(empty)} class folder(s) of {root} hold no usable image: "
                f"{_names(empty)}; add images or remove the folder(s), or run without "
                f"--strict to drop them"
            )
        log.warning(
            "dropping %d class folder(s) of %s with no usable image: %s",
            len(empty), root, _names(empty),
        )
    classes = [c for c in class_names if per_class[c]]
    if not classes:
        raise DatasetNotFoundError(
            f"no usable images in {root}: every image file failed the check; remove or re-save "
            f"them"
        )
    small = [c for c in classes if len(per_class[c]) < min_per_class]
    if small:
        listed = _names(f"{c} ({len(per_class[c])})" for c in small)
        raise RsdmlError(
            f"{len(small)} class(es) of {root} have fewer than {min_per_class} usable images: "
            f"{listed}; add images to them or remove those class folders"
        )

    paths = [p for c in classes for p in sorted(per_class[c])]
    counts = [len(per_class[c]) for c in classes]
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), counts)
    kept = {k: sorted(v) for k, v in problems.items() if v}
    return ScanResult(root=root, classes=classes, paths=paths, labels=labels, problems=kept)


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
