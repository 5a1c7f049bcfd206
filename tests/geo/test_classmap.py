"""``rsdml predict --map``: the class raster and the vector grid, read back as GIS tools read
them, agree tile for tile with the predictions CSV and the labels."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio
from clihelp import assert_one_line_error, run_cli
from geoscenes import CRS, GRID, write_scene

from rsdml.geo.classmap import TileClass, write_class_map
from rsdml.geo.tileindex import TileIndex
from rsdml.geo.tiling import tile_scenes

TINY = ["--pretrained", "none", "--image-size", "32", "--batch-size", "8",
        "--unlabeled-batch-size", "8", "--device", "cpu", "--quiet", "--eval-batch-size", "64",
        "--epochs", "2"]


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _read_vector(path: Path) -> tuple[list[bytes], dict[str, list]]:
    from pyogrio.raw import read

    meta, _, geoms, fields = read(str(path), layer="tiles")
    return list(geoms), {name: list(col) for name, col in zip(meta["fields"], fields)}


def _ring(wkb: bytes) -> np.ndarray:
    """The one ring of a little-endian WKB polygon."""
    head = np.frombuffer(wkb[1:13], "<u4")  # type, rings, points
    assert wkb[:1] == b"\x01" and head[0] == 3 and head[1] == 1
    return np.frombuffer(wkb[13:13 + 16 * int(head[2])], "<f8").reshape(-1, 2)


def test_the_map_has_each_tiles_class_at_its_place(tmp_path):
    scene = tmp_path / "scene.tif"
    write_scene(scene, GRID)
    index = tile_scenes([scene], tmp_path / "tiles", size=32, quiet=True)
    truth = {t.path: GRID[t.row][t.col] for t in index.tiles}
    tiles = {p: TileClass(c, 0.5 + 0.01 * i, i % 5 == 0) for i, (p, c) in enumerate(truth.items())}
    out = tmp_path / "map"
    write_class_map(out, index, tiles)
    classes = [r["class"] for r in _csv(out / "classes.csv")]
    assert classes == sorted(set(truth.values()))
    with rasterio.open(out / "scene.tif") as src:
        grid = src.read(1)
        assert src.crs == CRS and src.nodata == 0 and grid.shape == (3, 4)
        assert src.transform == index.scenes[0].grid_affine()
        assert src.transform.a == 32 * 0.5  # one pixel per tile: the tile's ground size
        assert json.loads(src.tags()["CLASSES"]) == classes
        assert src.tags(1)["CLASS_1"] == classes[0]
        cmap = src.colormap(1)
        assert cmap[0][3] == 0 and len({cmap[v] for v in range(1, len(classes) + 1)}) == len(classes)
    for t in index.tiles:
        assert classes[grid[t.row, t.col] - 1] == truth[t.path]
    assert "<Category>dense_residential</Category>" in (out / "scene.tif.aux.xml").read_text()
    geoms, fields = _read_vector(out / "tiles.gpkg")
    assert len(geoms) == len(index.tiles)
    for g, p, c, prob, lab in zip(geoms, fields["path"], fields["class"], fields["probability"],
                                  fields["labelled"]):
        t = index.by_path[p]
        assert c == truth[p] and lab == int(tiles[p].labelled)
        assert prob == pytest.approx(tiles[p].probability, abs=1e-4)
        assert np.allclose(_ring(g), index.scenes[0].footprint(t.row, t.col))


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="needs GDAL's command line tools "
                    "(Debian: apt-get install gdal-bin); the benchmark checks them on AID")
def test_gdal_reads_the_crs_and_the_class_names(tmp_path):
    scene = tmp_path / "scene.tif"
    write_scene(scene, GRID)
    index = tile_scenes([scene], tmp_path / "tiles", size=32, quiet=True)
    write_class_map(tmp_path / "map", index, {t.path: TileClass(GRID[t.row][t.col], 0.9, False)
                                              for t in index.tiles})
    info = json.loads(subprocess.run(["gdalinfo", "-json", str(tmp_path / "map/scene.tif")],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["coordinateSystem"]["wkt"].startswith('PROJCRS["WGS 84 / UTM zone 31N"')
    assert info["bands"][0]["categories"] == ["no tile", "dense_residential", "farmland",
                                              "forest", "lake"]
    assert info["cornerCoordinates"]["upperLeft"] == [500000.0, 5000000.0]
    ogr = subprocess.run(["ogrinfo", "-so", str(tmp_path / "map/tiles.gpkg"), "tiles"],
                         capture_output=True, text=True, check=True).stdout
    assert "Feature Count: 12" in ogr and "UTM zone 31N" in ogr


def test_predict_map_on_tiles_agrees_with_the_predictions(tmp_path, capsys):
    """The loop on a tile folder: labels -> train --labels -> predict --map."""
    scene = tmp_path / "scene.tif"
    write_scene(scene, GRID * 2)  # 6 x 4 tiles
    tiles = tmp_path / "tiles"
    assert run_cli(["tile", str(scene), "--size", "32", "--out", str(tiles), "--quiet"],
                   capsys)[0] == 0
    index = TileIndex.read(tiles)
    assert index is not None
    truth = {t.path: GRID[t.row % 3][t.col] for t in index.tiles}
    seen: dict[str, int] = {}
    rows = []
    for p, c in truth.items():  # two labels a class
        if seen.get(c, 0) < 2:
            seen[c] = seen.get(c, 0) + 1
            rows.append(f"{p},{c}\n")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,class\n" + "".join(rows))
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--data", str(tiles), "--labels", str(labels), "--out",
                            str(run), *TINY], capsys)
    assert code == 0, err
    code, out, err = run_cli(["predict", str(run), str(tiles), "--out", str(tmp_path / "p.csv"),
                              "--map", str(tmp_path / "map"), "--quiet"], capsys)
    assert code == 0, err
    assert "map of 24 tiles" in out
    pred = {r["path"]: r["class"] for r in _csv(tmp_path / "p.csv")}
    classes = [r["class"] for r in _csv(tmp_path / "map" / "classes.csv")]
    with rasterio.open(tmp_path / "map" / "scene.tif") as src:
        grid = src.read(1)
    mapped = {t.path: classes[grid[t.row, t.col] - 1] for t in index.tiles}
    lab = dict(r.strip().split(",") for r in rows)
    assert mapped == {**pred, **lab}  # every tile: its label, else its prediction
    correct_csv = np.mean([pred[p] == truth[p] for p in pred])
    correct_map = np.mean([mapped[p] == truth[p] for p in pred])
    assert correct_csv == correct_map


def test_map_refusals_come_before_predicting(tmp_path, tiny_scenes, capsys):
    code, _, err = run_cli(["predict", str(tmp_path / "norun"), str(tiny_scenes), "--out",
                            str(tmp_path / "p.csv"), "--map", str(tmp_path / "m")], capsys)
    assert_one_line_error(code, err, "not a tile folder", "rsdml tile")
    scene = tmp_path / "scene.tif"
    write_scene(scene, GRID)
    tile_scenes([scene], tmp_path / "tiles", size=32, quiet=True)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    code, _, err = run_cli(["predict", str(tmp_path / "norun"), str(tmp_path / "tiles"), "--out",
                            str(tmp_path / "p.csv"), "--map", str(tmp_path / "m")], capsys)
    assert_one_line_error(code, err, "not a map of rsdml")
    assert not (tmp_path / "p.csv").exists()
