"""What a cache of anything computed from image files is keyed by: one content identity.

Every cache of rsdml (the decoded images, fast mode's trunk features, any cache of views) keys
on the same thing: each file's path relative to the data root, its size and its modification
time in nanoseconds. Replacing an image in place changes its size or mtime, so every cache
computed from it is made again; renaming or copying a folder does not touch the vectors' keys
beyond the root. Reading every byte (a content hash) would cost as much as decoding.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rsdml.errors import RsdmlError


def add_files(h: Any, root: str | Path, paths: Sequence[str]) -> None:
    """Feed ``(path, size, mtime_ns)`` of each file below ``root`` into the hash ``h``
    (anything with ``update(bytes)``). A file that cannot be read is a one-line error."""
    root = Path(root)
    for rel in paths:
        try:
            st = os.stat(root / rel)
        except OSError as e:
            raise RsdmlError(
                f"cannot read image {root / rel} ({e.strerror or e}); check the data folder"
            ) from e
        h.update(f"\n{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode())


def content_identity(root: str | Path, paths: Sequence[str]) -> str:
    """One hex digest of the files ``paths`` below ``root``: their names, sizes and mtimes."""
    h = hashlib.blake2b(digest_size=20)
    add_files(h, root, paths)
    return h.hexdigest()
