"""``rsdml tile``: windows, georeference, skipped tiles, N-band scenes and one-line refusals
that leave nothing behind."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from clihelp import assert_one_line_error, run_cli
from geoscenes import CRS, GRID, ORIGIN, PIXEL, write_scene

from rsdml.geo.tileindex import TileIndex
from rsdml.geo.tiling import tile_scenes
from rsdml.training.archive_vectors import archive_images


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, np.ndarray]:
    path = tmp_path / "scene.tif"
    return path, write_scene(path, GRID)


def test_tiles_are_the_scene_windows_with_their_georeference(scene, tmp_path, capsys):
    path, arr = scene
    out = tmp_path / "tiles"
    code, stdout, err = run_cli(["tile", str(path), "--size", "32", "--out", str(out),
                                 "--quiet"], capsys)
    assert code == 0, err
    assert "12 tiles of 32 px (scene 3 x 4 grid)" in stdout
    index = TileIndex.read(out)
    assert index is not None and len(index.tiles) == 12
    s = index.scenes[0]
    assert (s.rows, s.cols, s.width, s.height) == (3, 4, 128, 96)
    for t in index.tiles:
        with rasterio.open(out / t.path) as src:
            tile = src.read()
            assert src.crs == CRS
            assert src.transform.c == ORIGIN[0] + t.col * 32 * PIXEL
            assert src.transform.f == ORIGIN[1] - t.row * 32 * PIXEL
        assert np.array_equal(tile, arr[:, t.row * 32:(t.row + 1) * 32, t.col * 32:(t.col + 1) * 32])
    # An ordinary image folder for every other command: the tiles, not the index or overview.
    root, paths = archive_images(out)
    assert paths == sorted(t.path for t in index.tiles)
    assert (out / s.overview).is_file() and s.overview.startswith(".")


def test_edge_tiles_outside_the_footprint_and_nodata_tiles_are_skipped(tmp_path):
    path = tmp_path / "scene.tif"
    write_scene(path, GRID, nodata_cells=((0, 0),), nodata=0)
    # 96 x 128 px at size 40: a 3 x 4 grid whose last row and column reach past the edge
    index = tile_scenes([path], tmp_path / "tiles", size=40, quiet=True)
    s = index.scenes[0]
    assert (s.rows, s.cols) == (3, 4)
    cells = {(t.row, t.col): t.valid for t in index.tiles}
    # (0, 0): 32 x 32 of its 40 x 40 px are nodata (36 % valid); row 2: 16 of 40 rows inside
    # (40 %); column 3: 8 of 40 columns (20 %)
    assert set(cells) == {(0, 1), (0, 2), (1, 0), (1, 1), (1, 2)}
    assert all(v == 1.0 for v in cells.values())


def test_a_16_bit_4_band_scene_keeps_its_bands_and_depth(tmp_path):
    from rsdml.data.bands import Bands
    from rsdml.data.imageio import read_bands, read_rgb

    path = tmp_path / "ms.tif"
    arr = write_scene(path, GRID[:2], bands=4, dtype="uint16")
    index = tile_scenes([path], tmp_path / "tiles", size=32, quiet=True)
    t = index.tiles[5]
    got = read_bands(tmp_path / "tiles" / t.path, Bands.parse("all"))  # the --bands path
    assert got.dtype == np.uint16 and got.shape == (32, 32, 4)
    assert np.array_equal(got.transpose(2, 0, 1),
                          arr[:, t.row * 32:(t.row + 1) * 32, t.col * 32:(t.col + 1) * 32])
    assert read_rgb(tmp_path / "tiles" / t.path).shape == (32, 32, 3)


def test_uncompressed_tiles_hold_the_same_pixels(scene, tmp_path):
    path, arr = scene
    index = tile_scenes([path], tmp_path / "tiles", size=32, compress="none", quiet=True)
    t = index.tiles[7]
    with rasterio.open(tmp_path / "tiles" / t.path) as src:
        assert src.compression is None
        assert np.array_equal(src.read(), arr[:, t.row * 32:(t.row + 1) * 32,
                                              t.col * 32:(t.col + 1) * 32])


def test_a_scene_without_georeference_tiles_in_pixel_coordinates_said_once(tmp_path, caplog):
    path = tmp_path / "plain.tif"
    write_scene(path, GRID, crs=None)
    with caplog.at_level(logging.WARNING, logger="rsdml"):
        index = tile_scenes([path], tmp_path / "tiles", size=32, quiet=True)
    said = [r.getMessage() for r in caplog.records if "georeference" in r.getMessage()]
    assert len(said) == 1 and "pixel coordinates" in said[0]
    assert index.crs is None and index.scenes[0].grid_affine().a == 32


def _truncated(tmp_path: Path) -> Path:
    p = tmp_path / "cut.tif"
    write_scene(p, GRID)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _unknown_crs(tmp_path: Path) -> Path:
    import struct

    p = tmp_path / "unknown.tif"
    write_scene(p, GRID)
    data = bytearray(p.read_bytes())  # ProjectedCSTypeGeoKey 32631 -> 9999, no such CRS
    at = data.find(struct.pack("<4H", 3072, 0, 1, 32631))
    data[at:at + 8] = struct.pack("<4H", 3072, 0, 1, 9999)
    p.write_bytes(bytes(data))
    return p


def _other_crs(tmp_path: Path) -> list[Path]:
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    write_scene(a, GRID)
    write_scene(b, GRID, crs="EPSG:3857")
    return [a, b]


@pytest.mark.parametrize("case, args, words", [
    ("larger", lambda t: [str(write_scene(t / "s.tif", GRID) is not None and t / "s.tif")],
     "larger than scene"),
    ("corrupt", lambda t: [str((t / "bad.tif").write_bytes(b"II*\x00" + b"\x07" * 50) and t / "bad.tif")],
     "not a readable raster"),
    ("truncated", lambda t: [str(_truncated(t))], "truncated or corrupt"),
    ("unknown crs", lambda t: [str(_unknown_crs(t))], "CRS that GDAL does not know"),
    ("mixed crs", lambda t: [str(p) for p in _other_crs(t)], "different CRSs"),
    ("missing", lambda t: [str(t / "nothere.tif")], "does not exist"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, args, words):
    scenes = args(tmp_path)
    size = "200" if case == "larger" else "32"
    before = set(tmp_path.iterdir())
    code, _, err = run_cli(["tile", *scenes, "--size", size, "--out", str(tmp_path / "tiles"),
                            "--quiet"], capsys)
    assert_one_line_error(code, err, words)
    assert set(tmp_path.iterdir()) == before  # no tile folder, no temporary folder


def test_an_existing_folder_is_kept_unless_forced(scene, tmp_path, capsys):
    path, _ = scene
    out = tmp_path / "tiles"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code, _, err = run_cli(["tile", str(path), "--size", "32", "--out", str(out)], capsys)
    assert_one_line_error(code, err, "--force")
    assert (out / "mine.txt").read_text() == "keep"
    code, _, err = run_cli(["tile", str(path), "--size", "32", "--out", str(out), "--force",
                            "--quiet"], capsys)
    assert code == 0, err
    assert not (out / "mine.txt").exists() and (out / "tiles.json").is_file()
