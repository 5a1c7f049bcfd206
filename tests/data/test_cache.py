"""The decoded-image cache: content, reuse, invalidation, corruption, modes, concurrency."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rsdml.data.cache as cache_mod
from rsdml.data import imageio
from rsdml.data.cache import ImageCache, default_cache_dir, load_image_cache
from rsdml.errors import RsdmlError

SIZE = 16
N_IMAGES = 20


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Counts calls of imageio.read_resized (the cache must call it, once per image)."""
    calls: list[str] = []
    real = imageio.read_resized

    def counting(path, size):
        calls.append(str(path))
        return real(path, size)

    monkeypatch.setattr(imageio, "read_resized", counting)
    return calls


def _expected(root: Path, paths: list[str], size: int = SIZE) -> np.ndarray:
    return np.stack([imageio.read_resized(root / p, size).transpose(2, 0, 1) for p in paths])


def _load(root, paths, cache_dir, **kw) -> ImageCache:
    return load_image_cache(root, paths, SIZE, cache_dir=cache_dir, progress=False, **kw)


@pytest.mark.parametrize("mode", ["memory", "mmap"])
def test_content_equals_read_resized(data, tmp_path, decodes, mode):
    root, paths = data
    expected = _expected(root, paths)
    decodes.clear()
    before = sorted(p.name for p in root.rglob("*"))
    c = _load(root, paths, tmp_path / "cache", mode=mode, workers=3)
    assert c.images.dtype == torch.uint8 and c.images.is_contiguous()
    assert c.images.shape == (N_IMAGES, 3, SIZE, SIZE) and len(c) == N_IMAGES
    np.testing.assert_array_equal(c.images.numpy(), expected)
    assert sorted(decodes) == sorted(str(root / p) for p in paths)  # each decoded once
    assert c.mode == mode and c.stats.built and c.stats.persisted
    assert c.nbytes == expected.nbytes and c.stats.nbytes == expected.nbytes
    assert c.stats.resident_bytes == (expected.nbytes if mode == "memory" else 0)
    assert c.path is not None and c.path.parent == tmp_path / "cache"
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing written beside images
    idx = torch.tensor([5, 0, 5])
    np.testing.assert_array_equal(c.batch(idx).numpy(), expected[[5, 0, 5]])
    out = torch.empty(3, 3, SIZE, SIZE, dtype=torch.uint8)
    assert c.batch(idx, out=out) is out and torch.equal(out, c.batch(idx))


def test_second_load_reuses_without_decoding(data, tmp_path, decodes):
    root, paths = data
    first = _load(root, paths, tmp_path / "cache")
    assert len(decodes) == N_IMAGES
    for mode in ("memory", "mmap", "auto"):
        again = _load(root, paths, tmp_path / "cache", mode=mode)
        assert not again.stats.built and again.path == first.path
        assert torch.equal(again.images, first.images)
    assert len(decodes) == N_IMAGES


def test_changed_file_invalidates(data, tmp_path, decodes):
    root, paths = data
    first = _load(root, paths, tmp_path / "cache")
    st = os.stat(root / paths[3])
    os.utime(root / paths[3], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touch
    decodes.clear()
    touched = _load(root, paths, tmp_path / "cache")
    assert touched.stats.built and len(decodes) == N_IMAGES and touched.path != first.path

    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(root / paths[4])  # rewrite
    rewritten = _load(root, paths, tmp_path / "cache")
    assert rewritten.stats.built
    assert (rewritten.images[4] == 7).all()
    np.testing.assert_array_equal(rewritten.images.numpy(), _expected(root, paths))


def test_other_size_or_file_list_is_another_cache(data, tmp_path):
    root, paths = data
    a = _load(root, paths, tmp_path / "cache")
    b = _load(root, paths[:-1], tmp_path / "cache")
    c = load_image_cache(root, paths, SIZE + 1, cache_dir=tmp_path / "cache", progress=False)
    assert len({a.path, b.path, c.path}) == 3 and b.stats.built and c.stats.built
    assert c.images.shape[-1] == SIZE + 1


def _corrupt_truncate(f: Path) -> None:
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size - 100)


def _corrupt_flip_data_byte(f: Path) -> None:
    with open(f, "r+b") as fh:
        fh.seek(f.stat().st_size - 50)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))


def _corrupt_header(f: Path) -> None:
    with open(f, "r+b") as fh:
        fh.write(b"garbage!")


def _corrupt_header_json(f: Path) -> None:
    with open(f, "r+b") as fh:
        fh.seek(20)
        fh.write(b"{{{{")


def _corrupt_grow(f: Path) -> None:
    with open(f, "ab") as fh:
        fh.write(b"\0" * 10)


@pytest.mark.parametrize(
    "corrupt",
    [
        _corrupt_truncate,
        _corrupt_flip_data_byte,
        _corrupt_header,
        _corrupt_header_json,
        _corrupt_grow,
    ],
)
@pytest.mark.parametrize("mode", ["memory", "mmap"])
def test_corrupt_cache_is_rebuilt(data, tmp_path, decodes, caplog, corrupt, mode):
    root, paths = data
    first = _load(root, paths, tmp_path / "cache", mode=mode)
    expected = first.images.clone()
    del first
    corrupt(next((tmp_path / "cache").glob("*.rsdml-images")))
    decodes.clear()
    with caplog.at_level(logging.WARNING, logger="rsdml.data.cache"):
        again = _load(root, paths, tmp_path / "cache", mode=mode)
    assert caplog.text.count("is corrupt") == 1  # warned once, not again under the lock
    assert again.stats.built and len(decodes) == N_IMAGES
    assert torch.equal(again.images, expected)
    decodes.clear()
    third = _load(root, paths, tmp_path / "cache", mode=mode)  # the rebuilt file is trusted
    assert not third.stats.built and not decodes and torch.equal(third.images, expected)


def test_auto_mode_goes_to_mmap_above_budget(data, tmp_path, monkeypatch):
    root, paths = data
    nbytes = N_IMAGES * 3 * SIZE * SIZE
    small = _load(root, paths, tmp_path / "cache", max_memory_bytes=nbytes)
    assert small.mode == "memory"

    def no_ram_build(self):  # the mmap build must never hold the whole array in RAM
        raise AssertionError("built in RAM")

    monkeypatch.setattr(cache_mod._Build, "_into_array", no_ram_build)
    big = _load(root, paths, tmp_path / "cache2", max_memory_bytes=nbytes - 1)
    assert big.mode == "mmap" and big.stats.built and big.stats.resident_bytes == 0
    assert torch.equal(big.images, small.images)
    reopened = _load(root, paths, tmp_path / "cache2", max_memory_bytes=100)
    assert reopened.mode == "mmap" and not reopened.stats.built
    assert torch.equal(reopened.images, small.images)


def _build_in_child(root, paths, cache_dir, barrier, queue) -> None:
    real = imageio.read_resized

    def slow(path, size):  # widen the window in which both processes build
        time.sleep(0.03)
        return real(path, size)

    imageio.read_resized = slow
    barrier.wait()
    c = load_image_cache(root, paths, SIZE, cache_dir=cache_dir, progress=False, workers=2)
    queue.put((c.stats.built, c.images.numpy().tobytes(), str(c.path)))


def test_two_processes_building_at_once(data, tmp_path):
    root, paths = data
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_build_in_child, args=(root, paths, tmp_path / "cache", barrier, queue))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected = _expected(root, paths).tobytes()
    assert all(content == expected for _, content, _ in results)
    assert sorted(built for built, _, _ in results) == [False, True]  # one built, one reused
    assert results[0][2] == results[1][2]
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(names) == 2 and names[1] == names[0] + ".lock"  # no temp files left


def test_unwritable_cache_dir_falls_back_with_warning(data, tmp_path, caplog, decodes):
    root, paths = data
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder should go")
    with caplog.at_level(logging.WARNING, logger="rsdml.data.cache"):
        c = _load(root, paths, blocker / "cache")
    assert "not writable" in caplog.text
    assert c.path is None and c.stats.built and not c.stats.persisted and c.mode == "memory"
    np.testing.assert_array_equal(c.images.numpy(), _expected(root, paths))
    # above the memory budget it still maps a (temporary, unshared) file instead of failing
    big = _load(root, paths, blocker / "cache", max_memory_bytes=1)
    assert big.mode == "mmap" and big.path is None and big.stats.resident_bytes == 0
    assert torch.equal(big.images, c.images)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_cache_dir_falls_back_with_warning(data, tmp_path, caplog):
    root, paths = data
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with caplog.at_level(logging.WARNING, logger="rsdml.data.cache"):
            c = _load(root, paths, ro)
    finally:
        ro.chmod(0o700)
    assert "not writable" in caplog.text and c.path is None
    np.testing.assert_array_equal(c.images.numpy(), _expected(root, paths))


def test_write_failure_falls_back_and_leaves_no_temp_file(data, tmp_path, caplog, monkeypatch):
    root, paths = data

    def disk_full(fd, data, offset):
        raise cache_mod._WriteFailed("No space left on device")

    monkeypatch.setattr(cache_mod, "_pwrite_all", disk_full)
    with caplog.at_level(logging.WARNING, logger="rsdml.data.cache"):
        c = _load(root, paths, tmp_path / "cache", mode="mmap")
    assert "could not write" in caplog.text and c.path is None
    np.testing.assert_array_equal(c.images.numpy(), _expected(root, paths))
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]


def test_decode_error_propagates_and_leaves_nothing(data, tmp_path, monkeypatch):
    root, paths = data
    real = imageio.read_resized

    def broken(path, size):
        if str(path).endswith("img07.png"):
            raise RsdmlError(f"cannot decode {path}")
        return real(path, size)

    monkeypatch.setattr(imageio, "read_resized", broken)
    with pytest.raises(RsdmlError, match="img07"):
        _load(root, paths, tmp_path / "cache", mode="mmap")
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".lock"]


def test_stale_temp_file_is_removed(data, tmp_path):
    root, paths = data
    c = _load(root, paths, tmp_path / "cache")
    c.path.unlink()
    stale = c.path.with_name(c.path.name + ".tmp.999.dead")
    stale.write_bytes(b"half written")
    again = _load(root, paths, tmp_path / "cache")
    assert again.stats.built and not stale.exists()


def test_user_errors(data, tmp_path):
    root, paths = data
    with pytest.raises(RsdmlError, match="mode"):
        _load(root, paths, tmp_path / "c", mode="disk")
    with pytest.raises(RsdmlError, match="missing.png"):
        _load(root, paths + ["class0/missing.png"], tmp_path / "c")


def test_empty_file_list(tmp_path):
    c = load_image_cache(tmp_path, [], SIZE, cache_dir=tmp_path / "c", progress=False)
    assert c.images.shape == (0, 3, SIZE, SIZE) and len(c) == 0 and c.path is None


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RSDML_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("RSDML_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "rsdml"


def test_valid_cache_in_unwritable_folder_is_used(data, tmp_path, monkeypatch, caplog, decodes):
    root, paths = data
    first = _load(root, paths, tmp_path / "cache")
    decodes.clear()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)  # as if the folder had become read-only
    monkeypatch.setattr(cache_mod.os, "open", refuse)
    with caplog.at_level(logging.WARNING, logger="rsdml.data.cache"):
        again = _load(root, paths, tmp_path / "cache")
    assert not again.stats.built and not decodes and not caplog.text
    assert torch.equal(again.images, first.images)


def test_an_image_that_fails_to_decode_is_reported_with_all_others(data, tmp_path, write_image):
    """Damage inside compressed data (which the fast scan cannot see) stops the build with
    every such file named, and leaves no cache file behind."""
    from rsdml.data.cache import UndecodableImagesError

    root, paths = data
    write_image(root / "bad1.jpg", "damaged_jpeg")
    write_image(root / "bad2.jpg", "damaged_jpeg", seed=1)
    cache_dir = tmp_path / "c"
    with pytest.raises(UndecodableImagesError) as e:
        _load(root, [*paths, "bad1.jpg", "bad2.jpg"], cache_dir)
    assert e.value.paths == ["bad1.jpg", "bad2.jpg"] and "cannot be decoded" in str(e.value)
    assert [p.suffix for p in cache_dir.iterdir()] == [".lock"]  # no cache file, no temp file
