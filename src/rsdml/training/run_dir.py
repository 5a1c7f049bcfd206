"""The layout of a run folder, and the checks made before any training starts."""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, as before
    fcntl = None  # type: ignore[assignment]

from rsdml.errors import RsdmlError
from rsdml.fsutil import (  # noqa: F401  (re-exported: the trainer imports them from here)
    read_jsonl,
    write_json,
    write_text_atomic,
)


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    @property
    def class_names(self) -> Path:
        return self.root / "class_names.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def final_metrics(self) -> Path:
        return self.root / "final_metrics.json"

    @property
    def bands(self) -> Path:
        """The N-band input the network saw (rsdml.data.bands.InputSpec); absent for RGB."""
        return self.root / "bands.json"

    @property
    def preprocess(self) -> Path:
        """How a file becomes the model's input (rsdml.data.preprocess.Preprocess)."""
        return self.root / "preprocess.json"

    @property
    def spectrum(self) -> Path:
        return self.root / "spectrum.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def checkpoint(self, which: str) -> Path:
        """``last``, ``best``, ``auto`` (best where the protocol has one, else last) or a path."""
        if which == "auto":
            return self.best if self.best.is_file() else self.last
        if which in ("last", "best"):
            return getattr(self, which)
        return Path(which)

    def existing_checkpoint(self, which: str) -> Path:
        """:meth:`checkpoint`, or a one-line error that says why it is missing."""
        path = self.checkpoint(which)
        if path.is_file():
            return path
        if which == "best" and self.last.is_file():
            protocol = _saved_protocol(self.config)
            why = ("a transductive run has no validation images by design, so there is no best "
                   "epoch to keep" if protocol == "transductive" else
                   "it is written only when the validation accuracy improves, which it did not "
                   "yet (or the run has no validation images)")
            raise RsdmlError(f"{self.root} has no checkpoints/best.pt: {why}; use --checkpoint "
                             "last (or auto)")
        raise RsdmlError(f"checkpoint {path} does not exist; train the run first or choose "
                         "another --checkpoint")


def _saved_protocol(config: Path) -> str | None:
    try:
        import yaml

        value = yaml.safe_load(config.read_text()).get("protocol")
    except (OSError, ValueError, AttributeError):
        return None
    return str(value) if value is not None else None


LOCK_NAME = ".rsdml.lock"


class RunLock:
    """An exclusive lock on a run folder while a process trains in it, so a second
    ``--resume`` (or a second grid on the same --out) is refused instead of writing the same
    logs twice. fcntl locks end with the process, so a killed run never leaves it locked."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if fcntl is None:
            return self
        path = self.root / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RsdmlError(
                f"cannot create {path} ({e.strerror or e}); check the run folder's permissions"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise RsdmlError(
                f"run folder {self.root} is in use by another rsdml process{who}; wait until "
                "it ends (or stop it) before resuming or evaluating this run"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def remove_failed_start(run: RunDir, created: bool) -> None:
    """Undo a new run whose start failed (e.g. the pretrained weights could not be fetched),
    so that the retry the error suggests is not refused as 'already exists'. The folder was
    new or empty when the run began, so everything in it is this run's."""
    if created:
        shutil.rmtree(run.root, ignore_errors=True)
        return
    for child in list(run.root.iterdir()) if run.root.is_dir() else []:
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()


def prepare_new_run(out: str | None) -> RunDir:
    if not out:
        raise RsdmlError("no run folder given: add --out RUN_DIR")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise RsdmlError(f"--out {root} is a file; choose a folder path")
    if root.is_dir() and any(root.iterdir()):
        raise RsdmlError(
            f"run folder {root} already exists and is not empty; continue it with "
            f"`rsdml train --resume {root}` or choose another --out"
        )
    created = not root.exists()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RsdmlError(
            f"cannot create run folder {root} ({e.strerror or e}); choose another --out"
        ) from None
    try:
        check_writable(root)
    except RsdmlError:
        if created:  # leave nothing behind that looks like a started run
            with contextlib.suppress(OSError):
                root.rmdir()
        raise
    return RunDir(root)


#: Free space a run needs: a ResNet-18 last.pt is ~90 MB (weights + SGD momentum); the atomic
#: replace holds the old and the new file at once, and best.pt adds ~45 MB.
NEED_BYTES = 256 * 2**20


def check_writable(root: Path, need_bytes: int = NEED_BYTES) -> None:
    """Fail before training if the run folder is read-only or nearly full."""
    probe = root / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
    except OSError as e:
        raise RsdmlError(
            f"run folder {root} is not writable ({e.strerror or e}); fix its permissions or "
            "choose another --out"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    try:
        free = shutil.disk_usage(root).free
    except OSError:  # some network file systems cannot tell; the writes themselves will
        return
    if free < need_bytes:
        raise RsdmlError(
            f"only {free / 2**20:.0f} MiB free on the disk of {root}; a run needs about "
            f"{need_bytes / 2**20:.0f} MiB for its checkpoints: free some space or use a "
            "folder on another disk"
        )
