"""The synthetic aerial-scene generator behind `rsdml demo`."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rsdml.data.synthetic import SCENES, make_synthetic_scenes, render_scene
from rsdml.errors import RsdmlError


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


def test_default_is_a_demo_sized_set():
    defaults = inspect.signature(make_synthetic_scenes).parameters
    assert 6 <= defaults["n_classes"].default <= len(SCENES) <= 10


@pytest.mark.parametrize("n_classes", [6, len(SCENES)])
def test_folder_layout_and_images(tmp_path, n_classes):
    names = make_synthetic_scenes(tmp_path, n_classes=n_classes, per_class=3, size=40, seed=1)
    assert names == sorted(names) and len(set(names)) == n_classes
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    for name in names:
        files = sorted((tmp_path / name).iterdir())
        assert len(files) == 3 and all(f.suffix == ".png" for f in files)
        with Image.open(files[0]) as im:
            assert im.mode == "RGB" and im.size == (40, 40)


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for root, seed in ((a, 3), (b, 3), (c, 4)):
        make_synthetic_scenes(root, n_classes=6, per_class=2, size=24, seed=seed)
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert len(ha) == 12 and ha == hb
    assert ha.keys() == hc.keys()
    assert all(ha[k] != hc[k] for k in ha)


def test_more_images_per_class_only_appends(tmp_path):
    make_synthetic_scenes(tmp_path / "few", n_classes=6, per_class=2, size=24)
    make_synthetic_scenes(tmp_path / "many", n_classes=6, per_class=4, size=24)
    few, many = _hashes(tmp_path / "few"), _hashes(tmp_path / "many")
    assert len(many) == 24 and all(many[k] == v for k, v in few.items())


@pytest.mark.parametrize("name", list(SCENES))
def test_every_scene_renders_a_varied_image(name):
    img = render_scene(name, seed=0, index=0, size=32)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert img.std() > 5  # not a flat fill
    assert not np.array_equal(img, render_scene(name, seed=0, index=1, size=32))


@pytest.mark.parametrize(
    "kwargs", [{"n_classes": 1}, {"n_classes": len(SCENES) + 1}, {"per_class": 0}, {"size": 8}]
)
def test_bad_arguments_are_user_errors(tmp_path, kwargs):
    with pytest.raises(RsdmlError):
        make_synthetic_scenes(tmp_path, **kwargs)


def test_classes_differ_in_colour_statistics_but_not_trivially():
    """Nearest-centroid on per-image colour mean/std beats chance (the generator is not
    degenerate) yet stays far from perfect (layout and texture must be learnt)."""
    names, per = list(SCENES), 20
    images = np.stack([render_scene(n, 0, i, 32) for n in names for i in range(per)])
    x = images.astype(np.float32) / 255.0
    labels = np.repeat(np.arange(len(names)), per)
    feats = np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)
    train = np.arange(len(labels)) % per < per // 2
    mu, sd = feats[train].mean(0), feats[train].std(0)
    feats = (feats - mu) / sd
    centroids = np.stack([feats[train & (labels == c)].mean(0) for c in range(len(names))])
    pred = ((feats[~train, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    acc = (pred == labels[~train]).mean()
    chance = 1.0 / len(names)
    assert 2 * chance < acc < 0.9, acc  # measured: 0.43 with 10 classes
