"""The tile index of a folder made by ``rsdml tile``: ``TILES/tiles.json``.

A tile folder is an ordinary image folder (every command that takes an image folder takes it:
suggest, label, train --labels, predict, index, serve); the index beside the tiles says where
each tile came from: its scene, its row and column in the scene's tile grid, its pixel window
and (through the scene's CRS and geotransform) its place on the ground. Each tile is also a
GeoTIFF that carries its own georeference, so a GIS opens any one of them in place.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rsdml.errors import RsdmlError

INDEX_NAME = "tiles.json"
#: Hidden, so the overviews are never images of the folder (hidden files are skipped).
OVERVIEW_DIR = ".overview"
FORMAT = "rsdml-tiles/1"


@dataclass
class Scene:
    """One source raster and its tile grid (``rows`` x ``cols`` tiles, ``stride`` apart)."""

    name: str  # the tiles' sub-folder
    source: str  # absolute path of the raster when it was tiled
    width: int
    height: int
    count: int  # bands
    dtype: str
    crs: str | None  # WKT; None: no georeference (pixel coordinates)
    transform: list[float]  # affine a, b, c, d, e, f: scene pixel -> CRS
    size: int
    stride: int
    rows: int
    cols: int
    overview: str  # PNG, relative to the tile folder
    overview_width: int
    overview_height: int

    def affine(self) -> Any:
        from affine import Affine

        return Affine(*self.transform)

    def grid_affine(self) -> Any:
        """The geotransform of the class map: one pixel per tile, centred on the tile's centre
        (with overlapping tiles, a map pixel is the stride x stride cell in the tile's middle)."""
        from affine import Affine

        half = (self.size - self.stride) / 2
        return self.affine() @ Affine.translation(half, half) @ Affine.scale(self.stride)

    def tile_affine(self, row: int, col: int) -> Any:
        from affine import Affine

        return self.affine() @ Affine.translation(col * self.stride, row * self.stride)

    def footprint(self, row: int, col: int) -> list[tuple[float, float]]:
        """The tile's corners in the CRS, a closed ring (upper left first)."""
        t = self.tile_affine(row, col)
        s = self.size
        return [t @ (0, 0), t @ (s, 0), t @ (s, s), t @ (0, s), t @ (0, 0)]


@dataclass
class Tile:
    path: str  # relative to the tile folder
    scene: str
    row: int
    col: int
    valid: float  # share of the tile's pixels inside the footprint and not nodata


@dataclass
class TileIndex:
    root: Path
    scenes: list[Scene]
    tiles: list[Tile]

    def __post_init__(self) -> None:
        self.by_path = {t.path: t for t in self.tiles}
        self.by_cell = {(t.scene, t.row, t.col): t for t in self.tiles}
        self.scene = {s.name: s for s in self.scenes}

    @property
    def crs(self) -> str | None:
        return self.scenes[0].crs if self.scenes else None

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, "scenes": [asdict(s) for s in self.scenes],
                           "tiles": [[t.path, t.scene, t.row, t.col, round(t.valid, 4)]
                                     for t in self.tiles]}, indent=None)

    @classmethod
    def read(cls, root: str | Path) -> TileIndex | None:
        """The index of ``root``; None when ``root`` is not a tile folder."""
        root = Path(root)
        path = root / INDEX_NAME
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("format") != FORMAT:
                raise ValueError(f"format {raw.get('format')!r}")
            scenes = [Scene(**s) for s in raw["scenes"]]
            tiles = [Tile(p, s, int(r), int(c), float(v)) for p, s, r, c, v in raw["tiles"]]
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise RsdmlError(f"{path} is not a tile index of `rsdml tile` ({e}); make the "
                             "tile folder again with `rsdml tile`") from None
        return cls(root, scenes, tiles)

    @classmethod
    def require(cls, root: str | Path, what: str = "DATA") -> TileIndex:
        index = cls.read(root)
        if index is None:
            raise RsdmlError(f"{what} {root} is not a tile folder (no {INDEX_NAME}); make one "
                             "with `rsdml tile SCENE.tif --out TILES`")
        return index
