"""The image folders this user indexed on this machine: the only ones ``rsdml serve`` reads
thumbnails from unless ``--images`` names others.

Why: an index folder records where its images are (``meta.json`` roots). An index someone hands
you could name any folder, and a server that trusted it would show that folder's images to
anyone who can reach it. ``rsdml index`` adds the folders it read to a list in the user's cache
folder, which an index file cannot write.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from rsdml.fsutil import write_text_atomic

log = logging.getLogger(__name__)
FILENAME = "trusted-image-folders.json"


def _file() -> Path:
    from rsdml.data.cache import default_cache_dir

    return default_cache_dir() / FILENAME


def _canonical(folder: str | Path) -> str:
    return str(Path(folder).expanduser().resolve())


def trusted_folders() -> set[str]:
    """The folders ``rsdml index`` read on this machine (resolved paths)."""
    try:
        data = json.loads(_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {str(f) for f in data.get("folders", [])} if isinstance(data, dict) else set()


def remember(folders: Iterable[str | Path]) -> None:
    """Add image folders that exist to the list (a failure to write only costs thumbnails)."""
    new = {_canonical(f) for f in folders if Path(f).is_dir()}
    known = trusted_folders()
    if new <= known:
        return
    try:
        _file().parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(_file(), json.dumps({"folders": sorted(known | new)}, indent=1) + "\n")
    except OSError as e:
        log.warning("could not record the indexed folder in %s (%s); `rsdml serve` will need "
                    "--images for its thumbnails", _file(), e)


def allowed_roots(roots: list[str], extra: Iterable[str | Path] = ()) -> set[int]:
    """Which of an index's ``roots`` (by number) thumbnails may be read from: those this user
    indexed on this machine and those named in ``extra`` (``rsdml serve --images``)."""
    allowed = trusted_folders() | {_canonical(f) for f in extra}
    return {i for i, r in enumerate(roots) if _canonical(r) in allowed}
