"""A labels file (``path,class`` CSV) and the append-only journal that makes every label durable.

The labels file is what a user labels into (``rsdml label``), trains from (``rsdml train
--labels``) and reviews into (``rsdml predict``): one row per labelled image, its path relative
to the data folder and its class name. Every other image of the folder is unlabelled.

Why a journal: the labelling page must not lose a label when the server is killed or the tab
closed. :class:`LabelStore` appends each change as one JSON line to ``FILE.csv.journal`` and
fsyncs it, then replaces the CSV atomically, and only then acknowledges the change. A kill
leaves a CSV that parses (old or new version) and a journal whose complete lines are replayed
on the next start; a torn last line (the kill came mid-write, before the acknowledgement) is
ignored.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from rsdml.errors import RsdmlError
from rsdml.fsutil import atomic_write_bytes

log = logging.getLogger(__name__)

LABEL_COLUMNS = ("path", "class")
MAX_CLASS_CHARS = 100


def check_class_name(name: str, what: str = "class name") -> str:
    """A class name as stored: stripped, non-empty, one line, at most 100 characters."""
    name = str(name).strip()
    if not name or len(name) > MAX_CLASS_CHARS or any(c in name for c in "\r\n\t"):
        raise RsdmlError(f"{what} {name[:40]!r} is not a usable class name; give 1-"
                         f"{MAX_CLASS_CHARS} characters on one line")
    return name


def read_labels(path: str | Path, images: Iterable[str] | None = None, *,
                what: str | None = None, allow_empty: bool = False) -> dict[str, str]:
    """The labels in ``path`` (image path -> class), in file order.

    ``images``: the image paths of the data folder; a row naming another image is an error.
    Duplicate rows (the same image twice, even with the same class) are an error: the file is
    ambiguous or was merged by hand.
    """
    path = Path(path)
    what = what or f"--labels {path}"
    if not path.is_file():
        raise RsdmlError(f"{what} does not exist; label images with `rsdml label DATA --labels "
                         f"{path.name}` or write a CSV with columns path,class")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise RsdmlError(f"{what} cannot be read ({e.strerror or e}); check the path") from None
    except UnicodeDecodeError:
        raise RsdmlError(f"{what} is not UTF-8 text; save it as a UTF-8 CSV with columns "
                         "path,class") from None
    labels = parse_labels(text, what)
    if not labels and not allow_empty:
        raise RsdmlError(f"{what} holds no labels; label some images first (`rsdml suggest`, "
                         "then `rsdml label`) or add rows path,class")
    if images is not None:
        check_under_data(labels, images, what, "paths are relative to --data, e.g. "
                         "Airport/airport_1.jpg (an image that cannot be decoded is not counted "
                         "as there: see the warning about unreadable images); fix or delete "
                         "those rows")
    return labels


def check_under_data(paths: Iterable[str], images: Iterable[str], what: str, fix: str) -> None:
    """The one rule for every file of the labelling loop (labels, suggestions, predictions, a
    run's labels used on a folder): each path it names is an image of the data folder, or the
    file is refused with one line naming how many are not, the first ones, and ``fix``."""
    known = set(images)
    unknown = [p for p in paths if p not in known]
    if unknown:
        raise RsdmlError(f"{what} names {len(unknown)} image(s) not in the data folder (first: "
                         f"{', '.join(unknown[:3])}); {fix}")


def parse_labels(text: str, what: str) -> dict[str, str]:
    """Rows of a labels CSV (header ``path,class``); one-line errors naming the line."""
    if not text.strip():
        return {}
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise RsdmlError(f"{what} is not a valid CSV file ({e}); give columns path,class") from None
    header = [c.strip() for c in rows[0]]
    if tuple(header[:2]) != LABEL_COLUMNS:
        raise RsdmlError(f"{what} starts with {','.join(header)!r}; the first line must be the "
                         "header path,class")
    labels: dict[str, str] = {}
    lines: dict[str, int] = {}
    for i, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        if len(row) < 2:
            raise RsdmlError(f"{what} line {i}: expected path,class, got {','.join(row)!r}")
        p = row[0].strip().replace("\\", "/")
        if not p or p.startswith("/") or ".." in p.split("/"):
            raise RsdmlError(f"{what} line {i}: {p!r} is not a path relative to the data folder")
        if p in labels:
            raise RsdmlError(f"{what} line {i}: {p} is labelled again (first on line "
                             f"{lines[p]}); keep one row per image")
        labels[p] = check_class_name(row[1], f"{what} line {i}: class")
        lines[p] = i
    return labels


def labels_csv(labels: dict[str, str]) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(LABEL_COLUMNS)
    for p, c in labels.items():
        w.writerow((p, c))
    return buf.getvalue().encode("utf-8")


def write_labels(path: str | Path, labels: dict[str, str]) -> None:
    """Replace ``path`` atomically with ``labels`` (one-line error when it cannot be)."""
    try:
        atomic_write_bytes(Path(path), labels_csv(labels))
    except OSError as e:
        raise RsdmlError(f"could not write {path} ({e.strerror or e}); check the folder's "
                         "permissions and free space") from None


def class_counts(labels: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in labels.values():
        out[c] = out.get(c, 0) + 1
    return dict(sorted(out.items()))


def journal_path(path: str | Path) -> Path:
    return Path(str(path) + ".journal")


class LabelStore:
    """The labels of one file, changed one durable step at a time (see the module docstring).

    Each change is ``set`` (label or relabel an image) or ``remove``; :meth:`undo` reverts the
    last change of one client (a page's tab) by writing its inverse, so the journal stays
    append-only. An image another client changed since is left as that client set it.
    """

    def __init__(self, path: str | Path, images: Iterable[str] | None = None) -> None:
        self.path = Path(path)
        self.journal = journal_path(self.path)
        self._lock = threading.Lock()
        #: per client, one entry per change: (image, class before, class after) of each image
        self._history: dict[str, list[list[tuple[str, str | None, str | None]]]] = {}
        self.images = set(images) if images is not None else None
        if not self.path.parent.is_dir():
            raise RsdmlError(f"--labels folder {self.path.parent} does not exist; create it first")
        # Held for the store's life: an exclusive lock on it keeps a second writer out.
        self._fh = open(self.journal, "a+b")  # noqa: SIM115 (closed by close())
        try:
            _lock_exclusive(self._fh, self.path)
            self.labels = read_labels(self.path, self.images, allow_empty=True) \
                if self.path.exists() else {}
            replayed = self._replay()
            if replayed or not self.path.exists():
                write_labels(self.path, self.labels)
            if replayed:
                log.info("recovered %d change(s) from %s", replayed, self.journal)
            self._fh.truncate(0)  # the CSV now holds everything
            os.fsync(self._fh.fileno())
        except BaseException:
            self._fh.close()
            raise

    def _replay(self) -> int:
        if not self.journal.is_file():
            return 0
        n = 0
        for raw in self.journal.read_bytes().split(b"\n"):
            try:
                event = json.loads(raw)
                op, p = event["op"], event["path"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line (never acknowledged) or blank
            if self.images is not None and p not in self.images:
                continue
            if op == "set":
                self.labels[p] = event["class"]
            elif op == "remove":
                self.labels.pop(p, None)
            n += 1
        return n

    def _append(self, events: list[dict[str, str]]) -> None:
        data = b"".join(json.dumps(e).encode() + b"\n" for e in events)
        self._fh.write(data)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        write_labels(self.path, self.labels)

    def set_many(self, paths: list[str], cls: str, client: str = "") -> int:
        """Label every image of ``paths`` as ``cls``; durable when this returns."""
        cls = check_class_name(cls)
        with self._lock:
            for p in paths:
                if self.images is not None and p not in self.images:
                    raise RsdmlError(f"{p} is not an image of this data folder")
            changed = list(dict.fromkeys(p for p in paths if self.labels.get(p) != cls))
            if changed:
                self._history.setdefault(client, []).append(
                    [(p, self.labels.get(p), cls) for p in changed])
                for p in changed:
                    self.labels[p] = cls
                self._append([{"op": "set", "path": p, "class": cls} for p in changed])
            return len(changed)

    def remove(self, path: str, client: str = "") -> bool:
        with self._lock:
            if path not in self.labels:
                return False
            self._history.setdefault(client, []).append([(path, self.labels.pop(path), None)])
            self._append([{"op": "remove", "path": path}])
            return True

    def undo(self, client: str = "") -> list[tuple[str, str | None]]:
        """Revert ``client``'s last change: [(image, its class now or None)]; empty when none
        is left. Images another client changed since keep their label (and are not listed)."""
        with self._lock:
            history = self._history.get(client)
            if not history:
                return []
            group = [(p, before) for p, before, after in history.pop()
                     if self.labels.get(p) == after]
            events = []
            for p, before in group:
                if before is None:
                    self.labels.pop(p, None)
                    events.append({"op": "remove", "path": p})
                else:
                    self.labels[p] = before
                    events.append({"op": "set", "path": p, "class": before})
            if events:
                self._append(events)
            return group

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self.labels)

    def close(self) -> None:
        """The CSV holds every change: the journal is no longer needed."""
        with self._lock:
            if self._fh.closed:
                return
            self.journal.unlink(missing_ok=True)
            self._fh.close()


def _lock_exclusive(fh: io.BufferedRandom, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, one writer is the user's to ensure
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise RsdmlError(f"another process (an `rsdml label` still running?) is writing {path}; "
                         "stop it first, or label into another --labels file") from None
