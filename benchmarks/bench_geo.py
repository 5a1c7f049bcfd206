"""Scenes to maps on real imagery: the labelling loop on an AID mosaic, and a 20,000 px scene.

``mosaic``: AID images laid on a grid into one GeoTIFF (each tile one AID image; a made-up but
valid georeference: EPSG:32631, 0.5 m pixels), then the loop as a user runs it, every step the
``rsdml`` command: ``tile`` -> ``suggest`` (cold start) -> the suggested tiles labelled with
their AID class (the person at the page) -> ``train --labels`` (fast mode) -> ``predict --map``.
Checks: ``gdalinfo`` / ``ogrinfo`` read the map's CRS, extent and class names; the map's
per-tile accuracy (the class raster read back, and the GeoPackage) equals the per-image
accuracy of the same run (the predictions CSV; and ``rsdml predict`` of the same run on the
original AID JPEGs, through a folder of links).

``big``: a SIDE x SIDE px, 3-band uint8 GeoTIFF (AID images repeated; uncompressed, 512 px
blocks) tiled at 256 px and mapped (``rsdml predict --map`` with a run, 60 labels); wall time,
tiles per second and peak resident memory of each command (``wait4``'s ru_maxrss, taken
in a small wrapper process, see ``_WRAPPER``).

    python benchmarks/bench_geo.py mosaic --out /tmp/geo-mosaic [--per-class 20]
    python benchmarks/bench_geo.py big --out /tmp/geo-big [--side 20000]
    python benchmarks/bench_geo.py big --out /tmp/geo-big --run /tmp/geo-mosaic/run --reuse-tiles

Prints one JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
AID = REPO.parent / "shared" / "data" / "AID"
CRS = "EPSG:32631"
ORIGIN = (500_000.0, 5_000_000.0)
PIXEL = 0.5
_T0 = time.perf_counter()


def log(*parts: object) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s]", *parts, file=sys.stderr, flush=True)


# Runs the command in a child of a fresh, small process: Linux carries the peak RSS of a
# process across fork and exec, so wait4 on a direct child of this (larger) process would
# report this process's memory instead of the command's.
_WRAPPER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
with open(os.environ["RSDML_BENCH_RSS"], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def rsdml(*args: str) -> dict[str, Any]:
    """Run ``rsdml ARGS`` (this checkout's code); wall seconds and the peak RSS of the process."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".rss") as rss:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "RSDML_BENCH_RSS": rss.name}
        log("rsdml", *args)
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-S", "-c", _WRAPPER, sys.executable, "-m",
                               "rsdml", *args], env=env, stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            raise SystemExit(f"rsdml {' '.join(args)} failed (exit {proc.returncode})")
        peak_kib = int(Path(rss.name).read_text())
    return {"seconds": round(time.perf_counter() - t, 1), "peak_rss_mb": round(peak_kib / 1024),
            "stdout": proc.stdout.strip()}


def aid_images(root: Path, per_class: int, seed: int) -> list[tuple[str, Path]]:
    rng = np.random.default_rng(seed)
    out = []
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
        files = sorted((root / cls).glob("*.jpg"))
        out += [(cls, files[i]) for i in sorted(rng.choice(len(files), per_class, replace=False))]
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- mosaic
def mosaic(args: argparse.Namespace) -> dict[str, Any]:
    import rasterio
    from rasterio.transform import from_origin

    from rsdml.data.imageio import read_rgb

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    chosen = aid_images(Path(args.data), args.per_class, args.seed)
    n = len(chosen)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    order = np.random.default_rng(args.seed).permutation(rows * cols)[:n]
    px = 150
    arr = np.zeros((3, rows * px, cols * px), np.uint8)
    truth: dict[tuple[int, int], tuple[str, Path]] = {}
    for (cls, f), cell in zip(chosen, order):
        r, c = divmod(int(cell), cols)
        img = read_rgb(f)  # the decoder every rsdml command uses
        assert img.shape == (px, px, 3), (f, img.shape)
        arr[:, r * px:(r + 1) * px, c * px:(c + 1) * px] = img.transpose(2, 0, 1)
        truth[(r, c)] = (cls, f)
    scene = out / "mosaic.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1],
                       count=3, dtype="uint8", crs=CRS, transform=from_origin(*ORIGIN, PIXEL, PIXEL),
                       nodata=0 if len(truth) < rows * cols else None, tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate") as dst:
        dst.write(arr)
    log(f"mosaic {rows} x {cols} cells of {px} px, {n} AID images -> {scene}")

    tiles = out / "tiles"
    steps: dict[str, Any] = {}
    steps["tile"] = rsdml("tile", str(scene), "--size", str(px), "--out", str(tiles), "--quiet")
    index = json.loads((tiles / "tiles.json").read_text())
    tile_truth = {p: truth[(r, c)][0] for p, _, r, c, _ in index["tiles"]}
    assert len(tile_truth) == n
    steps["suggest"] = rsdml("suggest", str(tiles), "--out", str(out / "next.csv"), "-n",
                             str(args.labels), "--quiet")
    suggested = [r["path"] for r in read_csv(out / "next.csv")]
    labels = out / "labels.csv"  # the person at the page labels the suggested tiles
    labels.write_text("path,class\n" + "".join(f"{p},{tile_truth[p]}\n" for p in suggested))
    run = out / "run"
    steps["train"] = rsdml("train", "--data", str(tiles), "--labels", str(labels), "--out",
                           str(run), "--backbone", "efficientnet_lite0", "--freeze-backbone",
                           "--seed", str(args.seed), "--quiet")
    steps["predict_map"] = rsdml("predict", str(run), str(tiles), "--out", str(out / "pred.csv"),
                                 "--map", str(out / "map"), "--quiet")

    # The same run on the original JPEGs: a folder of links, labels renamed to match.
    images = out / "images"
    link_of: dict[str, str] = {}
    for p in tile_truth:
        r, c = next((r, c) for q, _, r, c, _ in index["tiles"] if q == p)
        cls, f = truth[(r, c)]
        rel = f"{cls}/{f.name}"
        (images / cls).mkdir(parents=True, exist_ok=True)
        (images / rel).symlink_to(f)
        link_of[p] = rel
    img_labels = out / "labels_images.csv"
    img_labels.write_text("path,class\n" + "".join(f"{link_of[p]},{tile_truth[p]}\n"
                                                  for p in suggested))
    steps["predict_images"] = rsdml("predict", str(run), str(images), "--labels",
                                    str(img_labels), "--out", str(out / "pred_images.csv"),
                                    "--quiet")

    pred = {r["path"]: r["class"] for r in read_csv(out / "pred.csv")}
    pred_img = {r["path"]: r["class"] for r in read_csv(out / "pred_images.csv")}
    classes = [r["class"] for r in read_csv(out / "map" / "classes.csv")]
    with rasterio.open(out / "map" / "mosaic.tif") as src:
        grid = src.read(1)
        bounds = src.bounds
    unl = sorted(pred)
    cell = {p: (r, c) for p, _, r, c, _ in index["tiles"]}
    from pyogrio.raw import read as read_vector

    meta, _, _, fields = read_vector(str(out / "map" / "tiles.gpkg"), layer="tiles")
    vec = dict(zip(fields[list(meta["fields"]).index("path")],
                   fields[list(meta["fields"]).index("class")]))

    def acc(got: dict[str, str]) -> float:
        return float(np.mean([got[p] == tile_truth[p] for p in unl]))

    raster = {p: classes[grid[cell[p]] - 1] for p in unl}
    result: dict[str, Any] = {
        "benchmark": "geo-mosaic", "aid_images": n, "grid": [rows, cols], "labels": len(suggested),
        "unlabelled_tiles": len(unl),
        "accuracy": {"predictions_csv_per_tile": acc(pred), "map_raster_per_tile": acc(raster),
                     "map_vector_per_tile": acc(vec),
                     "same_run_on_the_aid_jpegs_per_image": acc({p: pred_img[link_of[p]] for p in unl})},
        "tiles_where_map_and_jpeg_prediction_differ": sum(raster[p] != pred_img[link_of[p]] for p in unl),
        "map_bounds": list(bounds), "scene_bounds": [ORIGIN[0], ORIGIN[1] - rows * px * PIXEL,
                                                     ORIGIN[0] + cols * px * PIXEL, ORIGIN[1]],
        "steps": {k: {kk: vv for kk, vv in v.items() if kk != "stdout"} for k, v in steps.items()},
    }
    result["gdal"] = gdal_checks(out / "map", classes)
    a = result["accuracy"]
    result["equal"] = len({a["predictions_csv_per_tile"], a["map_raster_per_tile"],
                           a["map_vector_per_tile"]}) == 1
    return result


def gdal_checks(folder: Path, classes: list[str]) -> dict[str, Any]:
    """What GDAL's own tools read from the map (skipped, said, without gdal-bin)."""
    if shutil.which("gdalinfo") is None or shutil.which("ogrinfo") is None:
        return {"skipped": "gdalinfo / ogrinfo not installed (Debian: apt-get install gdal-bin)"}
    info = json.loads(subprocess.run(["gdalinfo", "-json", str(folder / "mosaic.tif")],
                                     capture_output=True, text=True, check=True).stdout)
    wkt = info["coordinateSystem"]["wkt"]
    ogr = subprocess.run(["ogrinfo", "-so", str(folder / "tiles.gpkg"), "tiles"],
                         capture_output=True, text=True, check=True).stdout
    extent = re.search(r"Extent: \(([-\d.]+), ([-\d.]+)\) - \(([-\d.]+), ([-\d.]+)\)", ogr)
    return {
        "gdalinfo_version": subprocess.run(["gdalinfo", "--version"], capture_output=True,
                                           text=True).stdout.strip(),
        "raster_crs_epsg_32631": 'ID["EPSG",32631]' in wkt,
        "raster_corners": {k: info["cornerCoordinates"][k] for k in ("upperLeft", "lowerRight")},
        "raster_categories_are_the_classes": info["bands"][0].get("categories") == ["no tile", *classes],
        "raster_size": info["size"],
        "vector_crs_epsg_32631": 'ID["EPSG",32631]' in ogr,
        "vector_extent": [float(x) for x in extent.groups()] if extent else None,
        "vector_features": int(re.search(r"Feature Count: (\d+)", ogr).group(1)),
    }


# --------------------------------------------------------------------------- big
def big(args: argparse.Namespace) -> dict[str, Any]:
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from rsdml.data.imageio import read_rgb

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scene = out / f"scene{args.side}.tif"
    side, px = args.side, 150
    if not scene.is_file():
        pool = [read_rgb(f) for _, f in aid_images(Path(args.data), 2, args.seed)]  # 60 images
        t = time.perf_counter()
        tmp = scene.with_suffix(".tmp.tif")
        with rasterio.open(tmp, "w", driver="GTiff", width=side, height=side, count=3,
                           dtype="uint8", crs=CRS, transform=from_origin(*ORIGIN, PIXEL, PIXEL),
                           tiled=True, blockxsize=512, blockysize=512) as dst:
            for y0 in range(0, side, 4 * px):  # strips of 4 AID rows: memory stays small
                h = min(4 * px, side - y0)
                strip = np.zeros((3, h, side), np.uint8)
                for yy in range(0, h, px):
                    for x0 in range(0, side, px):
                        img = pool[((y0 + yy) // px * 7 + x0 // px) % len(pool)]
                        w, hh = min(px, side - x0), min(px, h - yy)
                        strip[:, yy:yy + hh, x0:x0 + w] = img[:hh, :w].transpose(2, 0, 1)
                dst.write(strip, window=Window(0, y0, side, h))
        tmp.rename(scene)
        log(f"wrote {scene} ({scene.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t:.0f}s")
    tiles = out / "tiles"
    steps: dict[str, Any] = {}
    if not (args.reuse_tiles and (tiles / "tiles.json").is_file()):
        if tiles.exists():
            shutil.rmtree(tiles)
        steps["tile"] = rsdml("tile", str(scene), "--size", "256", "--out", str(tiles),
                              "--compress", args.compress, "--quiet")
    index = json.loads((tiles / "tiles.json").read_text())
    n = len(index["tiles"])
    if "tile" in steps:
        steps["tile"]["tiles_per_second"] = round(n / steps["tile"]["seconds"], 1)
    result: dict[str, Any] = {"benchmark": "geo-big", "side_px": side, "bands": 3,
                              "tile_compression": args.compress,
                              "scene_gib": round(scene.stat().st_size / 2**30, 2), "tiles": n,
                              "tiles_gib": round(sum(f.stat().st_size for f in tiles.rglob("*.tif"))
                                                 / 2**30, 2)}
    result["read_pass_seconds"] = read_passes(scene, tiles, index)
    if args.run:
        rng = np.random.default_rng(args.seed)
        pick = rng.choice(n, 60, replace=False)
        labels = out / "labels.csv"  # 60 labels of 6 made-up classes: a timing run
        labels.write_text("path,class\n" + "".join(f"{index['tiles'][i][0]},class{k % 6}\n"
                                                  for k, i in enumerate(pick)))
        for bs in args.batch_sizes:
            if (out / "map").exists():
                shutil.rmtree(out / "map")
            key = f"predict_map_batch_{bs}"
            steps[key] = rsdml("predict", args.run, str(tiles), "--labels", str(labels), "--out",
                               str(out / "pred.csv"), "--map", str(out / "map"), "--batch-size",
                               str(bs), "--quiet")
            steps[key]["tiles_per_second"] = round(n / steps[key]["seconds"], 1)
    result["steps"] = {k: {kk: vv for kk, vv in v.items() if kk != "stdout"}
                       for k, v in steps.items()}
    result["peak_rss_mb"] = {k: v["peak_rss_mb"] for k, v in steps.items()}
    return result


def read_passes(scene: Path, tiles: Path, index: dict[str, Any]) -> dict[str, float]:
    """What a later pass over every tile costs (the feature cache, an embedding, thumbnails
    each make one): windows read lazily from the scene, against the tile files as rsdml's image
    reader decodes them. One pass each, the tiles' order."""
    import rasterio
    from rasterio.windows import Window

    from rsdml.data.imageio import read_rgb

    size = index["scenes"][0]["size"]
    t = time.perf_counter()
    with rasterio.open(scene) as src:
        for _, _, r, c, _ in index["tiles"]:
            src.read(window=Window(c * size, r * size, size, size), boundless=False)
    lazy = time.perf_counter() - t
    t = time.perf_counter()
    for p, *_ in index["tiles"]:
        read_rgb(tiles / p)
    files = time.perf_counter() - t
    log(f"one pass: lazy windows {lazy:.1f}s, tile files {files:.1f}s")
    return {"lazy_windows_from_the_scene": round(lazy, 1), "tile_files": round(files, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("mosaic")
    m.add_argument("--per-class", type=int, default=20)
    m.add_argument("--labels", type=int, default=60, help="tiles suggested and labelled")
    b = sub.add_parser("big")
    b.add_argument("--side", type=int, default=20_000)
    b.add_argument("--run", default=None, help="a run folder for predict --map (else tile only)")
    b.add_argument("--compress", default="deflate", choices=("deflate", "none"))
    b.add_argument("--reuse-tiles", action="store_true", help="keep OUT/tiles of an earlier call")
    b.add_argument("--batch-sizes", type=int, nargs="+", default=[64],
                   help="predict --batch-size values to measure")
    for p in (m, b):
        p.add_argument("--out", required=True)
        p.add_argument("--data", default=str(AID))
        p.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    result = mosaic(args) if args.what == "mosaic" else big(args)
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
