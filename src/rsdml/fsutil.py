"""Small file-system helpers shared by every stage: atomic replacement and JSON lines.

Every file rsdml replaces (checkpoints, config.yaml, split files, metrics, the report and its
figures, embeddings, experiment tables) goes through :func:`atomic_write_bytes`: a temp file
beside it, fsync, rename, fsync of the folder. A kill leaves the old or the new version.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from pathlib import Path
from typing import Any

from rsdml.errors import RsdmlError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    _remove_stale_temps(path)


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_npz(path: Path, **arrays: Any) -> None:
    """:func:`atomic_write_bytes` of ``numpy.savez(**arrays)`` (uncompressed, no pickles)."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def write_text_atomic(path: Path, text: str) -> None:
    """:func:`atomic_write_text`, with a failed write (disk full, read-only) as a one-line
    :class:`RsdmlError`."""
    try:
        atomic_write_text(path, text)
    except OSError as e:
        raise RsdmlError(
            f"could not write {path} ({e.strerror or e}); free disk space or check the folder's "
            "permissions (the previous version of the file, if any, is untouched)"
        ) from None


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as indented JSON, replaced atomically (one-line error if it cannot be)."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files a SIGKILLed writer left next to ``path`` (their process is gone)."""
    for old in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = old.name[len(path.name) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            old.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the folder that holds it (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines log, up to the first line a kill may have cut."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill: everything after it is not trusted
        if isinstance(row, dict):
            rows.append(row)
    return rows


def touch(path: str | Path) -> None:
    """Set ``path``'s modification time to now (best effort: a read-only folder keeps the old
    time). The caches use it to record when they were last used."""
    with contextlib.suppress(OSError):
        os.utime(path)


def replace_dir(tmp: Path, dest: Path) -> None:
    """Put the finished folder ``tmp`` (a sibling of ``dest``) at ``dest``, replacing any old one.

    POSIX cannot rename a folder over a non-empty one, so the old folder is renamed aside to
    ``.NAME.PID.old``, the new one renamed in, then the old one deleted. Until the new one is in
    place the old one is intact; a kill between the two renames (microseconds) leaves it aside,
    where :func:`recover_dir` puts it back.
    """
    import shutil

    fsync_dir(tmp)
    aside = dest.with_name(f".{dest.name}.{os.getpid()}.old")
    had_old = dest.exists()
    if had_old:
        os.replace(dest, aside)
    try:
        os.replace(tmp, dest)
    except BaseException:
        if had_old:
            os.replace(aside, dest)
        raise
    fsync_dir(dest.parent)
    if had_old:
        shutil.rmtree(aside, ignore_errors=True)


def temp_dir_beside(dest: Path) -> Path:
    """A fresh ``.NAME.PID.tmp`` folder next to ``dest`` (same file system, so renames are
    atomic), after deleting those that dead writers left."""
    import shutil

    recover_dir(dest)
    for old in dest.parent.glob(f".{glob.escape(dest.name)}.*.tmp"):
        pid = old.name[len(dest.name) + 2 : -len(".tmp")]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(old, ignore_errors=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.mkdir()
    return tmp


def recover_dir(dest: Path) -> None:
    """Undo a :func:`replace_dir` killed between its renames: put the old folder back; delete
    set-aside folders that are no longer needed."""
    import shutil

    for old in sorted(dest.parent.glob(f".{glob.escape(dest.name)}.*.old")):
        pid = old.name[len(dest.name) + 2 : -len(".old")]
        if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        if dest.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, dest)
