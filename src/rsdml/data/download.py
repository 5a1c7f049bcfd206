"""Getting a public data set onto disk: a resumable HTTP download, its checksum checked before
anything is extracted, extraction into a temporary folder, and one rename into place.

Why by hand and not through torchgeo: torchgeo's data set classes would pull in rasterio,
lightning and more for what is one HTTP request, one hash and one ``zipfile`` call here; they
also extract in place (a killed extraction leaves a folder that looks complete) and cover only
some of the data sets (no AID, RSSCN7 or WHU-RS19). The URLs and checksums are torchgeo's
(docs/data.md). Only the standard library is used: ``urllib`` (with ``Range`` for resuming),
``hashlib``, ``zipfile`` and ``tarfile``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from rsdml.errors import RsdmlError

CHUNK = 1 << 16
#: Retries of a download cut mid-file, each resuming where the last one stopped.
RETRIES = 3
_USER_AGENT = "rsdml (https://github.com/; dataset download)"


class DownloadError(RsdmlError):
    """A download or its verification failed; the message names the URL and the manual route."""


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None) or e
    text = str(reason).strip() or type(e).__name__
    return text if len(text) <= 100 else text[:97] + "..."


def fetch(url: str, dest: Path, *, show: bool = True, timeout: float = 30.0,
          retries: int = RETRIES) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming the part file with an HTTP
    ``Range`` request (also across runs); ``dest`` appears only once complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            if _fetch_once(url, part, show, timeout):
                os.replace(part, dest)
                return dest
        except _Cut as e:
            if attempt == retries:
                raise DownloadError(f"the download of {url} was cut {e} after {retries + 1} "
                                    "tries; run the same command again to resume") from None
    raise AssertionError("unreachable")  # pragma: no cover


class _Cut(Exception):
    """The connection ended before the whole file came (resumable)."""


def _fetch_once(url: str, part: Path, show: bool, timeout: float) -> bool:
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) URLs
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part file is complete
            return True
        raise DownloadError(f"{url} answered HTTP {e.code} ({e.reason})") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(f"cannot reach {url} ({_reason(e)}); check the network") from None
    with response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0  # the server sent the whole file (no Range support): start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        done = have
        bar = _Bar(total, done, f"downloading {Path(url.split('?')[0]).name}", show)
        try:
            with open(part, "ab" if resumed else "wb") as f:
                while True:
                    try:
                        block = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise _Cut(f"at {done:,} bytes ({_reason(e)})") from None
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    bar.update(len(block))
        finally:
            bar.close()
    if total is not None and done < total:
        raise _Cut(f"at {done:,} of {total:,} bytes")
    return True


class _Bar:
    """A byte progress bar on a terminal (tqdm), silent otherwise."""

    def __init__(self, total: int | None, initial: int, desc: str, show: bool) -> None:
        self.bar = None
        if show and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True,
                            unit_divisor=1024, leave=False, dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checksum(path: Path, *, sha256: str | None, md5: str | None, manual: str = "") -> str:
    """Check ``path`` against the known digest (sha256 preferred); a mismatch deletes the file
    (a damaged archive must not be resumed or extracted) and raises. Returns what was checked,
    or "" when no checksum is known."""
    for algorithm, want in (("sha256", sha256), ("md5", md5)):
        if want:
            got = file_digest(path, algorithm)
            if got.lower() != want.lower():
                path.unlink(missing_ok=True)
                tail = f" {manual}" if manual else ""
                raise DownloadError(
                    f"{path.name} has {algorithm} {got}, expected {want}: the download is "
                    f"damaged or the source changed; it was deleted and nothing was extracted "
                    f"(run the command again{tail})")
            return algorithm
    return ""


def extract(archive: Path, into: Path) -> None:
    """Unpack a .zip or .tar(.gz/.bz2/.xz) archive into the folder ``into``, refusing members
    that would land outside it."""
    into = into.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    if not (into / name).resolve().is_relative_to(into):
                        raise DownloadError(f"{archive.name} holds an unsafe path {name!r}; "
                                            "refusing to extract it")
                z.extractall(into)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as t:
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: links, devices refused
                    t.extractall(into, filter="data")
                else:  # pragma: no cover - older Pythons: at least no path leaves `into`
                    for m in t.getmembers():
                        if not (into / m.name).resolve().is_relative_to(into) or m.issym() \
                                or m.islnk():
                            raise DownloadError(f"{archive.name} holds an unsafe member "
                                                f"{m.name!r}; refusing to extract it")
                    t.extractall(into)
        else:
            raise DownloadError(f"{archive} is neither a zip nor a tar archive; extract it by "
                                "hand into one folder per class and pass that folder as --data")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise DownloadError(f"{archive} cannot be extracted ({_reason(e)}); delete it and "
                            "download it again") from None


def install(archive: Path, target: Path, locate: Callable[[Path], Path],
            check: Callable[[Path], None]) -> Path:
    """Extract ``archive`` into a temporary folder beside ``target``, find the class-folder
    root in it (``locate``), ``check`` it, and rename it to ``target`` in one step: a killed
    or failed extraction never leaves ``target`` looking complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.extract-", dir=target.parent))
    try:
        extract(archive, tmp)
        root = locate(tmp)
        check(root)
        if target.exists():
            shutil.rmtree(target)
        os.replace(root, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
