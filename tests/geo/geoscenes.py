"""Small GeoTIFF scenes made by the geo tests: synthetic scene classes laid out on a grid, a known
CRS and geotransform (rasterio writes them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CRS = "EPSG:32631"
ORIGIN = (500_000.0, 5_000_000.0)
PIXEL = 0.5  # metres


def write_scene(path: Path, grid: list[list[str]], *, tile: int = 32, crs: str | None = CRS,
                pixel: float = PIXEL, nodata_cells: tuple[tuple[int, int], ...] = (),
                nodata: int | None = None, bands: int = 3, dtype: str = "uint8",
                seed: int = 0) -> np.ndarray:
    """A scene whose cell (r, c) of ``tile`` px is an image of the synthetic class grid[r][c];
    returns its pixels (bands, H, W)."""
    import rasterio
    from rasterio.transform import from_origin

    from rsdml.data.synthetic import render_scene

    rows, cols = len(grid), len(grid[0])
    arr = np.zeros((bands, rows * tile, cols * tile), dtype)
    for r in range(rows):
        for c in range(cols):
            img = render_scene(grid[r][c], seed, r * cols + c, tile).transpose(2, 0, 1)
            if bands != 3:
                img = np.concatenate([img] * ((bands + 2) // 3))[:bands]
            arr[:, r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = img.astype(dtype) * (
                257 if dtype == "uint16" else 1)
    for r, c in nodata_cells:
        arr[:, r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = nodata
    kw = {"crs": crs, "transform": from_origin(*ORIGIN, pixel, pixel)} if crs else {}
    with rasterio.open(path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                       count=bands, dtype=dtype, nodata=nodata, **kw) as dst:
        dst.write(arr)
    return arr


GRID = [["forest", "forest", "lake", "lake"],
        ["dense_residential", "forest", "lake", "farmland"],
        ["dense_residential", "dense_residential", "farmland", "farmland"]]
