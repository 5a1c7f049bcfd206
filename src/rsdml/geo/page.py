"""The map view of ``rsdml label`` on a tile folder (``rsdml tile``): the scene with the class map
over it, and each tile shown with its neighbours on the ground.

Added to the labelling app only when its folder has a tile index; everything else (labelling,
search, the labels file) is the labelling page's own API, so a label given on the map is
written exactly as one given on the labelling page. Offline: the scene's overview (made when
tiling) is the background; nothing is loaded from elsewhere.

Endpoints::

    GET /map                      the page
    GET /api/geo/info             the CRS, the scenes' names, the number of tiles
    GET /api/geo/scenes           scenes, classes with colours, every tile with its class
    GET /api/geo/overview/{name}  the scene's overview (PNG)
    GET /api/geo/context/{id}     the tile with its 8 neighbours around it (JPEG, centre framed)
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from rsdml.errors import RsdmlError
from rsdml.geo.tileindex import TileIndex

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
CONTEXT_PX = 96  # each of the 3 x 3 tiles of the context view


def _crs_name(wkt: str | None) -> str:
    if wkt is None:
        return "pixel coordinates (no georeference)"
    from rasterio.crs import CRS

    crs = CRS.from_wkt(wkt)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()[:60]


def _context(index: TileIndex, root: Path, path: str) -> bytes:
    """The tile ``path`` and its 8 neighbours on the ground as one JPEG, the centre framed."""
    from PIL import Image, ImageDraw

    from rsdml.data.imageio import ImageReadError, read_rgb

    t = index.by_path[path]
    px = CONTEXT_PX
    canvas = Image.new("RGB", (3 * px, 3 * px), (233, 237, 240))
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            n = index.by_cell.get((t.scene, t.row + dr, t.col + dc))
            if n is None:
                continue
            try:
                im = Image.fromarray(read_rgb(root / n.path)).resize((px, px), Image.BILINEAR)
            except ImageReadError:
                continue
            canvas.paste(im, ((dc + 1) * px, (dr + 1) * px))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((px - 1, px - 1, 2 * px, 2 * px), outline=(255, 213, 0), width=3)
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=88)
    return buf.getvalue()


def add_map_routes(app: FastAPI, session: Any) -> bool:
    """Add the map view to a labelling app when its folder is a tile folder (else nothing)."""
    from rsdml.geo.classmap import palette

    try:
        index = TileIndex.read(session.root)
    except RsdmlError as e:  # someone else's tiles.json: the labelling page still works
        log.warning("no map view: %s", e)
        return False
    if index is None:
        return False
    root = Path(session.root)
    contexts: OrderedDict[int, bytes] = OrderedDict()
    lock = threading.Lock()

    def check_id(i: int) -> str:
        if not 0 <= i < len(session.paths) or session.paths[i] not in index.by_path:
            raise HTTPException(404, f"no tile {i}")
        return str(session.paths[i])

    @app.get("/api/geo/info")
    def info() -> dict[str, Any]:
        return {"crs": _crs_name(index.crs), "scenes": [s.name for s in index.scenes],
                "tiles": len(index.tiles)}

    @app.get("/api/geo/scenes")
    def scenes() -> dict[str, Any]:
        labels = session.store.snapshot()
        predicted = {r.path: r for r in session.review}
        classes = sorted({*labels.values(), *(r.predicted for r in session.review)})
        colours = ["#{:02x}{:02x}{:02x}".format(*c) for c in palette(len(classes))]
        tiles = []
        for t in index.tiles:
            i = session.ids.get(t.path)
            if i is None:
                continue
            r = predicted.get(t.path)
            tiles.append({"id": i, "path": t.path, "scene": t.scene, "row": t.row, "col": t.col,
                          "label": labels.get(t.path),
                          "predicted": r.predicted if r else None,
                          "probability": round(r.probability, 4) if r else None})
        return {"crs": _crs_name(index.crs),
                "scenes": [{"name": s.name, "width": s.width, "height": s.height,
                            "rows": s.rows, "cols": s.cols, "size": s.size, "stride": s.stride,
                            "overview": f"/api/geo/overview/{s.name}"} for s in index.scenes],
                "classes": [{"name": c, "colour": col} for c, col in zip(classes, colours)],
                "tiles": tiles}

    @app.get("/api/geo/overview/{name}")
    def overview(name: str) -> FileResponse:
        scene = index.scene.get(name)
        if scene is None or not (root / scene.overview).is_file():
            raise HTTPException(404, f"no overview of scene {name!r}")
        return FileResponse(root / scene.overview, media_type="image/png")

    @app.get("/api/geo/context/{tile_id}")
    def context(tile_id: int = PathParam(..., ge=0)) -> Response:
        path = check_id(tile_id)
        with lock:
            data = contexts.get(tile_id)
        if data is None:
            data = _context(index, root, path)
            with lock:
                contexts[tile_id] = data
                while len(contexts) > 512:
                    contexts.popitem(last=False)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/map", include_in_schema=False)
    def page() -> FileResponse:
        from rsdml.retrieval.web import PAGE_CSP

        return FileResponse(STATIC / "map.html", headers={"Content-Security-Policy": PAGE_CSP})

    app.mount("/geo-static", StaticFiles(directory=STATIC), name="geo-static")
    return True
