"""``rsdml label``: the API, the page in headless chromium (Playwright) and a server killed
while it writes labels."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMIUM, playwright_or_skip
from fastapi.testclient import TestClient

from rsdml.labelling.labels import LabelStore, read_labels
from rsdml.labelling.page import LabelSession, create_label_app
from rsdml.training.archive_vectors import archive_images
from rsdml.vectors import l2_normalize

LOCAL = "http://localhost"  # a Host name the page answers (rsdml.retrieval.web.HostCheck)


def _session(tmp_path: Path, vectors: np.ndarray, paths: list[str]) -> LabelSession:
    store = LabelStore(tmp_path / "labels.csv", paths)
    return LabelSession(tmp_path, paths, l2_normalize(vectors), store, suggestions=paths[::-1])


def test_api_labels_undo_skip_and_the_queue(tmp_path):
    paths = [f"x/{i}.png" for i in range(12)]
    s = _session(tmp_path, np.random.default_rng(0).normal(size=(12, 8)), paths)
    c = TestClient(create_label_app(s), base_url=LOCAL)
    st = c.get("/api/state").json()
    assert [q["path"] for q in st["queue"]][:3] == ["x/11.png", "x/10.png", "x/9.png"]
    r = c.post("/api/label", json={"ids": [11, 10], "class": "Beach"})
    assert r.status_code == 200 and r.json()["labelled"] == 2
    assert read_labels(tmp_path / "labels.csv") == {"x/11.png": "Beach", "x/10.png": "Beach"}
    r = c.post("/api/skip", json={"id": 9}).json()
    assert r["queue"][0]["path"] == "x/8.png"
    r = c.post("/api/undo").json()
    assert {u["path"] for u in r["undone"]} == {"x/11.png", "x/10.png"} and r["labelled"] == 0
    assert c.post("/api/label", json={"ids": [99], "class": "A"}).status_code == 404
    assert c.post("/api/label", json={"ids": [1], "class": " \n "}).status_code in (400, 422)
    assert read_labels(tmp_path / "labels.csv", allow_empty=True) == {}


def test_undo_is_per_tab(tmp_path):
    """Issue 25: undo was global, so tab A's undo reverted tab B's label."""
    paths = [f"x/{i}.png" for i in range(6)]
    c = TestClient(create_label_app(_session(tmp_path, np.eye(6), paths)), base_url=LOCAL)
    a, b = {"X-Rsdml-Client": "tab-a"}, {"X-Rsdml-Client": "tab-b"}
    c.post("/api/label", json={"ids": [0], "class": "Beach"}, headers=a)
    c.post("/api/label", json={"ids": [1], "class": "Forest"}, headers=b)
    r = c.post("/api/undo", headers=a).json()
    assert [u["path"] for u in r["undone"]] == ["x/0.png"]
    assert read_labels(tmp_path / "labels.csv") == {"x/1.png": "Forest"}  # B's label kept
    assert c.post("/api/undo", headers=a).json()["undone"] == []  # A has nothing left
    # A relabels what B labelled; B's undo then leaves A's newer label alone
    c.post("/api/label", json={"ids": [1], "class": "Meadow"}, headers=a)
    assert c.post("/api/undo", headers=b).json()["undone"] == []
    assert read_labels(tmp_path / "labels.csv") == {"x/1.png": "Meadow"}


def test_the_queue_says_how_far_the_suggestions_are(tmp_path):
    """Issue 25, defect 11: after the suggestions ran out the page went on in folder order
    with no word; the state now says how many are done and when they are finished."""
    paths = [f"x/{i}.png" for i in range(6)]
    s = _session(tmp_path, np.eye(6), paths)
    s.suggestions = ["x/4.png", "x/2.png"]
    c = TestClient(create_label_app(s), base_url=LOCAL)
    assert c.get("/api/state").json()["suggestions"] == {"total": 2, "done": 0, "finished": False}
    c.post("/api/label", json={"ids": [4], "class": "A"})
    c.post("/api/skip", json={"id": 2})
    st = c.get("/api/state").json()
    assert st["suggestions"] == {"total": 2, "done": 2, "finished": True}
    assert st["queue"][0]["path"] == "x/0.png"  # then folder order


def test_review_lists_predictions_and_accepting_writes_the_label(tmp_path):
    from rsdml.labelling.page import read_review

    paths = [f"x/{i}.png" for i in range(6)]
    pred = tmp_path / "pred.csv"
    pred.write_text("path,class,probability,knn_agreement,margin\n"
                    "x/3.png,Beach,0.41,0.30,0.05\nx/4.png,Forest,0.90,1.00,0.80\n")
    s = _session(tmp_path, np.random.default_rng(0).normal(size=(6, 8)), paths)
    s.review = read_review(pred, set(paths))
    c = TestClient(create_label_app(s), base_url=LOCAL)
    review = c.get("/api/state").json()["review"]
    assert [(r["path"], r["predicted"]) for r in review] == [("x/3.png", "Beach"), ("x/4.png", "Forest")]
    after = c.post("/api/label", json={"ids": [3], "class": "Beach"}).json()  # accept
    assert [r["path"] for r in after["review"]] == ["x/4.png"]
    c.post("/api/label", json={"ids": [4], "class": "Meadow"})  # correct
    assert read_labels(tmp_path / "labels.csv") == {"x/3.png": "Beach", "x/4.png": "Meadow"}


def test_rerank_brings_in_images_not_among_the_first_results(tmp_path):
    """The first results are 5 of the 10 images of group B; ticking them and re-ranking
    searches the whole folder again and brings the other 5 in."""
    rng = np.random.default_rng(0)
    d = 16
    q = np.eye(d)[0]
    b_dir = 0.8 * np.eye(d)[0] + 0.6 * np.eye(d)[1]
    group_b = b_dir + rng.normal(size=(10, d)) * 0.05
    other = rng.normal(size=(30, d))
    x = np.vstack([q, group_b, other])
    paths = [f"i/{i}.png" for i in range(len(x))]
    c = TestClient(create_label_app(_session(tmp_path, x, paths)), base_url=LOCAL)
    first = [h["id"] for h in c.get("/api/similar?id=0&k=5").json()["results"]]
    assert set(first) <= set(range(1, 11))
    again = c.post("/api/rerank", json={"id": 0, "relevant": first, "k": 10}).json()["results"]
    ids = {h["id"] for h in again}
    assert set(range(1, 11)) == ids  # the 5 shown and the 5 not shown before
    assert ids - set(first)


# ------------------------------------------------------------------ a real server process
@pytest.fixture
def label_server(tiny_scenes, tmp_path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """``rsdml label`` on the tiny scenes in its own process: (base URL, process, labels file)."""
    labels = tmp_path / "labels.csv"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsdml", "label", str(tiny_scenes), "--labels", str(labels),
         "--port", "0", "--quiet", "--device", "cpu"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    url = None
    assert proc.stderr is not None
    for line in proc.stderr:  # the start line names the port; errors end the loop
        m = re.search(r"on (http://127\.0\.0\.1:\d+/)", line)
        if m:
            url = m.group(1)
            break
    if url is None:
        proc.kill()
        pytest.fail(f"rsdml label did not start (exit {proc.wait()})")
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # never block its writes
    try:
        yield url, proc, labels
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_a_killed_server_keeps_every_acknowledged_label(label_server, tiny_scenes):
    url, proc, labels = label_server
    _, paths = archive_images(tiny_scenes)
    acked: dict[str, str] = {}
    stop = threading.Event()

    def writer() -> None:
        for i in range(len(paths)):
            if stop.is_set():
                return
            cls = f"class{i % 3}"
            try:
                _post(url + "api/label", {"ids": [i], "class": cls})
            except Exception:  # the server is gone: this one was never acknowledged
                return
            acked[paths[i]] = cls

    t = threading.Thread(target=writer)
    t.start()
    while len(acked) < 20 and t.is_alive():
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: the writer is still sending
    proc.wait()
    stop.set()
    t.join()
    assert len(acked) >= 20
    on_disk = read_labels(labels, paths)  # parses: the CSV is replaced atomically
    assert {p: on_disk.get(p) for p in acked} == acked
    recovered = LabelStore(labels, paths)  # the journal replays onto it on the next start
    assert {p: recovered.labels.get(p) for p in acked} == acked
    recovered.close()


def test_label_ten_images_by_keyboard_and_reload(label_server):
    sync_playwright, expect = playwright_or_skip()
    url, _, labels = label_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page.locator("#current-path")).not_to_have_text("")
            expect(page.locator("#class")).to_be_focused()  # the page starts in the class box
            page.keyboard.type("forest")
            shown = []
            for n in range(1, 11):
                shown.append(page.inner_text("#current-path"))
                page.keyboard.press("Enter")
                expect(page.locator("#count")).to_have_text(str(n))
            expect(page.locator("#saved")).to_have_text("saved (10)")
            page.keyboard.press("Escape")
            page.keyboard.press("u")  # undo the last one, by keyboard outside the box
            expect(page.locator("#count")).to_have_text('9')
            page.keyboard.press("/")
            page.keyboard.press("Enter")  # the undone image is current again: label it back
            expect(page.locator("#count")).to_have_text('10')
            page.reload()
            expect(page.locator("#count")).to_have_text('10')
            assert page.locator("#recent .card").count() == 10
            assert page.locator("#classes li").all_inner_texts()[0].split()[-2:] == ["forest", "10"]
        finally:
            browser.close()
    on_disk = read_labels(labels)
    assert on_disk == {p: "forest" for p in shown}
