"""``rsdml predict ... --map OUT``: the predictions of a tile folder as a map that GIS tools open.

``OUT/`` (a folder, replaced whole, never left half-written) holds, per scene of the tile
folder, ``SCENE.tif``: a class raster with one pixel per tile in the scene's CRS and the tile
grid's geotransform, value 0 = no tile (nodata), value k = the k-th class of ``classes.csv``,
a colour table, the class names as GDAL category names (``SCENE.tif.aux.xml``, what
``gdalinfo`` lists under *Categories* and QGIS shows in its legend) and as metadata inside the
TIFF (``CLASS_k``, kept when the .tif travels alone); and, for all scenes, ``tiles.gpkg``
(GeoPackage, layer ``tiles``): each tile's polygon with its class, probability and whether the
class is a label (probability 1) or a prediction.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from rsdml.errors import RsdmlError
from rsdml.fsutil import atomic_write_text, replace_dir, temp_dir_beside
from rsdml.geo.tileindex import TileIndex

MARKER = "map.json"
LAYER = "tiles"


@dataclass(frozen=True)
class TileClass:
    cls: str
    probability: float
    labelled: bool


def tile_classes(paths: list[str], classes: list[str], predicted: np.ndarray,
                 probability: np.ndarray, labels: Mapping[str, str]) -> dict[str, TileClass]:
    """Every tile's class: its label where it has one, else its prediction."""
    out = {p: TileClass(classes[int(c)], float(q), False)
           for p, c, q in zip(paths, predicted, probability)}
    out.update({p: TileClass(c, 1.0, True) for p, c in labels.items()})
    return out


def palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct colours: matplotlib's tab20 (its 10 strong colours first) and tab20b,
    then hues spaced by the golden angle."""
    import colorsys

    from matplotlib import colormaps

    order = [*range(0, 20, 2), *range(1, 20, 2)]  # tab20's strong colours, then the light ones
    base = [tuple(int(round(v * 255)) for v in colormaps[name](i)[:3])
            for name, idx in (("tab20", order), ("tab20b", range(20))) for i in idx]
    extra = [tuple(int(v * 255) for v in colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.7, 0.9))
             for i in range(max(0, n - len(base)))]
    return [(int(r), int(g), int(b)) for r, g, b in (base + extra)[:n]]


def _polygon_wkb(ring: list[tuple[float, float]]) -> bytes:
    """A little-endian WKB polygon of one ring (no geometry library needed)."""
    return (struct.pack("<BII", 1, 3, 1) + struct.pack("<I", len(ring))
            + b"".join(struct.pack("<dd", float(x), float(y)) for x, y in ring))


def _categories_xml(names: list[str]) -> str:
    cats = "\n".join(f"      <Category>{escape(n)}</Category>" for n in names)
    return ("<PAMDataset>\n  <PAMRasterBand band=\"1\">\n    <CategoryNames>\n"
            f"{cats}\n    </CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n")


def _check_out(out: Path) -> None:
    if not out.parent.is_dir():
        raise RsdmlError(f"the folder of --map, {out.parent}, does not exist; create it first")
    if out.exists() and not (out.is_dir() and ((out / MARKER).is_file() or not any(out.iterdir()))):
        raise RsdmlError(f"--map {out} exists and is not a map of rsdml (no {MARKER}); give a "
                         "new folder (it is replaced whole)")


def write_class_map(out: str | Path, index: TileIndex, tiles: Mapping[str, TileClass]) -> dict[str, Any]:
    """Write ``out/`` (see the module's docstring); returns what was written."""
    import rasterio
    from pyogrio.raw import write as write_vector
    from rasterio.crs import CRS

    out = Path(out).expanduser()
    _check_out(out)
    classes = sorted({t.cls for t in tiles.values()})
    if not classes:
        raise RsdmlError("no tile has a class to map; label or predict some tiles first")
    value = {c: i + 1 for i, c in enumerate(classes)}
    dtype = "uint8" if len(classes) < 255 else "uint16"
    colours = palette(len(classes))
    crs = CRS.from_wkt(index.crs) if index.crs else None
    tmp = temp_dir_beside(out)
    try:
        written: dict[str, Any] = {"folder": str(out), "classes": classes, "scenes": {}}
        geoms, fields = [], {k: [] for k in ("scene", "path", "row", "col", "class",
                                             "class_value", "probability", "labelled")}
        for scene in index.scenes:
            grid = np.zeros((scene.rows, scene.cols), dtype)
            n = 0
            for t in index.tiles:
                if t.scene != scene.name or t.path not in tiles:
                    continue
                tc = tiles[t.path]
                grid[t.row, t.col] = value[tc.cls]
                n += 1
                geoms.append(_polygon_wkb(scene.footprint(t.row, t.col)))
                for k, v in (("scene", scene.name), ("path", t.path), ("row", t.row),
                             ("col", t.col), ("class", tc.cls), ("class_value", value[tc.cls]),
                             ("probability", round(tc.probability, 4)),
                             ("labelled", int(tc.labelled))):
                    fields[k].append(v)
            path = tmp / f"{scene.name}.tif"
            with rasterio.open(path, "w", driver="GTiff", width=scene.cols, height=scene.rows,
                               count=1, dtype=dtype, crs=crs, transform=scene.grid_affine(),
                               nodata=0, compress="deflate") as dst:
                dst.write(grid, 1)
                dst.write_colormap(1, {0: (0, 0, 0, 0), **{
                    value[c]: (*colours[i], 255) for i, c in enumerate(classes)}})
                dst.set_band_description(1, "class")
                dst.update_tags(CLASSES=json.dumps(classes))
                dst.update_tags(1, **{f"CLASS_{value[c]}": c for c in classes})
            atomic_write_text(tmp / f"{scene.name}.tif.aux.xml",
                              _categories_xml(["no tile", *classes]))
            written["scenes"][scene.name] = {"raster": str(out / path.name), "tiles": n,
                                             "grid": [scene.rows, scene.cols]}
        if geoms:
            write_vector(str(tmp / "tiles.gpkg"), np.array(geoms, dtype=object),
                          [np.asarray(fields[k], dtype=object if k in ("scene", "path", "class")
                                      else None) for k in fields],
                          list(fields), layer=LAYER, driver="GPKG", geometry_type="Polygon",
                          # 1.2: what GDAL before 3.9 and QGIS 3.x open without a warning
                          dataset_options={"VERSION": "1.2"},
                          crs=crs.to_wkt() if crs is not None else None)
        written["vector"] = str(out / "tiles.gpkg")
        buf = io.StringIO(newline="")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(("value", "class", "colour"))
        w.writerows((value[c], c, "#{:02x}{:02x}{:02x}".format(*rgb))
                    for c, rgb in zip(classes, colours))
        atomic_write_text(tmp / "classes.csv", buf.getvalue())
        atomic_write_text(tmp / MARKER, json.dumps(
            {"tiles": str(index.root.resolve()), "classes": classes,
             "colours": ["#{:02x}{:02x}{:02x}".format(*c) for c in colours]}, indent=1))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def _tile_root(data: str | Path) -> TileIndex:
    from rsdml.data.datasets import resolve_data

    return TileIndex.require(Path(resolve_data(str(data)) or data).expanduser(), "DATA")


def check_map_target(out: str | Path, data: str | Path) -> None:
    """Before predicting: DATA is a tile folder and ``--map OUT`` can be written."""
    _tile_root(data)
    _check_out(Path(out).expanduser())


def predictions_map(out: str | Path, data: str | Path, pred: Any, *,
                    labels_file: str | Path | None = None,
                    run_dir: str | Path | None = None) -> dict[str, Any]:
    """The map of ``rsdml predict``'s predictions ``pred`` (paths, classes, predicted,
    probability) over the tile folder ``data``; labelled tiles (the labels ``rsdml predict``
    used: ``labels_file``, else the run's) have their labels."""
    from rsdml.labelling.labels import read_labels
    from rsdml.labelling.predict import run_labels

    index = _tile_root(data)
    if labels_file:
        labels = read_labels(labels_file, list(index.by_path))
    else:
        labels = run_labels(run_dir)[0] if run_dir else {}
    tiles = tile_classes(list(pred.paths), list(pred.classes), np.asarray(pred.predicted),
                         np.asarray(pred.probability),
                         {p: c for p, c in labels.items() if p in index.by_path})
    return write_class_map(out, index, tiles)
