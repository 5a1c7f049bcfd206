"""The public remote-sensing scene data sets rsdml knows: where each comes from, how to check
it, and where a downloaded copy lives.

Why: users start from these data sets and used to find, download and unpack them by hand, with
no checksum and no fixed split. Each :class:`DatasetInfo` records the source, the archive's
checksum where torchgeo or torchvision publish one (None otherwise: such a download is checked
by its class and image counts only), the expected counts, and a split recipe (per class,
seeded, :func:`rsdml.data.split.make_split`). ``rsdml datasets download NAME`` puts a verified
copy in ``default_data_root()/NAME`` (one folder per class), and ``--data NAME`` finds it.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rsdml.data.imageio import IMAGE_EXTENSIONS
from rsdml.errors import DatasetNotFoundError, RsdmlError
from rsdml.fsutil import write_text_atomic

_MARKER = ".rsdml-dataset.json"  # beside the class folders' root: name, counts, checksum


@dataclass(frozen=True)
class SplitRecipe:
    """How ``rsdml split NAME`` splits the data set unless told otherwise (the paper's
    transductive protocol, 20 % of each class labelled, seed 0)."""

    protocol: str = "transductive"
    labeled_fraction: float = 0.2
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class DatasetInfo:
    """One public scene data set. ``urls``: direct downloads, tried in order (empty: the data
    set is only offered behind a web page, ``homepage``); ``class_counts``: images per class
    where every class is known, else only the totals are checked."""

    name: str
    title: str
    classes: int
    images: int
    image_size: str
    bands: str
    licence: str
    homepage: str
    filename: str
    size: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    md5: str | None = None
    class_counts: dict[str, int] | None = None
    split: SplitRecipe = field(default_factory=SplitRecipe)
    notes: str = ""

    @property
    def checksum(self) -> str:
        return "sha256" if self.sha256 else "md5" if self.md5 else "none (counts only)"


_EUROSAT_COUNTS = {"AnnualCrop": 3000, "Forest": 3000, "HerbaceousVegetation": 3000,
                   "Highway": 2500, "Industrial": 2500, "Pasture": 2000, "PermanentCrop": 2500,
                   "Residential": 3000, "River": 2500, "SeaLake": 3000}
_AID_COUNTS = {"Airport": 360, "BareLand": 310, "BaseballField": 220, "Beach": 400,
               "Bridge": 360, "Center": 260, "Church": 240, "Commercial": 350,
               "DenseResidential": 410, "Desert": 300, "Farmland": 370, "Forest": 250,
               "Industrial": 390, "Meadow": 280, "MediumResidential": 290, "Mountain": 340,
               "Park": 350, "Parking": 390, "Playground": 370, "Pond": 420, "Port": 380,
               "RailwayStation": 260, "Resort": 290, "River": 410, "School": 300,
               "SparseResidential": 300, "Square": 330, "Stadium": 290, "StorageTanks": 360,
               "Viaduct": 420}

#: Every data set, by the name ``--data`` and ``rsdml datasets`` use. URLs and checksums:
#: torchgeo (ucmerced.py, resisc45.py, eurosat.py, patternnet.py) and torchvision (EuroSAT).
DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo(
        "ucmerced", "UC Merced Land Use", 21, 2100, "256x256", "RGB (8-bit TIFF)",
        "USGS public-domain imagery; cite Yang & Newsam 2010",
        "http://weegee.vision.ucmerced.edu/datasets/landuse.html", "UCMerced_LandUse.zip",
        "317 MiB",
        urls=("https://hf.co/datasets/torchgeo/ucmerced/resolve/"
              "7c5ef3454d9b1cccfa7ccde0c01fc8f00a45909a/UCMerced_LandUse.zip",
              "http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip"),
        sha256="06c539ef28703a58fb07bd2837991ac7c48b813b00bb12ac197efd813a18daeb",
        md5="5b7ec56793786b6dc8a908e8854ac0e4"),
    DatasetInfo(
        "aid", "AID (Aerial Image Dataset)", 30, 10000, "600x600", "RGB (JPEG)",
        "academic use; see the source page", "https://captain-whu.github.io/AID/", "AID.zip",
        "unknown", class_counts=_AID_COUNTS,
        notes="offered through OneDrive/Baidu links only; no official split (torchgeo-bench)"),
    DatasetInfo(
        "nwpu-resisc45", "NWPU-RESISC45", 45, 31500, "256x256", "RGB (JPEG)",
        "academic use; see the source page",
        "https://gcheng-nwpu.github.io/#Datasets", "NWPU-RESISC45.zip", "unknown",
        urls=("https://hf.co/datasets/torchgeo/resisc45/resolve/"
              "a826b44d938a883185f11ebe3d512d38b464312f/NWPU-RESISC45.zip",),
        md5="75206b2e16446591afa88e2628744886"),
    DatasetInfo(
        "eurosat-rgb", "EuroSAT (RGB)", 10, 27000, "64x64", "RGB (JPEG, Sentinel-2 B4 B3 B2)",
        "MIT", "https://github.com/phelber/EuroSAT", "EuroSAT.zip", "about 90 MiB",
        urls=("https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
              "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
              "https://madm.dfki.de/files/sentinel/EuroSAT.zip"),
        md5="c8fa014336c82ac7804f0398fcb19387", class_counts=_EUROSAT_COUNTS),
    DatasetInfo(
        "eurosat-ms", "EuroSAT (multispectral)", 10, 27000, "64x64",
        "13 Sentinel-2 bands (uint16 GeoTIFF); red, green, blue = bands 4, 3, 2",
        "MIT", "https://github.com/phelber/EuroSAT", "EuroSATallBands.zip", "1.9 GiB",
        urls=("https://hf.co/datasets/torchgeo/eurosat/resolve/"
              "1ce6f1bfb56db63fd91b6ecc466ea67f2509774c/EuroSATallBands.zip",
              "https://madm.dfki.de/files/sentinel/EuroSATallBands.zip"),
        md5="5ac12b3b2557aa56e1826e981e8e200e", class_counts=_EUROSAT_COUNTS,
        notes="train with --bands all --rgb-bands 4,3,2"),
    DatasetInfo(
        "rsscn7", "RSSCN7", 7, 2800, "400x400", "RGB (JPEG)",
        "unknown; see the source page", "https://github.com/palewithout/RSSCN7",
        "RSSCN7.zip", "unknown", notes="no direct download known"),
    DatasetInfo(
        "whu-rs19", "WHU-RS19", 19, 1005, "600x600", "RGB (JPEG)",
        "unknown; see the source page", "https://captain-whu.github.io/BED4RS/",
        "WHU-RS19.zip", "unknown", notes="no direct download known"),
    DatasetInfo(
        "patternnet", "PatternNet", 38, 30400, "256x256", "RGB (JPEG)",
        "academic use; see the source page", "https://sites.google.com/view/zhouwx/dataset",
        "PatternNet.zip", "unknown",
        urls=("https://hf.co/datasets/torchgeo/PatternNet/resolve/"
              "2dbd901b00e301967a5c5146b25454f5d3455ad0/PatternNet.zip",),
        md5="96d54b3224c5350a98d55d5a7e6984ad",
        notes="md5 from torchgeo's release of the same archive"),
)}


def default_data_root() -> Path:
    """``$RSDML_DATA`` when set, else ``~/.cache/rsdml/datasets``."""
    env = os.environ.get("RSDML_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rsdml" / "datasets"


def get(name: str) -> DatasetInfo:
    """The entry called ``name`` (any case), or a one-line error listing the names."""
    info = DATASETS.get(name.strip().lower())
    if info is None:
        raise RsdmlError(f"unknown data set {name!r}; `rsdml datasets list` shows "
                         f"{', '.join(DATASETS)}")
    return info


def manual_route(info: DatasetInfo, root: Path) -> str:
    """How to get ``info`` into ``root`` without rsdml's download."""
    flag = "" if root == default_data_root() else f" --root {root}"
    source = info.urls[0] if info.urls else info.homepage
    return (f"download {info.filename} by hand ({source}) into {root} and run "
            f"`rsdml datasets download {info.name}{flag}` (it verifies and extracts a file "
            "already there), or pass --data FOLDER of an extracted copy")


def how_to_get(info: DatasetInfo, root: Path) -> str:
    """The commands that get ``info`` into ``root``: the download, and the manual route."""
    if not info.urls:
        return manual_route(info, root)
    flag = "" if root == default_data_root() else f" --root {root}"
    return f"run `rsdml datasets download {info.name}{flag}`, or {manual_route(info, root)}"


def installed(info: DatasetInfo, root: Path | None = None) -> Path | None:
    """The verified copy of ``info`` under ``root``, or None."""
    folder = (root or default_data_root()) / info.name
    return folder if (folder / _MARKER).is_file() else None


def resolve_data(value: str | None) -> str | None:
    """``--data``: a folder as given, or a data set name resolved to its downloaded copy (a
    one-line error saying how to get it when there is none). An existing folder wins."""
    if not value or Path(value).expanduser().exists():
        return value
    info = DATASETS.get(value.strip().lower())
    if info is None:
        return value  # not a name: the usual "folder does not exist" error follows
    found = installed(info)
    if found is None:
        root = default_data_root()
        raise DatasetNotFoundError(f"data set {info.name} is not in {root}: "
                                   f"{how_to_get(info, root)}")
    return str(found)


# --------------------------------------------------------------------------- verification


def _image_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
            and p.suffix.lower() in IMAGE_EXTENSIONS]


def class_counts(root: Path) -> dict[str, int]:
    """Images per class folder of a one-folder-per-class tree (hidden entries skipped)."""
    return {d.name: len(_image_files(d)) for d in sorted(root.iterdir())
            if d.is_dir() and not d.name.startswith(".")}


def locate_class_root(tree: Path, classes: int) -> Path:
    """The shallowest folder of ``tree`` with ``classes`` sub-folders that hold images: where
    the class folders sit inside an archive (``2750/``, ``UCMerced_LandUse/Images/``...)."""
    queue = deque([tree])
    while queue:
        folder = queue.popleft()
        subs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        if len(subs) == classes and all(_image_files(d) for d in subs):
            return folder
        queue.extend(subs)
    raise RsdmlError(f"the archive holds no folder with {classes} class folders of images; "
                     "it is not the expected data set")


def verify_counts(info: DatasetInfo, root: Path) -> dict[str, int]:
    """Check the class and image counts of an extracted copy; a one-line error otherwise."""
    counts = class_counts(root)
    problems = []
    if len(counts) != info.classes:
        problems.append(f"{len(counts)} classes instead of {info.classes}")
    if sum(counts.values()) != info.images:
        problems.append(f"{sum(counts.values())} images instead of {info.images}")
    if info.class_counts is not None and not problems:
        wrong = [f"{c} {counts.get(c, 0)}/{n}" for c, n in info.class_counts.items()
                 if counts.get(c) != n]
        if wrong:
            problems.append(f"classes with other counts: {', '.join(wrong[:3])}")
    if problems:
        raise RsdmlError(f"{info.name}: the extracted data has {'; '.join(problems)}; the "
                         "archive is incomplete or another version (nothing was installed)")
    return counts


def download_dataset(name: str, root: str | Path | None = None, *, show: bool = True,
                     keep_archive: bool = False, urls: tuple[str, ...] | None = None) -> Path:
    """Download (resuming), verify and install data set ``name`` into ``root/NAME``; returns
    that folder. An archive already in ``root`` (downloaded by hand) is verified and used.
    ``urls`` overrides the entry's (tests serve a fake archive locally)."""
    from rsdml.data.download import DownloadError, fetch, install, verify_checksum

    info = get(name)
    base = Path(root).expanduser() if root is not None else default_data_root()
    target = base / info.name
    if installed(info, base) is not None:
        return target
    archive = base / info.filename
    manual = f"or {manual_route(info, base)}"
    sources = info.urls if urls is None else urls
    if not archive.is_file():
        if not sources:
            raise DownloadError(f"{info.name} has no direct download: {how_to_get(info, base)}")
        errors = []
        for url in sources:
            try:
                fetch(url, archive, show=show)
                break
            except DownloadError as e:
                errors.append(str(e))
        else:
            more = f" (and {len(errors) - 1} more mirror(s) failed)" if len(errors) > 1 else ""
            raise DownloadError(f"{errors[0]}{more}; {manual}")
    checked = verify_checksum(archive, sha256=info.sha256, md5=info.md5, manual=manual)
    counts: dict[str, int] = {}

    def check(folder: Path) -> None:
        counts.update(verify_counts(info, folder))

    install(archive, target, lambda tree: locate_class_root(tree, info.classes), check)
    write_text_atomic(target / _MARKER, json.dumps({
        "name": info.name, "classes": len(counts), "images": sum(counts.values()),
        "archive": info.filename, "checksum": checked or None,
        "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return target


# --------------------------------------------------------------------------- split files


def write_split(data: str, out: str | Path, *, protocol: str | None = None,
                labeled_fraction: float | None = None, val_fraction: float | None = None,
                test_fraction: float | None = None, seed: int | None = None,
                force: bool = False, progress: bool = True) -> tuple[Path, dict[str, int]]:
    """``rsdml split``: a split file (CSV plus its contract) for a data set name or a folder,
    by the entry's recipe (or the default one) with the given values changed; ``rsdml train
    --data DATA --split OUT`` reuses it. Returns (the file, images per role)."""
    from rsdml.config import TrainConfig
    from rsdml.data.scan import scan_image_folder
    from rsdml.data.split import make_split, write_split_csv

    out = Path(out)
    if out.exists() and not force:
        raise RsdmlError(f"--out {out} already exists; add --force to replace it")
    if not out.parent.is_dir():
        raise RsdmlError(f"--out folder {out.parent} does not exist; create it first")
    folder = resolve_data(data)
    info = DATASETS.get(data.strip().lower()) if not Path(data).expanduser().exists() else None
    recipe = info.split if info is not None else SplitRecipe()
    values = {"protocol": protocol or recipe.protocol,
              "labeled_fraction": recipe.labeled_fraction if labeled_fraction is None
              else labeled_fraction,
              "val_fraction": recipe.val_fraction if val_fraction is None else val_fraction,
              "test_fraction": recipe.test_fraction if test_fraction is None else test_fraction,
              "seed": recipe.seed if seed is None else seed}
    TrainConfig(data=folder, **values).validate()  # the same checks as `rsdml train`
    scan = scan_image_folder(folder, progress=progress,
                             min_per_class=2 if values["protocol"] == "inductive" else 1)
    split = make_split(scan.paths, scan.labels, scan.classes, data_root=scan.root, **values)
    write_split_csv(split, out)
    return out, split.counts()
