"""Atomic checkpoint files: a SIGKILL at any moment leaves the previous checkpoint loadable."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

import torch

from rsdml.errors import RsdmlError

FORMAT_VERSION = 1


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
    _fsync_dir(path.parent)
    _remove_stale_temps(path)


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


def _fsync_dir(folder: Path) -> None:
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


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Serialise ``state`` (tensors, numbers, strings, lists, dicts) atomically."""
    import io

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, **state}, buf)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        raise RsdmlError(
            f"could not write checkpoint {path} ({e.strerror or e}); free disk space or choose "
            "another --out; the previous checkpoint is untouched"
        ) from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise RsdmlError(f"checkpoint {path} does not exist; train first or give another path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file
        raise RsdmlError(
            f"checkpoint {path} cannot be read ({type(e).__name__}); it is not an rsdml "
            "checkpoint or is damaged"
        ) from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise RsdmlError(f"checkpoint {path} is not an rsdml checkpoint (format {FORMAT_VERSION})")
    return state
