"""The web skeleton both pages stand on (rsdml.retrieval.web): the same security tests for
``rsdml label`` as for ``rsdml serve`` (issue 25, defects 2 and 6)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from rsdml.labelling.labels import LabelStore
from rsdml.labelling.page import LabelSession, create_label_app
from rsdml.vectors import l2_normalize

LOCAL = "http://localhost"


@pytest.fixture
def label_app(tmp_path):
    """A label page over 4 images: two real files, two through a symlinked folder."""
    real = tmp_path / "real"
    real.mkdir()
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 60 * i, np.uint8)).save(real / f"{i}.png")
        Image.fromarray(np.full((16, 16, 3), 90 + i, np.uint8)).save(data / "a" / f"{i}.png")
    (data / "linked").symlink_to(real, target_is_directory=True)
    paths = ["a/0.png", "a/1.png", "linked/0.png", "linked/1.png"]
    store = LabelStore(tmp_path / "labels.csv", paths)
    session = LabelSession(data, paths, l2_normalize(np.eye(4)), store)
    return create_label_app(session), tmp_path / "labels.csv"


@pytest.mark.parametrize("request_", [("GET", "/api/state", None), ("GET", "/api/labels", None),
                                      ("GET", "/api/images/0", None), ("GET", "/", None),
                                      ("POST", "/api/label", {"ids": [0], "class": "Beach"}),
                                      ("POST", "/api/undo", None)])
def test_label_page_answers_only_its_own_host_names(label_app, request_):
    """DNS rebinding: a page on attacker.example resolving to 127.0.0.1 could label the
    user's archive; it is answered 400, as rsdml serve answers it, and nothing is written."""
    app, labels = label_app
    method, url, body = request_
    with TestClient(app, base_url="http://attacker.example") as c:
        r = c.request(method, url, json=body)
        assert r.status_code == 400 and "not served here" in r.json()["detail"]
    assert "Beach" not in labels.read_text()
    with TestClient(app, base_url=LOCAL) as c:
        assert c.request(method, url, json=body).status_code == 200


def test_label_page_shows_images_of_a_symlinked_folder(label_app):
    """Training and rsdml serve read a folder of links through them; the label page answered
    404 (it resolved the link and found it outside the data folder)."""
    app, _ = label_app
    with TestClient(app, base_url=LOCAL) as c:
        for i in range(4):
            r = c.get(f"/api/images/{i}")
            assert r.status_code == 200 and r.content[:3] == b"\xff\xd8\xff", i


def test_thumbnail_paths_stay_inside_the_folder(tmp_path):
    from fastapi import HTTPException

    from rsdml.retrieval.web import file_below

    (tmp_path / "x.png").write_bytes(b"")
    assert file_below(tmp_path, "x.png", "image 0") == tmp_path / "x.png"
    for bad in ("../x.png", "/etc/passwd", "", "a/../../x.png"):
        with pytest.raises(HTTPException):
            file_below(tmp_path / "sub", bad, "image 1")
