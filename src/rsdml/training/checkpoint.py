"""Atomic checkpoint files: a SIGKILL at any moment leaves the previous checkpoint loadable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rsdml.errors import RsdmlError
from rsdml.fsutil import atomic_write_bytes

__all__ = ["atomic_write_bytes", "load_checkpoint", "position", "position_of",
           "save_checkpoint"]

FORMAT_VERSION = 1


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


def position(global_step: int, steps_per_epoch: int) -> dict[str, Any]:
    """The one training position every checkpoint, log and final line reads: ``step`` (steps
    done), ``epoch`` (epochs begun and ended: a partial last epoch under ``--steps`` counts),
    ``epoch_is_whole`` (False when the run stopped inside that epoch) and
    ``steps_per_epoch``."""
    spe = max(1, int(steps_per_epoch))
    return {"step": int(global_step), "epoch": -(-int(global_step) // spe),
            "epoch_is_whole": int(global_step) % spe == 0, "steps_per_epoch": spe}


def position_of(state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's position (older checkpoints: from their step and steps an epoch, else
    their ``epoch``)."""
    if isinstance(state.get("position"), dict):
        return dict(state["position"])
    if "global_step" in state and "steps_per_epoch" in state:
        return position(state["global_step"], state["steps_per_epoch"])
    return {"step": state.get("global_step"), "epoch": int(state.get("epoch", 0))}
