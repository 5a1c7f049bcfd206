"""Fast mode's trunk-feature cache keys on the files' content identity (issue 25, defect 4)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from rsdml.config import TrainConfig
from rsdml.data.identity import content_identity
from rsdml.data.preprocess import Preprocess
from rsdml.data.split import Split
from rsdml.training.frozen import feature_key


def _folder(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(p)
        paths.append(p.name)
    return paths


def test_an_image_replaced_in_place_changes_the_feature_key(tmp_path):
    paths = _folder(tmp_path)
    cfg = TrainConfig(data=str(tmp_path), freeze_backbone=True)
    split = Split("transductive", ["a"], paths, np.zeros(3, np.int64), np.full(3, "test"))
    before = feature_key(cfg, split, Preprocess(32))
    assert feature_key(cfg, split, Preprocess(32)) == before
    target = tmp_path / paths[1]
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), np.uint8)).save(target)
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert feature_key(cfg, split, Preprocess(32)) != before


def test_content_identity_follows_size_and_mtime(tmp_path):
    paths = _folder(tmp_path)
    a = content_identity(tmp_path, paths)
    assert a == content_identity(tmp_path, paths)
    f = tmp_path / paths[0]
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert content_identity(tmp_path, paths) != a
