"""``rsdml datasets download`` against a local HTTP server serving a tiny fake archive: success,
resume after a cut, checksum mismatch, server errors, no network. Never touches the network."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from clihelp import run_cli
from PIL import Image

from rsdml.data import datasets
from rsdml.data.datasets import DatasetInfo, download_dataset, resolve_data
from rsdml.data.download import DownloadError, fetch


def _fake_zip(per_class: int = 2) -> bytes:
    """A zip like the real ones: class folders nested below a top folder, plus debris."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("Tiny/readme.txt", "not an image")
        for c in ("alpha", "beta"):
            for i in range(per_class):
                img = io.BytesIO()
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(img, "PNG")
                z.writestr(f"Tiny/Images/{c}/{c}{i}.png", img.getvalue())
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    payload = b""
    mode = "ok"  # ok | cut (first response stops half way) | 500 | 404 | norange
    ranges: list[str | None] = []

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        cls = type(self)
        rng = self.headers.get("Range")
        cls.ranges.append(rng)
        if cls.mode in ("500", "404"):
            self.send_error(int(cls.mode))
            return
        start = int(rng.split("=")[1].rstrip("-")) if rng and cls.mode != "norange" else 0
        body = cls.payload[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.mode == "cut" and len(cls.ranges) == 1:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # drop the connection mid-file
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    handler = type("H", (_Handler,), {"ranges": [], "payload": _fake_zip(), "mode": "ok"})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{httpd.server_address[1]}/Tiny.zip"
    yield handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def tiny_entry(monkeypatch, server, tmp_path):
    info = DatasetInfo("tiny", "Tiny", 2, 4, "8x8", "RGB", "MIT", "https://example.org/tiny",
                       "Tiny.zip", "1 KiB", urls=(server.url,),
                       sha256=hashlib.sha256(server.payload).hexdigest())
    monkeypatch.setitem(datasets.DATASETS, "tiny", info)
    monkeypatch.setenv("RSDML_DATA", str(tmp_path / "root"))
    return info


def _nothing_left(root: Path) -> None:
    assert not (root / "tiny").exists()
    assert not list(root.glob(".tiny.extract-*")) if root.exists() else True


def test_download_installs_verified_class_folders(tiny_entry, server, tmp_path, capsys):
    code, out, err = run_cli(["datasets", "download", "tiny", "--quiet"], capsys)
    assert code == 0, err
    folder = tmp_path / "root" / "tiny"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "alpha", "beta"]
    assert len(list(folder.glob("*/*.png"))) == 4
    assert not (tmp_path / "root" / "Tiny.zip").exists()  # archive removed once installed
    assert resolve_data("tiny") == str(folder)
    # a second call finds it installed and downloads nothing
    server.ranges.clear()
    assert download_dataset("tiny", show=False) == folder and server.ranges == []
    code, out, _ = run_cli(["datasets", "list"], capsys)
    assert code == 0 and any(line.startswith("tiny") and " yes " in line
                             for line in out.splitlines())


def test_resume_after_a_cut(tiny_entry, server, tmp_path):
    server.mode = "cut"
    folder = download_dataset("tiny", show=False)
    half = len(server.payload) // 2
    assert server.ranges == [None, f"bytes={half}-"]
    assert len(list(folder.glob("*/*.png"))) == 4


def test_resume_a_part_file_left_by_an_earlier_run(server, tmp_path):
    part = tmp_path / "Tiny.zip.part"
    part.write_bytes(server.payload[:100])
    fetch(server.url, tmp_path / "Tiny.zip", show=False)
    assert server.ranges == ["bytes=100-"]
    assert (tmp_path / "Tiny.zip").read_bytes() == server.payload and not part.exists()


def test_server_without_range_support_restarts(server, tmp_path):
    server.mode = "norange"
    (tmp_path / "Tiny.zip.part").write_bytes(b"garbage")
    fetch(server.url, tmp_path / "Tiny.zip", show=False)
    assert (tmp_path / "Tiny.zip").read_bytes() == server.payload


def test_checksum_mismatch_extracts_nothing(tiny_entry, server, tmp_path, monkeypatch, capsys):
    bad = DatasetInfo(**{**tiny_entry.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(datasets.DATASETS, "tiny", bad)
    code, _, err = run_cli(["datasets", "download", "tiny", "--quiet"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "sha256" in err and "expected 000" in err and "nothing was extracted" in err
    root = tmp_path / "root"
    _nothing_left(root)
    assert not (root / "Tiny.zip").exists() and not (root / "Tiny.zip.part").exists()
    assert resolve_data(str(root / "tiny")) == str(root / "tiny")  # not installed: no marker
    with pytest.raises(datasets.RsdmlError, match="is not in"):
        resolve_data("tiny")


@pytest.mark.parametrize("status", ["500", "404"])
def test_server_errors(tiny_entry, server, tmp_path, capsys, status):
    server.mode = status
    code, _, err = run_cli(["datasets", "download", "tiny", "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"HTTP {status}" in err and server.url in err and "by hand" in err
    _nothing_left(tmp_path / "root")


def test_no_network(tiny_entry, monkeypatch, tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/Tiny.zip"
    monkeypatch.setitem(datasets.DATASETS, "tiny",
                        DatasetInfo(**{**tiny_entry.__dict__, "urls": (url,)}))
    code, _, err = run_cli(["datasets", "download", "tiny", "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"cannot reach {url}" in err and "Tiny.zip by hand" in err
    assert "rsdml datasets download tiny" in err
    _nothing_left(tmp_path / "root")


def test_wrong_counts_install_nothing(tiny_entry, monkeypatch, tmp_path):
    monkeypatch.setitem(datasets.DATASETS, "tiny",
                        DatasetInfo(**{**tiny_entry.__dict__, "images": 5}))
    with pytest.raises(datasets.RsdmlError, match="4 images instead of 5"):
        download_dataset("tiny", show=False)
    _nothing_left(tmp_path / "root")


def test_manual_archive_is_verified_and_used(tiny_entry, server, tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.DATASETS, "tiny",
                        DatasetInfo(**{**tiny_entry.__dict__, "urls": ()}))
    with pytest.raises(DownloadError, match="no direct download"):
        download_dataset("tiny", show=False)
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    (root / "Tiny.zip").write_bytes(server.payload)  # as a user who downloaded it by hand
    assert len(list(download_dataset("tiny", show=False).glob("*/*.png"))) == 4
    assert server.ranges == []


def test_data_name_that_is_not_downloaded_says_how(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("RSDML_DATA", str(tmp_path))
    code, _, err = run_cli(["train", "--data", "eurosat-ms", "--out", str(tmp_path / "r")],
                           capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "rsdml datasets download eurosat-ms" in err and "EuroSATallBands.zip by hand" in err
    assert not (tmp_path / "r").exists()
