"""rsdml serve: every endpoint, bad uploads, path traversal, the bounded queue, Rocchio."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from rsdml.cli.main import main
from rsdml.config import TrainConfig
from rsdml.errors import RsdmlError
from rsdml.retrieval.archive import ArchiveIndex
from rsdml.retrieval.feedback import rocchio
from rsdml.retrieval.indexing import build_index
from rsdml.retrieval.server import STATIC, Limits, create_app
from rsdml.training.runner import train

LOCAL = "http://localhost"  # the Host name a loopback server answers


@pytest.fixture(scope="module")
def built(tiny_scenes, tmp_path_factory) -> Path:
    """A tiny trained run (1 epoch) and its index, for the whole module."""
    base = tmp_path_factory.mktemp("serve")
    train(TrainConfig(data=str(tiny_scenes), out=str(base / "run"), backbone="resnet18",
                      pretrained="none", image_size=32, epochs=1, batch_size=8,
                      unlabeled_batch_size=8, lr=0.003, head_warmup_epochs=0.5, device="cpu",
                      quiet=True, seed=0, eval_batch_size=64, report=False))
    build_index(tiny_scenes, base / "idx", run_dir=base / "run", quiet=True)
    return base / "idx"


@pytest.fixture(scope="module")
def index(built) -> ArchiveIndex:
    return ArchiveIndex.open(built)


@pytest.fixture(scope="module")
def client(index):
    with TestClient(create_app(index, limits=Limits(max_upload_bytes=200_000,
                                                    max_pixels=1_000_000)), base_url=LOCAL) as c:
        yield c


def _png(path: Path) -> bytes:
    return path.read_bytes()


def _upload(client: TestClient, data: bytes, k: int = 5, name: str = "q.png",
            ctype: str = "image/png"):
    return client.post(f"/api/search?k={k}", files={"file": (name, data, ctype)})


# --- endpoints -----------------------------------------------------------------------------
def test_healthz_info_page_and_openapi(client, index):
    assert client.get("/healthz").json() == {"status": "ok", "images": len(index)}
    info = client.get("/api/info").json()
    assert info["images"] == 64 and info["kind"] == "flat" and len(info["classes"]) == 4
    assert info["limits"]["max_upload_bytes"] == 200_000
    assert len(info["revision"]) == 12  # thumbnail cache key: a new process, new URLs
    assert client.get(f"/api/images/0?v={info['revision']}").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'src="/static/app.js"' in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/search", "/api/rerank", "/api/images/{image_id}", "/healthz"} <= set(paths)
    assert set(paths["/api/search"]) == {"get", "post"}
    body = paths["/api/search"]["post"]["requestBody"]["content"]
    assert "file" in body["multipart/form-data"]["schema"]["properties"]
    # no Swagger/ReDoc pages: FastAPI's load their scripts from a CDN
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404


def test_page_loads_nothing_from_elsewhere():
    for f in STATIC.iterdir():
        text = f.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f.name


def test_search_by_id(client, index):
    r = client.get("/api/search", params={"id": 5, "k": 7})
    assert r.status_code == 200
    body = r.json()
    assert body["query"]["path"] == index.entries[5]["path"]
    ids = [h["id"] for h in body["results"]]
    assert len(ids) == 7 and 5 not in ids
    scores = [h["score"] for h in body["results"]]
    assert scores == sorted(scores, reverse=True) and [h["rank"] for h in body["results"]] == list(range(1, 8))
    want = [h.id for h in index.search(index.vectors[5], 7, exclude=5)]
    assert ids == want
    assert body["results"][0]["class"] == index.entries[ids[0]]["class"]


@pytest.mark.parametrize("query, status", [("id=64", 404), ("id=-1", 422), ("", 422),
                                           ("id=abc", 422), ("id=../../etc/passwd", 422),
                                           ("id=0&k=0", 422), ("id=0&k=101", 422)])
def test_search_by_id_refusals(client, query, status):
    r = client.get(f"/api/search?{query}")
    assert r.status_code == status and "detail" in r.json()


def test_search_by_upload_finds_the_image_itself(client, index, tiny_scenes):
    path = index.entries[9]["path"]
    r = _upload(client, _png(tiny_scenes / path), k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["path"] == path and body["results"][0]["score"] > 0.999
    v = np.array(body["vector"])
    assert v.shape == (index.vectors.shape[1],) and abs(np.linalg.norm(v) - 1) < 1e-4
    assert len(body["results"]) == 3


def test_bad_uploads(client, index, tiny_scenes):
    good = _png(tiny_scenes / index.entries[0]["path"])
    cases = {
        "empty": (b"", 400),
        "text": (b"hello, not an image\n" * 10, 415),
        "truncated png": (good[: len(good) // 2], 415),
        "too many bytes": (b"\x89PNG" + bytes(200_001), 413),
    }
    for name, (data, status) in cases.items():
        r = _upload(client, data)
        assert r.status_code == status, (name, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and "rsdml-upload" not in detail, name  # no server paths
    assert client.post("/api/search").status_code == 422  # no file field
    assert _upload(client, good, k=500).status_code == 422


def test_decompression_bomb_refused_before_decoding(client):
    buf = io.BytesIO()
    Image.new("L", (2000, 2000)).save(buf, "PNG")  # 4 MP, a few kB compressed
    assert len(buf.getvalue()) < 200_000
    r = _upload(client, buf.getvalue())
    assert r.status_code == 413 and "1,000,000" in r.json()["detail"]


def test_body_limit_on_content_length_and_on_a_chunked_stream(client):
    big = b"x" * 400_000
    r = client.post("/api/search", content=big, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and "bytes" in r.json()["detail"]

    def chunks():
        for _ in range(40):
            yield b"y" * 10_000

    r = client.post("/api/search", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=zz"})
    assert r.status_code == 413


def test_thumbnails_by_id_only(client, index):
    r = client.get("/api/images/3")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "JPEG" and max(im.size) <= 192 and im.size == (32, 32)
    for url, ok in [("/api/images/64", {404}), ("/api/images/-1", {422}),
                    ("/api/images/..%2F..%2Fetc%2Fpasswd", {404, 422}),
                    ("/api/images/%2Fetc%2Fpasswd", {404, 422}),
                    ("/api/images/../../etc/passwd", {404}),
                    ("/static/..%2Fserver.py", {404}), ("/static/../server.py", {404}),
                    ("/static/%2E%2E/server.py", {404})]:
        r = client.get(url)
        assert r.status_code in ok, (url, r.status_code)
        assert b"import" not in r.content and b"root:" not in r.content


def test_thumbnail_never_leaves_the_indexed_folder(index, tmp_path):
    """An index whose metadata points outside its image folder (edited or crafted) still
    serves nothing from outside it."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "ok.png")
    entries = [{"path": "ok.png", "class": None, "root": 0},
               {"path": "../secret.png", "class": None, "root": 0},
               {"path": "x.png", "class": None, "root": 5}]
    crafted = ArchiveIndex(index.identity, "flat", [str(tmp_path / "images")], entries,
                           index.vectors[:3].copy())
    with TestClient(create_app(crafted), base_url=LOCAL) as c:  # an index handed over
        r = c.get("/api/images/0")
        assert r.status_code == 404 and "--images" in r.json()["detail"]
    with TestClient(create_app(crafted, images=[tmp_path / "images"]), base_url=LOCAL) as c:
        assert c.get("/api/images/0").status_code == 200
        assert c.get("/api/images/1").status_code == 404
        assert c.get("/api/images/2").status_code == 404


# --- relevance feedback --------------------------------------------------------------------
def test_rocchio_matches_a_hand_computation():
    q = np.array([1.0, 0.0, 0.0])
    rel = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    non = np.array([[1.0, 0.0, 0.0]])
    # 1*[1,0,0] + 0.75*[0,.5,.5] - 0.15*[1,0,0] = [0.85, 0.375, 0.375]; |.| = sqrt(1.00375)
    got = rocchio(q, rel, non, alpha=1.0, beta=0.75, gamma=0.15)
    np.testing.assert_allclose(got, [0.848411, 0.374299, 0.374299], atol=1e-6)
    # no feedback: the query itself; only negatives with alpha 0 cancel out
    np.testing.assert_allclose(rocchio(q, np.zeros((0, 3)), np.zeros((0, 3))), q)
    with pytest.raises(RsdmlError, match="zero vector"):
        rocchio(q, np.zeros((0, 3)), non, alpha=1.0, gamma=1.0)


def test_rerank_moves_a_relevant_image_up(client, index):
    before = client.get("/api/search", params={"id": 0, "k": 64}).json()["results"]
    last = before[-1]["id"]  # the least similar image
    r = client.post("/api/rerank", json={"id": 0, "relevant": [last], "k": 10, "beta": 20})
    assert r.status_code == 200, r.text
    after = r.json()["results"]
    assert after[0]["id"] == last and 0 not in [h["id"] for h in after]
    want = rocchio(index.vectors[0], index.vectors[[last]], index.vectors[[]], beta=20)
    assert [h["id"] for h in after] == [h.id for h in index.search(want, 10, exclude=0)]
    # by the vector an upload returned: the same update
    r2 = client.post("/api/rerank", json={"vector": index.vectors[0].tolist(),
                                          "relevant": [last], "k": 10, "beta": 20})
    assert r2.json()["results"][0]["id"] in (0, last)


@pytest.mark.parametrize("body, status", [
    ({"relevant": [1]}, 422),                                  # no query
    ({"id": 0, "vector": [0.0] * 4, "relevant": [1]}, 422),    # two queries
    ({"vector": [1.0, 2.0]}, 422),                             # wrong dimension
    ({"id": 0, "relevant": [64]}, 404),                        # unknown id
    ({"id": 99}, 404),
    ({"id": 0, "k": 1000}, 422),
    ({"id": 0, "non_relevant": [0], "alpha": 1, "gamma": 1}, 400),  # cancels out
])
def test_rerank_refusals(client, body, status):
    r = client.post("/api/rerank", json=body)
    assert r.status_code == status, r.text
    assert "detail" in r.json()


# --- overload --------------------------------------------------------------------------------
def test_full_queue_answers_503_and_recovers(index):
    release = threading.Event()

    def slow_embed(pixels: np.ndarray) -> np.ndarray:
        release.wait(10)
        return index.vectors[0]

    app = create_app(index, limits=Limits(workers=1, queue=0), embedder=slow_embed)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, "PNG")
    results: list[int] = []
    with TestClient(app, base_url=LOCAL) as c:
        t = threading.Thread(target=lambda: results.append(_upload(c, buf.getvalue()).status_code))
        t.start()
        deadline = time.monotonic() + 10
        while app.state.admission.active < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert app.state.admission.active == 1
        busy = c.get("/api/search", params={"id": 1})
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "busy" in busy.json()["detail"]
        assert c.get("/healthz").status_code == 200  # liveness is not queued
        release.set()
        t.join(10)
        assert results == [200]
        assert c.get("/api/search", params={"id": 1}).status_code == 200
        assert app.state.admission.active == 0


def test_an_upload_waits_for_admission_before_its_body_is_read(index, monkeypatch):
    """A full queue answers an upload 503 without reading (or spooling) its body."""
    from starlette.requests import Request

    release = threading.Event()

    def slow_embed(pixels: np.ndarray) -> np.ndarray:
        release.wait(10)
        return index.vectors[0]

    app = create_app(index, limits=Limits(workers=1, queue=0), embedder=slow_embed)
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buf, "PNG")
    forms: list[int] = []
    real_form = Request.form

    def counted_form(self, *args, **kwargs):
        forms.append(1)
        return real_form(self, *args, **kwargs)

    monkeypatch.setattr(Request, "form", counted_form)
    with TestClient(app, base_url=LOCAL) as c:
        t = threading.Thread(target=lambda: _upload(c, buf.getvalue()))
        t.start()
        deadline = time.monotonic() + 10
        while app.state.admission.active < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert forms == [1]
        r = _upload(c, buf.getvalue())
        assert r.status_code == 503
        assert forms == [1]  # the second body was never parsed
        release.set()
        t.join(10)


def test_multiband_tiff_bomb_refused_by_decoded_bytes(index):
    """13 bands of uint16 pass the pixel check (1 MP) but decode to 26 MB: refused (413) from
    the header, before any band is allocated."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.zeros((1000, 1000, 13), np.uint16), compression="zlib",
                     photometric="minisblack", planarconfig="contig")
    assert len(buf.getvalue()) < 200_000
    limits = Limits(max_pixels=2_000_000, max_decoded_bytes=10_000_000)
    with TestClient(create_app(index, limits=limits, embedder=lambda p: index.vectors[0]),
                    base_url=LOCAL) as c:
        r = _upload(c, buf.getvalue(), name="q.tif", ctype="image/tiff")
    assert r.status_code == 413 and "26,000,000 bytes" in r.json()["detail"]


def test_host_header_must_name_this_server(index):
    """DNS rebinding: a page served as evil.example that resolves to 127.0.0.1 sends
    Host: evil.example; only the loopback names (and --allow-host ones) are answered."""
    from rsdml.retrieval.server import host_names, host_of

    app = create_app(index, embedder=lambda p: index.vectors[0])
    for url, status in (("http://evil.example", 400), ("http://localhost:8000", 200),
                        ("http://127.0.0.1", 200), ("http://[::1]:8000", 200)):
        with TestClient(app, base_url=url) as c:
            assert c.get("/healthz").status_code == status, url
    proxied = create_app(index, embedder=lambda p: index.vectors[0],
                         allowed_hosts=["search.lab.example"])
    with TestClient(proxied, base_url="http://search.lab.example") as c:
        assert c.get("/healthz").status_code == 200
    assert host_of("[::1]:8000") == "::1" and host_of("LocalHost:80") == "localhost"
    assert "localhost" in host_names("127.0.0.1") and host_names("0.0.0.0") == ["*"]
    assert host_names("0.0.0.0", ["a.example"]) == ["a.example"]


def test_thumbnails_of_a_folder_of_symlinks(built, tiny_scenes, tmp_path):
    """Training and indexing follow links; so do thumbnails (they used to be blank)."""
    links = tmp_path / "links"
    for f in sorted(tiny_scenes.rglob("*.png"))[:6]:
        dst = links / f.relative_to(tiny_scenes)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(f)
    idx = build_index(links, tmp_path / "idx", run_dir=built.parent / "run", quiet=True)
    with TestClient(create_app(idx), base_url=LOCAL) as c:
        for i in range(len(idx)):
            r = c.get(f"/api/images/{i}")
            assert r.status_code == 200 and r.content[:3] == b"\xff\xd8\xff", i


def test_limits_are_checked():
    with pytest.raises(RsdmlError, match="--workers"):
        Limits(workers=0)
    with pytest.raises(RsdmlError, match="at most 32"):
        Limits(workers=2, queue=40)


# --- the command ---------------------------------------------------------------------------
def test_serve_errors_are_one_line(built, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rsdml: error:") and "not an rsdml index" in err and "\n" not in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            main(["serve", str(built), "--port", str(port)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("rsdml: error: cannot listen on 127.0.0.1:") and "--port" in err
    with pytest.raises(SystemExit) as e:
        main(["serve", str(built), "--workers", "0"])
    assert e.value.code == 2



# --- a real browser ------------------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def served(built):
    """`rsdml serve` in a subprocess on 127.0.0.1 and a free port; yields its URL."""
    import re
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "from rsdml.cli.main import main; main()",
                             "serve", str(built), "--host", "127.0.0.1", "--port", "0"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        url, seen = None, []
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
            seen.append(line)
            if m := re.search(r"on (http://127\.0\.0\.1:\d+/)", line):
                url = m.group(1)
        assert url is not None, f"rsdml serve did not start: {''.join(seen)}"
        # it listens as soon as it says so (no connection refused before uvicorn's loop runs)
        with urllib.request.urlopen(url + "healthz", timeout=10) as r:
            assert json.loads(r.read())["status"] == "ok"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, "rsdml serve did not stop cleanly on SIGTERM"


def test_browser_upload_mark_rerank_export(served, index, tiny_scenes, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (CI installs Debian's; `apt-get install chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip package playwright missing")
    from urllib.parse import urlparse

    outside: list[str] = []

    def loopback_only(route) -> None:
        host = urlparse(route.request.url).hostname
        if route.request.url.startswith(("blob:", "data:")) or host == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(accept_downloads=True)
            page.route("**/*", loopback_only)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(served)
            page.wait_for_function("() => document.querySelector('#info').textContent.includes('64 images')",
                                   timeout=15_000)
            # upload an image: the grid shows 20 results, the image itself first
            query = index.entries[9]["path"]
            page.set_input_files("#file", str(tiny_scenes / query))
            page.wait_for_function("() => document.querySelectorAll('.result').length === 20",
                                   timeout=15_000)
            order = page.eval_on_selector_all(".result", "els => els.map(e => +e.dataset.id)")
            assert order[0] == 9
            revision = json.loads(urllib.request.urlopen(served + "api/info").read())["revision"]
            assert page.get_attribute(".result img", "src") == f"/api/images/9?v={revision}"
            assert page.text_content(".result .path") == query
            page.wait_for_function("() => [...document.querySelectorAll('.result img')]"
                                   ".slice(0, 4).every(i => i.complete && i.naturalWidth > 0)",
                                   timeout=15_000)
            # mark the last result relevant and re-rank: it moves up
            marked = order[-1]
            page.click(f".result[data-id='{marked}'] .mark-relevant")
            assert "relevant" in page.get_attribute(f".result[data-id='{marked}']", "class")
            page.click("#rerank")
            page.wait_for_function("() => document.querySelector('#status').textContent"
                                   ".startsWith('re-ranked')", timeout=15_000)
            after = page.eval_on_selector_all(".result", "els => els.map(e => +e.dataset.id)")
            assert after != order and after.index(marked) < order.index(marked)
            # the marked set as CSV
            with page.expect_download() as dl:
                page.click("#export")
            csv_text = Path(dl.value.path()).read_text()
            assert csv_text.splitlines()[0] == "id,path,class,score,mark"
            assert csv_text.splitlines()[1].startswith(f"{marked},{index.entries[marked]['path']},")
            assert csv_text.strip().endswith(",relevant")
            # filter by class, then click a result to search by it
            cls = index.entries[after[0]]["class"]
            page.select_option("#class-filter", cls)
            shown = page.eval_on_selector_all(".result .class", "els => els.map(e => e.textContent)")
            assert shown and set(shown) == {cls}
            clicked = page.eval_on_selector(".result", "e => +e.dataset.id")
            page.click(".result img")
            page.wait_for_function(f"() => document.querySelector('#query-caption').textContent"
                                   f".startsWith({json.dumps(index.entries[clicked]['path'])})",
                                   timeout=15_000)
            ids = page.eval_on_selector_all(".result", "els => els.map(e => +e.dataset.id)")
            assert clicked not in ids and len(ids) > 0
            assert errors == [] and outside == []
        finally:
            browser.close()
