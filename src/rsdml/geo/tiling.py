"""``rsdml tile``: cut georeferenced rasters into tiles that the rest of rsdml reads as images.

Why tiles on disk rather than windows read lazily at every use: every command that takes an
image folder (suggest, label, train --labels, predict, embed, index, serve) then works on a
scene unchanged, and the decoded-image cache and the trunk-feature cache key on files as they
do for any folder, so the tiles are decoded once per image size, not at every use. A lazy
window is cheaper to read than a tile file (docs/results.md, "Scenes to maps": one pass over
the 20,000 px scene), but no command would work on it without a second data path. Each tile
is a GeoTIFF (deflate by default, or uncompressed: lossless either way, every band at its bit
depth, so ``--bands`` / ``--rgb-bands`` apply to tiles as to any TIFF) with its own
georeference; ``TILES/tiles.json`` records each tile's scene, grid cell and window
(:mod:`rsdml.geo.tileindex`).

A scene is never read whole: one strip of tile rows (``size`` pixels high, the scene's width)
at a time, with GDAL's block cache capped, so memory stays at a few strips whatever the scene.
Nothing is written half: the tiles go to a temporary folder beside ``--out`` that replaces it
only once every scene is done.
"""

from __future__ import annotations

import logging
import math
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsdml.errors import RsdmlError
from rsdml.fsutil import atomic_write_text, replace_dir, temp_dir_beside
from rsdml.geo.tileindex import INDEX_NAME, OVERVIEW_DIR, Scene, Tile, TileIndex
from rsdml.progress import progress

log = logging.getLogger(__name__)

#: The overview of a scene (the map page's background) is at most this many pixels a side.
OVERVIEW_PX = 2048
#: GDAL's block cache while tiling (bytes): bounds memory on striped and tiled files alike.
GDAL_CACHE_BYTES = 256 * 2**20
MIN_SIZE = 8


@dataclass
class _Source:
    path: Path
    name: str
    width: int
    height: int
    count: int
    dtype: str
    crs: Any  # rasterio CRS or None
    transform: Any
    nodata: float | None
    masked: bool  # has nodata, an alpha band or a mask: read the mask


def _rasterio() -> Any:
    import rasterio

    return rasterio


def _open(path: Path) -> Any:
    """Open ``path`` with rasterio; a missing, corrupt or non-raster file is one line."""
    rasterio = _rasterio()
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    if not path.is_file():
        raise RsdmlError(f"scene {path} does not exist; check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as e:
        detail = str(e).replace(str(path), "").strip(" :'\"") or "unreadable"
        raise RsdmlError(f"scene {path} is not a readable raster ({detail}); check that the "
                         "file is a complete GeoTIFF (`gdalinfo` says what GDAL sees)") from None


def _describe(path: Path) -> _Source:
    from rasterio.enums import MaskFlags

    with _open(path) as src:
        crs = src.crs
        georef = crs is not None or not src.transform.is_identity
        if crs is not None and not (crs.is_projected or crs.is_geographic):
            raise RsdmlError(
                f"scene {path} has a CRS that GDAL does not know ({crs.to_wkt()[:60]}...); "
                "give it a known one, e.g. `gdal_edit.py -a_srs EPSG:32631 SCENE.tif`")
        if georef and crs is None:
            log.warning("scene %s has a geotransform but no CRS: the map keeps the transform "
                        "and has no CRS", path)
        flags = {f for fl in src.mask_flag_enums for f in fl}
        masked = src.nodata is not None or MaskFlags.all_valid not in flags or len(flags) > 1
        return _Source(path, path.stem, src.width, src.height, src.count, src.dtypes[0],
                       crs, src.transform, src.nodata, masked)


def check_scenes(paths: Sequence[str | Path], size: int, stride: int) -> list[_Source]:
    """Every scene's header, checked before anything is written (one line per problem)."""
    if not paths:
        raise RsdmlError("give at least one scene: rsdml tile SCENE.tif [...] --out TILES")
    if size < MIN_SIZE:
        raise RsdmlError(f"--size {size} is too small; give at least {MIN_SIZE} pixels")
    if not 1 <= stride <= size:
        raise RsdmlError(f"--stride {stride} must be between 1 and --size {size} (a larger "
                         "stride would leave gaps between tiles)")
    sources = [_describe(Path(p).expanduser()) for p in paths]
    names: dict[str, Path] = {}
    for s in sources:
        if s.name in names:
            raise RsdmlError(f"two scenes are named {s.name!r} ({names[s.name]}, {s.path}); "
                             "rename one (the name is the tiles' sub-folder)")
        names[s.name] = s.path
        if size > min(s.width, s.height):
            raise RsdmlError(f"--size {size} is larger than scene {s.path} ({s.width} x "
                             f"{s.height} px); give --size {min(s.width, s.height)} or less")
    first = sources[0]
    for s in sources[1:]:
        if (s.crs is None) != (first.crs is None) or (s.crs is not None and s.crs != first.crs):
            raise RsdmlError(
                f"scenes in different CRSs: {first.path} is in {_crs_name(first.crs)}, {s.path} "
                f"in {_crs_name(s.crs)}; one map has one CRS: reproject first, e.g. "
                f"`gdalwarp -t_srs {_crs_name(first.crs)} {s.path.name} out.tif`, or tile them "
                "into separate folders")
        if s.count != first.count or s.dtype != first.dtype:
            raise RsdmlError(f"scenes with different bands: {first.path} has {first.count} x "
                             f"{first.dtype}, {s.path} {s.count} x {s.dtype}; tile them into "
                             "separate folders")
    if first.crs is None:
        log.warning("%s no georeference: its tiles and map are in pixel coordinates "
                    "(x right, y down from the upper left corner)",
                    "the scenes have" if len(sources) > 1 else f"scene {first.path} has")
    return sources


def _crs_name(crs: Any) -> str:
    if crs is None:
        return "no CRS (pixel coordinates)"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()[:60]


def _grid(n: int, size: int, stride: int) -> int:
    """Tiles along an axis of ``n`` pixels: the last one may reach past the edge."""
    return math.ceil(max(n - size, 0) / stride) + 1


COMPRESSIONS = ("deflate", "none")


def tile_scenes(paths: Sequence[str | Path], out: str | Path, *, size: int = 256,
                stride: int | None = None, min_valid: float = 0.5, compress: str = "deflate",
                force: bool = False, quiet: bool = False) -> TileIndex:
    """Tile every scene of ``paths`` into ``out`` (a new folder): ``out/SCENE/rRR_cCC.tif`` and
    ``out/tiles.json``. Tiles with less than ``min_valid`` of their pixels inside the scene and
    not nodata are skipped."""
    stride = size if stride is None else stride
    if not 0 < min_valid <= 1:
        raise RsdmlError(f"--min-valid {min_valid} must be in (0, 1]")
    if compress not in COMPRESSIONS:
        raise RsdmlError(f"--compress {compress!r} is not one of {', '.join(COMPRESSIONS)}")
    sources = check_scenes(paths, size, stride)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise RsdmlError(f"--out {out} is a file; give a folder for the tiles")
    if out.exists() and any(out.iterdir()) and not force:
        raise RsdmlError(f"--out {out} exists and is not empty; give another folder or --force "
                         "to replace it")
    if not out.parent.is_dir():
        raise RsdmlError(f"the folder of --out, {out.parent}, does not exist; create it first")
    rasterio = _rasterio()
    tmp = temp_dir_beside(out)
    try:
        scenes, tiles = [], []
        from rasterio.errors import NotGeoreferencedWarning

        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # said once above
            for s in sources:
                scene, found = _tile_one(s, tmp, size, stride, min_valid, compress, quiet)
                scenes.append(scene)
                tiles.extend(found)
        if not tiles:
            raise RsdmlError(f"no tile has {min_valid:.0%} valid pixels (all nodata or outside "
                             "the footprint); check the scenes' nodata value or lower --min-valid")
        index = TileIndex(out, scenes, tiles)
        atomic_write_text(tmp / INDEX_NAME, index.to_json())
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return index


def _read_failed(s: _Source, y0: int, e: Exception) -> RsdmlError:
    return RsdmlError(f"scene {s.path} cannot be read at rows {y0}.. ({str(e).strip()[:80]}): "
                      "truncated or corrupt; nothing was written (check it with `gdalinfo "
                      "-checksum`)")


def _tile_one(s: _Source, out: Path, size: int, stride: int, min_valid: float, compress: str,
              quiet: bool) -> tuple[Scene, list[Tile]]:
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    rows, cols = _grid(s.height, size, stride), _grid(s.width, size, stride)
    digits = max(len(str(rows - 1)), len(str(cols - 1)), 3)
    folder = out / s.name
    folder.mkdir()
    factor = max(1, math.ceil(max(s.width, s.height) / OVERVIEW_PX))
    ov_w, ov_h = math.ceil(s.width / factor), math.ceil(s.height / factor)
    ov_bands = [0, 1, 2] if s.count >= 3 else [0]
    overview = np.zeros((len(ov_bands), ov_h, ov_w), s.dtype)
    ov_mask = np.zeros((ov_h, ov_w), bool)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": s.count,
               "dtype": s.dtype, "crs": s.crs, "nodata": s.nodata}
    if compress == "deflate":
        profile.update(compress="deflate", predictor=2 if np.dtype(s.dtype).kind in "iu" else 1)
    kept: list[Tile] = []
    with _open(s.path) as src:
        for r in progress(range(rows), total=rows, desc=f"tiling {s.name}", enabled=not quiet):
            y0 = r * stride
            h = min(size, s.height - y0)
            try:
                strip = src.read(window=Window(0, y0, s.width, h))
                valid = (src.dataset_mask(window=Window(0, y0, s.width, h)) > 0
                         if s.masked else None)
            except RasterioError as e:
                raise _read_failed(s, y0, e) from None
            # The overview: nearest scene row and column for each overview pixel in this strip.
            last = y0 + (h if r == rows - 1 else min(stride, h))
            oy = np.arange(math.ceil(y0 / factor), math.ceil(last / factor))
            if len(oy):
                sel = strip[ov_bands][:, oy * factor - y0][:, :, ::factor]
                overview[:, oy] = sel
                ov_mask[oy] = True if valid is None else valid[oy * factor - y0][:, ::factor]
            for c in range(cols):
                x0 = c * stride
                w = min(size, s.width - x0)
                n_valid = h * w if valid is None else int(valid[:, x0:x0 + w].sum())
                share = n_valid / (size * size)
                if share < min_valid:
                    continue
                tile = np.zeros((s.count, size, size), s.dtype)
                if s.nodata is not None:
                    tile[:] = np.asarray(s.nodata).astype(s.dtype)
                tile[:, :h, :w] = strip[:, :, x0:x0 + w]
                name = f"r{r:0{digits}d}_c{c:0{digits}d}.tif"
                with _rasterio().open(folder / name, "w", transform=s.transform
                                      @ _translation(x0, y0), **profile) as dst:
                    dst.write(tile)
                kept.append(Tile(f"{s.name}/{name}", s.name, r, c, share))
    ov_name = f"{OVERVIEW_DIR}/{s.name}.png"
    _write_overview(out / ov_name, overview, ov_mask)
    if not quiet:
        log.info("%s: %d of %d tiles kept (%d x %d grid), %d with too little valid data "
                 "skipped", s.name, len(kept), rows * cols, rows, cols, rows * cols - len(kept))
    scene = Scene(s.name, str(s.path.resolve()), s.width, s.height, s.count, s.dtype,
                  s.crs.to_wkt() if s.crs is not None else None, list(s.transform)[:6], size,
                  stride, rows, cols, ov_name, ov_w, ov_h)
    return scene, kept


def _translation(x: float, y: float) -> Any:
    from affine import Affine

    return Affine.translation(x, y)


def _write_overview(path: Path, bands: np.ndarray, mask: np.ndarray) -> None:
    """An RGBA PNG of the overview: 8-bit bands as they are, others stretched (2-98 %)."""
    from PIL import Image

    out = np.zeros((*mask.shape, 4), np.uint8)
    for i in range(3):
        band = bands[min(i, len(bands) - 1)]
        if band.dtype == np.uint8:
            out[..., i] = band
            continue
        vals = band[mask].astype(np.float64)
        lo, hi = (np.percentile(vals, [2, 98]) if vals.size else (0.0, 1.0))
        out[..., i] = np.clip((band - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
    out[..., 3] = np.where(mask, 255, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(out, "RGBA").save(path, compress_level=1)
