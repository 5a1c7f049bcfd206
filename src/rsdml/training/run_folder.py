"""A run folder: where ``rsdml train`` keeps a run, and the one way to make, open and lock it.

``RunFolder.create`` makes a new run's folder (refusing one that holds a run), ``RunFolder.open``
finds an existing run (one-line errors that say what to do), ``lock`` keeps a second process
out, ``read_config`` / ``read_split`` read back what the run was made with. ``RunFolder(root)``
itself only names the files, without checks (for code handed a folder already opened).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, as before
    fcntl = None  # type: ignore[assignment]

from rsdml.errors import RsdmlError
from rsdml.fsutil import write_json

if TYPE_CHECKING:
    from rsdml.config import TrainConfig
    from rsdml.data.split import Split

LOCK_NAME = ".rsdml.lock"

#: Free space a run needs: a ResNet-18 last.pt is ~135 MB once the trunk trains with AdamW
#: (weights + two moments); the atomic replace holds the old and the new file at once, and
#: best.pt adds ~45 MB.
NEED_BYTES = 384 * 2**20


@dataclass(frozen=True)
class RunFolder:
    """A run's folder and the files in it. ``created`` is set by :meth:`create` only (whether
    it made the folder itself), so that :meth:`discard` can never delete an opened run."""

    root: Path
    created: bool | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, out: str | Path | None) -> RunFolder:
        """A new run's folder at ``out``: made if missing, refused if it holds anything (a run
        is continued with --resume, never overwritten) or cannot take the checkpoints."""
        if not out:
            raise RsdmlError("no run folder given: add --out RUN")
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
        return cls(root, created=created)

    @classmethod
    def open(cls, path: str | Path, what: str = "") -> RunFolder:
        """The existing run in ``path``; ``what`` (e.g. ``--resume``) names it in errors."""
        root = Path(path)
        name = f"{what} {root}" if what else str(root)
        again = "check the path (the folder `rsdml train --out` wrote)"
        if not root.exists():
            raise RsdmlError(f"{name} is not an rsdml run folder (no config.yaml): it does not "
                             f"exist; {again}")
        if not root.is_dir():
            raise RsdmlError(f"{name} is a file, not an rsdml run folder; {again}")
        run = cls(root)
        if not run.config.is_file():
            raise RsdmlError(f"{name} is not an rsdml run folder (no config.yaml); {again}")
        return run

    def check_writable(self) -> None:
        """Fail before training if the folder is read-only or its disk nearly full."""
        check_writable(self.root)

    def lock(self) -> RunLock:
        """The folder's exclusive lock, taken by ``with run.lock():`` (or ``.acquire()``)."""
        return RunLock(self.root)

    def discard(self) -> None:
        """Undo a new run whose start failed (e.g. the pretrained weights could not be
        fetched), so that the retry the error suggests is not refused as 'already exists'.
        The folder was new or empty when the run began, so everything in it is this run's."""
        if self.created is None:
            raise RuntimeError(f"{self.root} was opened, not created: it is never discarded")
        if self.created:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        for child in list(self.root.iterdir()) if self.root.is_dir() else []:
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()

    # ------------------------------------------------------------------ what the run was made with
    def write_start(self, cfg: TrainConfig, split: Split) -> None:
        """The files a new run starts from: its config, split and class names."""
        from rsdml.data.split import write_split_csv

        cfg.save_yaml(self.config)
        write_split_csv(split, self.split)
        write_json(self.class_names, split.classes)

    def read_config(self) -> TrainConfig:
        """The run's config.yaml, as the run was made (older runs' defaults filled in)."""
        from rsdml.config import TrainConfig, load_yaml
        from rsdml.training.methods.registry import param_classes

        if not self.config.is_file():
            raise RsdmlError(f"{self.root} is not an rsdml run folder (no config.yaml); check "
                             "the path")
        cfg = TrainConfig.from_yaml(self.config, params=param_classes())
        if "epoch_unit" not in load_yaml(self.config):  # made before the budget followed the pool
            cfg = cfg.replace(epoch_unit="labeled")
        return cfg

    def record_config(self, cfg: TrainConfig, step: int | None) -> None:
        """Write a resumed run's config to config.yaml when a resume changed it, and append
        what changed (old and new values, at which step) to ``config_history.jsonl``: the run
        folder and its report always say what the run did."""
        before = self.read_config().to_dict()
        after = cfg.to_dict()
        changes = {k: [before.get(k), v] for k, v in after.items()
                   if k != "quiet" and before.get(k) != v}
        if not changes:
            return
        cfg.save_yaml(self.config)
        row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "at_step": step, "changes": changes}
        with open(self.config_history, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read_split(self, protocol: str | None = None, what: str = "run folder") -> Split:
        """The split the run was made with (split.csv, checked against class_names.json);
        ``protocol`` is the run's; ``what`` names the folder in one-line errors."""
        from rsdml.data.split import read_split

        where = f"{what} {self.root}"
        for f in (self.split, self.class_names):
            if not f.is_file():
                raise RsdmlError(
                    f"{where}: {f.name} is missing, so the run folder is incomplete (it was "
                    "stopped while being created, or files were deleted); start a new run with "
                    "another --out"
                )
        split = read_split(self.split, protocol=protocol, what=f"{where}: split.csv")
        try:
            classes = json.loads(self.class_names.read_text())
        except (OSError, ValueError) as e:
            raise RsdmlError(
                f"{where}: class_names.json cannot be read ({type(e).__name__}); restore it (a "
                "JSON list of the class folder names, as in split.csv) or start a new run"
            ) from None
        if classes != split.classes:
            raise RsdmlError(f"{where}: class names in split.csv and class_names.json differ; "
                             "restore the run's files or start a new run")
        return split

    # ------------------------------------------------------------------ paths
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def config_history(self) -> Path:
        """What resumes changed in config.yaml (``--extend``, another --data ...)."""
        return self.root / "config_history.jsonl"

    @property
    def split(self) -> Path:
        return self.root / "split.csv"

    @property
    def class_names(self) -> Path:
        return self.root / "class_names.json"

    @property
    def train_log(self) -> Path:
        return self.root / "train_log.jsonl"

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
            return self.last if which == "last" else self.best
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


class RunLock:
    """An exclusive lock on a run folder while a process trains in it, so a second
    ``--resume`` (or a second grid on the same --out) is refused instead of writing the same
    logs twice. fcntl locks end with the process, so a killed run never leaves it locked."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

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
