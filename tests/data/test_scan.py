"""Folder discovery and the validation pass of rsdml.data.scan, one test per case."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rsdml.data.imageio import read_rgb
from rsdml.data.scan import BAD_IMAGE_KINDS, ScanResult, scan_image_folder
from rsdml.errors import DatasetNotFoundError, RsdmlError

LOGGER = "rsdml.data.scan"
AID = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "AID"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelname == "WARNING"]


def _folder(root: Path, write_image, spec: dict[str, int], kind: str = "png") -> Path:
    for cls, n in spec.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_image(root / cls / f"{i:03d}.{kind}", kind, seed=i)
    return root


def test_messy_folder_keeps_exactly_the_good_images(messy_folder, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = scan_image_folder(messy_folder.root, progress=False)
    assert isinstance(r, ScanResult) and r.root == messy_folder.root
    assert r.classes == messy_folder.classes == ["Beach", "Forest", "Port"]
    assert r.paths == messy_folder.paths
    assert r.labels.dtype == np.int64
    assert [r.classes[i] for i in r.labels] == [p.split("/")[0] for p in r.paths]
    assert sorted(p for k in BAD_IMAGE_KINDS for p in r.problems.get(k, [])) == sorted(
        messy_folder.corrupt
    )
    assert r.problems["hidden"] == sorted(messy_folder.hidden)
    assert r.problems["not_image"] == sorted(messy_folder.not_image)
    assert r.problems["not_in_class"] == messy_folder.not_in_class
    assert r.problems["empty_class"] == messy_folder.empty_classes
    msgs = _warnings(caplog)
    assert len(msgs) == 3  # ignored files, unusable images, dropped classes: once each
    for path in r.paths:  # every kept image decodes
        assert read_rgb(r.root / path).shape[2] == 3


def test_empty_class_is_dropped_with_a_warning(tmp_path, write_image, caplog) -> None:
    root = _folder(tmp_path / "d", write_image, {"A": 2, "B": 2})
    (root / "Aa_empty").mkdir()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = scan_image_folder(root, progress=False)
    assert r.classes == ["A", "B"] and r.labels.tolist() == [0, 0, 1, 1]
    assert r.problems == {"empty_class": ["Aa_empty"]}
    assert any("1 class folder" in m and "Aa_empty" in m for m in _warnings(caplog))


def test_empty_class_is_an_error_when_strict(tmp_path, write_image) -> None:
    root = _folder(tmp_path / "d", write_image, {"A": 2, "B": 2})
    (root / "Empty").mkdir()
    with pytest.raises(RsdmlError, match=r"Empty.*--strict"):
        scan_image_folder(root, strict=True, progress=False)


def test_hidden_and_system_files_are_ignored_and_counted(tmp_path, write_image, caplog) -> None:
    root = _folder(tmp_path / "d", write_image, {"A": 2})
    for rel in ["A/.DS_Store", "A/Thumbs.db", "A/._000.png", "A/info.txt", ".hidden_dir/x.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = scan_image_folder(root, progress=False)
    assert r.paths == ["A/000.png", "A/001.png"]
    assert r.problems["hidden"] == [".hidden_dir", "A/.DS_Store", "A/._000.png"]
    assert r.problems["not_image"] == ["A/Thumbs.db", "A/info.txt"]
    msgs = _warnings(caplog)
    assert len(msgs) == 1 and "ignored 5 hidden or non-image file(s)" in msgs[0]
    assert "Thumbs.db" in msgs[0]


def test_missing_folder(tmp_path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"nope does not exist; pass --data"):
        scan_image_folder(tmp_path / "nope", progress=False)


def test_root_is_a_file(tmp_path) -> None:
    (tmp_path / "f.zip").write_bytes(b"PK")
    with pytest.raises(DatasetNotFoundError, match="is a file, not a folder"):
        scan_image_folder(tmp_path / "f.zip", progress=False)


def test_empty_folder(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"d is empty; put each class"):
        scan_image_folder(tmp_path / "d", progress=False)


def test_files_but_no_class_subfolders(tmp_path, write_image) -> None:
    write_image(tmp_path / "d" / "a.jpg", "jpeg")
    write_image(tmp_path / "d" / "b.jpg", "jpeg")
    with pytest.raises(DatasetNotFoundError, match=r"2 file\(s\) but no class sub-folders"):
        scan_image_folder(tmp_path / "d", progress=False)


def test_only_hidden_entries(tmp_path) -> None:
    (tmp_path / "d" / ".git").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="only hidden files"):
        scan_image_folder(tmp_path / "d", progress=False)


def test_class_folders_without_any_image(tmp_path) -> None:
    for cls in ("A", "B"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        (tmp_path / "d" / cls / "notes.txt").write_text("x")
    with pytest.raises(DatasetNotFoundError, match=r"2 class folder\(s\).*hold no image files"):
        scan_image_folder(tmp_path / "d", progress=False)


def test_mixed_case_extensions_count(tmp_path, write_image) -> None:
    names = ["a.JPG", "b.Jpeg", "c.PNG", "d.Tif", "e.TIFF", "f.jpg"]
    kinds = ["jpeg", "jpeg", "png", "tiff16", "tiff16", "jpeg"]
    for name, kind in zip(names, kinds):
        write_image(tmp_path / "d" / "C" / name, kind)
    r = scan_image_folder(tmp_path / "d", progress=False)
    assert r.paths == [f"C/{n}" for n in sorted(names)] and r.problems == {}


def test_corrupt_images_are_skipped_with_one_warning(tmp_path, write_image, caplog) -> None:
    root = _folder(tmp_path / "d", write_image, {"A": 2, "B": 2})
    for i in range(7):
        write_image(root / "A" / f"bad{i}.jpg", "truncated_jpeg" if i % 2 else "random")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        r = scan_image_folder(root, progress=False)
    assert r.paths == ["A/000.png", "A/001.png", "B/000.png", "B/001.png"]
    assert r.problems["corrupt"] == [f"A/bad{i}.jpg" for i in range(7)]
    (msg,) = _warnings(caplog)
    assert "skipping 7 unusable image(s)" in msg and "(+2 more)" in msg
    assert "A/bad1.jpg (corrupt: truncated JPEG" in msg


def test_corrupt_images_are_an_error_when_strict(tmp_path, write_image) -> None:
    root = _folder(tmp_path / "d", write_image, {"A": 2})
    write_image(root / "A" / "bad.jpg", "truncated_jpeg")
    with pytest.raises(RsdmlError, match=r"1 unusable image\(s\).*A/bad\.jpg.*without --strict"):
        scan_image_folder(root, strict=True, progress=False)


def test_class_whose_images_are_all_corrupt_is_dropped(tmp_path, write_image) -> None:
    root = _folder(tmp_path / "d", write_image, {"A": 2})
    write_image(root / "B" / "bad.jpg", "random")
    r = scan_image_folder(root, progress=False)
    assert r.classes == ["A"] and r.problems["empty_class"] == ["B"]


def test_check_false_skips_the_validation_pass(tmp_path, write_image) -> None:
    root = _folder(tmp_path / "d", write_image, {"A": 1})
    write_image(root / "A" / "bad.jpg", "random")
    r = scan_image_folder(root, check=False, progress=False)
    assert r.paths == ["A/000.png", "A/bad.jpg"] and r.problems == {}


def test_full_decode_finds_damage_inside_compressed_data(tmp_path, write_image) -> None:
    import tifffile

    root = _folder(tmp_path / "d", write_image, {"A": 2})
    data = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    path = root / "A" / "z.tif"
    tifffile.imwrite(path, data, compression="zlib")
    with tifffile.TiffFile(path) as tf:
        start = tf.pages[0].dataoffsets[0] + tf.pages[0].databytecounts[0] // 2
    raw = bytearray(path.read_bytes())
    raw[start : start + 8] = b"\xff" * 8  # headers and sizes intact, zlib stream broken
    path.write_bytes(bytes(raw))
    fast = scan_image_folder(root, progress=False)
    assert "A/z.tif" in fast.paths  # the documented limit of the fast check
    full = scan_image_folder(root, progress=False, full_decode=True)
    assert full.paths == ["A/000.png", "A/001.png"]
    assert full.problems == {"corrupt": ["A/z.tif"]}


def test_too_few_images_per_class_names_the_class(tmp_path, write_image) -> None:
    root = _folder(tmp_path / "d", write_image, {"A": 3, "Lonely": 1})
    assert scan_image_folder(root, progress=False, min_per_class=1).classes == ["A", "Lonely"]
    with pytest.raises(RsdmlError, match=r"fewer than 2 usable images: Lonely \(1\)"):
        scan_image_folder(root, progress=False, min_per_class=2)


def test_decompression_bomb_is_skipped_as_too_large(tmp_path, write_image) -> None:
    root = _folder(tmp_path / "d", write_image, {"A": 2})
    write_image(root / "A" / "z.tif", "tiff16")  # 12 x 16 = 192 pixels, like the PNGs
    from PIL import Image

    Image.new("RGB", (40, 40)).save(root / "A" / "big.png")
    r = scan_image_folder(root, progress=False, max_pixels=200)
    assert r.problems == {"too_large": ["A/big.png"]}
    assert "A/z.tif" in r.paths


def test_sort_order_is_class_then_name(tmp_path, write_image) -> None:
    # string order would put "A B/x" before "A/x" (' ' < '/'); classes sort first
    root = _folder(tmp_path / "d", write_image, {"A": 1, "A B": 1, "b": 1, "B": 1})
    write_image(root / "A" / "sub" / "deep.png", "png")
    r = scan_image_folder(root, progress=False)
    assert r.classes == ["A", "A B", "B", "b"]
    assert r.paths == ["A/000.png", "A/sub/deep.png", "A B/000.png", "B/000.png", "b/000.png"]
    assert r.labels.tolist() == [0, 0, 1, 2, 3]


def test_symlink_loop_does_not_hang(tmp_path, write_image) -> None:
    root = _folder(tmp_path / "d", write_image, {"A": 1})
    try:
        os.symlink(root / "A", root / "A" / "loop")
    except OSError:
        pytest.skip("symlinks not supported here")
    r = scan_image_folder(root, progress=False)
    assert r.paths[0] == "A/000.png" and len(r.paths) <= 2


def test_links_back_to_the_root_or_to_another_class_are_not_read_again(tmp_path, write_image,
                                                                       caplog) -> None:
    root = _folder(tmp_path / "d", write_image, {"A": 2, "B": 3})
    try:
        os.symlink(root, root / "A" / "back-to-root")
        os.symlink(root / "B", root / "A" / "b-again")
        os.symlink(root / "A", root / "A2")  # a class folder that is another class's folder
    except OSError:
        pytest.skip("symlinks not supported here")
    with caplog.at_level(logging.WARNING):
        r = scan_image_folder(root, progress=False)
    assert r.paths == ["A/000.png", "A/001.png", "B/000.png", "B/001.png", "B/002.png"]
    assert r.classes == ["A", "B"] and r.labels.tolist() == [0, 0, 1, 1, 1]
    assert "not reading 3 linked folder(s) again" in caplog.text


def test_damage_inside_a_jpeg_passes_the_fast_check_and_fails_to_decode(tmp_path,
                                                                        write_image) -> None:
    """The fixture the cache and training tests use for such files behaves as they assume."""
    from rsdml.data.imageio import ImageReadError

    bad = write_image(tmp_path / "bad.jpg", "damaged_jpeg")
    root = _folder(tmp_path / "d", write_image, {"A": 1})
    (root / "A" / "bad.jpg").write_bytes(bad.read_bytes())
    assert "A/bad.jpg" in scan_image_folder(root, progress=False).paths
    with pytest.raises(ImageReadError):
        read_rgb(bad)


def test_thread_pool_gives_the_same_result(tmp_path, write_image) -> None:
    root = _folder(tmp_path / "d", write_image, {"A": 40, "B": 40}, kind="jpeg")
    write_image(root / "A" / "bad.jpg", "truncated_jpeg")
    one = scan_image_folder(root, progress=False, workers=1)
    many = scan_image_folder(root, progress=False, workers=4)
    assert one.paths == many.paths and one.problems == many.problems == {"corrupt": ["A/bad.jpg"]}


def test_progress_lines_when_not_a_terminal(tmp_path, write_image, capsys, monkeypatch) -> None:
    import itertools

    import rsdml.progress

    root = _folder(tmp_path / "d", write_image, {"A": 10})
    clock = itertools.count(0, 10)  # a slow scan: 10 s per image, so plain lines are due
    monkeypatch.setattr(rsdml.progress.time, "monotonic", lambda: next(clock))
    scan_image_folder(root, progress=True)
    assert "checking images: 10/10" in capsys.readouterr().err
    scan_image_folder(root, progress=False)
    assert capsys.readouterr().err == ""


_BAD = st.one_of(
    st.binary(max_size=400),
    st.tuples(
        st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"GIF89a"]),
        st.binary(max_size=400),
    ).map(lambda t: t[0] + t[1]),
)


# write_image is a stateless function, so sharing it between examples is safe
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    bad=st.lists(st.tuples(_BAD, st.sampled_from([".jpg", ".png", ".tif"])), max_size=6),
    cuts=st.lists(st.tuples(st.sampled_from(["jpeg", "png", "tiff16"]), st.floats(0, 0.95)),
                  max_size=3),
)
def test_random_bytes_never_crash_the_scan(write_image, bad, cuts) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        good = []
        for cls in ("A", "B"):
            for i in range(2):
                write_image(root / cls / f"good{i}.png", "png", seed=i)
                good.append(f"{cls}/good{i}.png")
        suspects = []
        for i, (data, ext) in enumerate(bad):
            rel = f"{'AB'[i % 2]}/bad{i}{ext}"
            (root / rel).write_bytes(data)
            suspects.append(rel)
        for i, (kind, frac) in enumerate(cuts):
            ext = {"jpeg": ".jpg", "png": ".png", "tiff16": ".tif"}[kind]
            full = write_image(root / "A" / f"cut{i}{ext}", kind, seed=i)
            data = full.read_bytes()
            full.write_bytes(data[: int(len(data) * frac)])
            suspects.append(f"A/cut{i}{ext}")
        r = scan_image_folder(root, progress=False)
        reported = {p for k in BAD_IMAGE_KINDS for p in r.problems.get(k, [])}
        assert set(good) <= set(r.paths)
        for rel in suspects:
            assert (rel in reported) != (rel in r.paths)
        for rel in set(r.paths) - set(good):  # a suspect the check kept must really decode
            read_rgb(root / rel)


@pytest.mark.aid
def test_scan_aid() -> None:
    if not AID.is_dir():
        pytest.skip(f"real data not found at {AID}")
    r = scan_image_folder(AID, progress=False)
    assert len(r.classes) == 30 and len(r.paths) == 10_000 and r.problems == {}
    assert np.bincount(r.labels).min() >= 200
