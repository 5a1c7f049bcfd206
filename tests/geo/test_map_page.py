"""The map view of ``rsdml label`` on a tile folder: its API, and the page in headless chromium
(the class map over the scene, a tile clicked and labelled; the screenshot in docs/maps.md)."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMIUM, playwright_or_skip
from fastapi.testclient import TestClient
from geoscenes import GRID, write_scene

from rsdml.geo.tileindex import TileIndex
from rsdml.geo.tiling import tile_scenes
from rsdml.labelling.labels import LabelStore, read_labels
from rsdml.labelling.page import LabelSession, create_label_app, read_review
from rsdml.retrieval.index import l2_normalize

DOCS = Path(__file__).resolve().parents[2] / "docs"
BIG_GRID = [(row * 3)[:10] for row in GRID] * 2  # 6 x 10 tiles


def _session(tmp_path: Path, grid: list[list[str]], tile: int = 48) -> tuple[LabelSession, TileIndex]:
    """A tile folder of a synthetic scene, vectors that cluster by class, predictions that get
    one tile in five wrong, and two labels."""
    write_scene(tmp_path / "scene.tif", grid, tile=tile)
    index = tile_scenes([tmp_path / "scene.tif"], tmp_path / "tiles", size=tile, quiet=True)
    paths = [t.path for t in index.tiles]
    names = sorted({c for row in grid for c in row})
    truth = [grid[t.row][t.col] for t in index.tiles]
    rng = np.random.default_rng(0)
    vectors = np.eye(16)[[names.index(c) for c in truth]] + rng.normal(0, 0.2, (len(paths), 16))
    rows = ["path,class,probability,knn_agreement,margin\n"]
    for i, (p, c) in enumerate(zip(paths, truth)):
        if i >= 2:
            wrong = names[(names.index(c) + 1) % len(names)] if i % 5 == 0 else c
            rows.append(f"{p},{wrong},{0.4 + 0.05 * (i % 10):.2f},0.5,0.2\n")
    (tmp_path / "pred.csv").write_text("".join(rows))
    store = LabelStore(tmp_path / "labels.csv", paths)
    store.set_many(paths[:1], truth[0])
    store.set_many(paths[1:2], truth[1])
    s = LabelSession(tmp_path / "tiles", paths, l2_normalize(vectors), store)
    s.review = read_review(tmp_path / "pred.csv", set(paths))
    return s, index


def test_the_map_api_gives_every_tile_its_class_and_context(tmp_path):
    from PIL import Image

    s, index = _session(tmp_path, GRID, tile=32)
    c = TestClient(create_label_app(s), base_url="http://127.0.0.1")
    info = c.get("/api/geo/info").json()
    assert info == {"crs": "EPSG:32631", "scenes": ["scene"], "tiles": 12}
    data = c.get("/api/geo/scenes").json()
    assert data["scenes"][0]["rows"] == 3 and data["scenes"][0]["cols"] == 4
    tiles = {t["path"]: t for t in data["tiles"]}
    assert tiles[s.paths[0]]["label"] == GRID[0][0] and tiles[s.paths[0]]["predicted"] is None
    assert tiles[s.paths[3]]["predicted"] == GRID[0][3]
    assert len({c["colour"] for c in data["classes"]}) == len(data["classes"])
    ov = c.get("/api/geo/overview/scene")
    assert ov.status_code == 200 and Image.open(io.BytesIO(ov.content)).size == (128, 96)
    ctx = c.get(f"/api/geo/context/{s.ids[s.paths[5]]}")
    assert ctx.status_code == 200 and Image.open(io.BytesIO(ctx.content)).size == (288, 288)
    assert c.get("/api/geo/context/999").status_code == 404
    assert c.get("/map").status_code == 200


def test_a_folder_that_is_not_tiles_has_no_map(tmp_path):
    paths = [f"x/{i}.png" for i in range(4)]
    s = LabelSession(tmp_path, paths, l2_normalize(np.eye(4)), LabelStore(tmp_path / "l.csv", paths))
    c = TestClient(create_label_app(s), base_url="http://127.0.0.1")
    assert c.get("/api/geo/info").status_code == 404 and c.get("/map").status_code == 404


@pytest.fixture
def map_server(tmp_path: Path) -> Iterator[tuple[str, LabelSession, TileIndex]]:
    """The labelling app on a 6 x 10 tile folder, served by uvicorn in a thread."""
    import uvicorn

    s, index = _session(tmp_path, BIG_GRID)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(create_label_app(s), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/", s, index
    finally:
        server.should_exit = True
        thread.join(10)
        s.store.close()


def test_the_page_shows_the_class_map_and_labels_a_clicked_tile(map_server, tmp_path):
    sync_playwright, expect = playwright_or_skip()
    url, s, index = map_server
    target = index.by_cell[("scene", 4, 7)]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(url + "map")
            expect(page.locator("#legend li")).to_have_count(len({c for r in BIG_GRID for c in r}))
            expect(page.locator("#crs")).to_have_text("EPSG:32631")
            # the class map is drawn over the scene: the canvas holds coloured cells
            painted = page.evaluate("""() => { const c = document.getElementById('classes');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n / (d.length / 4); }""")
            assert painted > 0.9
            box = page.locator("#classes").bounding_box()
            k = box["width"] / index.scenes[0].width
            page.mouse.click(box["x"] + (target.col + 0.5) * 48 * k,
                             box["y"] + (target.row + 0.5) * 48 * k)
            expect(page.locator("#tile-path")).to_contain_text(target.path)
            expect(page.locator("#similar img")).to_have_count(9)
            expect(page.locator("#context")).to_have_js_property("naturalWidth", 288,
                                                                 timeout=60_000)
            for i in range(9):
                expect(page.locator("#similar img").nth(i)).to_have_js_property(
                    "complete", True, timeout=60_000)
            shot = tmp_path / "map_page.png"
            page.screenshot(path=str(shot))
            page.fill("#class", "orchard")
            page.keyboard.press("Enter")
            expect(page.locator("#saved")).to_contain_text("saved")
            expect(page.locator("#legend")).to_contain_text("orchard")
            # the labelling page shows a tile among its neighbours and links the map
            page.goto(url)
            expect(page.locator("#map-link")).to_be_visible()
            expect(page.locator("#current-img")).to_have_attribute("src",
                                                                   re.compile("/api/geo/context/"))
        finally:
            browser.close()
    assert read_labels(s.store.path)[target.path] == "orchard"
    if os.environ.get("RSDML_UPDATE_DOCS"):
        shutil.copy(shot, DOCS / "map_page.png")
