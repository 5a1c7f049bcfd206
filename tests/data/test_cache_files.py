"""`rsdml cache list|clear`: what the cache folder holds, and clearing unused caches safely."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from rsdml.cli.main import main
from rsdml.data.cache import load_image_cache
from rsdml.data.cache_files import cache_files, clear_cache

DAY = 86400


def _age(path: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(path, (t, t))


def test_lists_image_and_feature_caches_and_marks_reuse(data, tmp_path):
    data, paths = data
    cache = tmp_path / "cache"
    built = load_image_cache(data, paths, 8, cache_dir=cache, progress=False).path
    other = load_image_cache(data, paths, 12, cache_dir=cache, progress=False).path
    (cache / "features-abc.pt").write_bytes(b"x" * 10)
    (cache / "notes.txt").write_text("not a cache")
    _age(built, 40)
    _age(other, 10)
    names = [f.path.name for f in cache_files(cache)]
    assert names == ["features-abc.pt", other.name, built.name]  # most recently used first
    assert {f.nbytes for f in cache_files(cache)} >= {10, built.stat().st_size}
    load_image_cache(data, paths, 8, cache_dir=cache, progress=False)  # reused: used now
    assert cache_files(cache)[0].path == built
    assert time.time() - built.stat().st_mtime < 60


def test_clear_older_than_keeps_recent_and_locked_caches(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    cache = tmp_path / "cache"
    cache.mkdir()
    old, recent, building = (cache / f"images-8px-4-{k}.rsdml-images" for k in "abc")
    for f in (old, recent, building):
        f.write_bytes(b"0" * 100)
    _age(old, 40)
    _age(building, 40)
    _age(recent, 1)
    fd = os.open(building.with_name(building.name + ".lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process is building it
        removed, kept = clear_cache(cache, older_than_days=30)
    finally:
        os.close(fd)
    assert [f.path for f in removed] == [old] and not old.exists()
    assert {f.path for f in kept} == {recent, building} and recent.exists() and building.exists()
    removed, kept = clear_cache(cache)  # everything not being built
    assert {f.path for f in removed} == {recent, building} and kept == []


def test_cli_list_and_clear(tmp_path, capsys):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "features-abc.pt").write_bytes(b"x" * 2**20)
    with pytest.raises(SystemExit) as exc:
        main(["cache", "list", "--cache-dir", str(cache)])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "1 cache file(s), 1.0 MiB" in out and "features-abc.pt" in out
    with pytest.raises(SystemExit) as exc:
        main(["cache", "clear", "--cache-dir", str(cache), "--older-than", "1"])
    assert exc.value.code == 0 and "removed 0 cache file(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["cache", "clear", "--cache-dir", str(cache)])
    assert exc.value.code == 0 and "removed 1 cache file(s), 1.0 MiB; kept 0" in capsys.readouterr().out
    assert cache_files(cache) == []
