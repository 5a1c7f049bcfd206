"""The cold start's features are fast-mode training's: the loop's first ``train --labels``
reuses the views ``rsdml suggest`` built, and decodes nothing again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from clihelp import run_cli

from rsdml.errors import RsdmlError
from rsdml.training.archive_vectors import trunk_vectors


def test_first_training_round_reuses_the_cold_start_views(tiny_scenes, tmp_path, capsys,
                                                          monkeypatch):
    import rsdml.data.cache as image_cache
    import rsdml.training.views as views

    cache = tmp_path / "cache"
    monkeypatch.setenv("RSDML_CACHE", str(cache))
    vec = trunk_vectors(tiny_scenes, device="cpu", quiet=True)
    assert vec.source == "trunk:efficientnet_lite0@150"  # fast mode's size on a CPU
    assert vec.vectors.shape == (64, 1280)
    np.testing.assert_allclose(np.linalg.norm(vec.vectors, axis=1), 1.0, rtol=1e-5)
    assert len(list(cache.glob(views.VIEWS_GLOB))) == 1

    def no_rebuild(*args, **kwargs):
        raise AssertionError("training built a cache that the cold start had built")

    monkeypatch.setattr(views, "_build", no_rebuild)
    monkeypatch.setattr(image_cache._Build, "_decode_all", no_rebuild)
    labels = tmp_path / "labels.csv"
    picks = {p: p.split("/")[0] for p in vec.paths[::16]}  # one image of each class
    labels.write_text("path,class\n" + "".join(f"{p},{c}\n" for p, c in picks.items()))
    code, _, err = run_cli(["train", "--data", str(tiny_scenes), "--labels", str(labels),
                            "--out", str(tmp_path / "run"), "--backbone", "efficientnet_lite0",
                            "--device", "cpu", "--epochs", "1", "--quiet"], capsys)
    assert code == 0, err
    assert len(list(cache.glob(views.VIEWS_GLOB))) == 1
    assert len(list(cache.glob("images-*.rsdml-images"))) == 1
    # one label a class: the run took the fewest labels' terms, and config.yaml says so
    import yaml

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["method"] == "hr-match"
    assert (saved["propagation_margin"], saved["instance_weight"]) == (0.75, 2.0)


def test_a_size_fast_mode_cannot_use_is_refused_before_any_work(tiny_scenes, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setenv("RSDML_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RsdmlError, match="image"):
        trunk_vectors(tiny_scenes, image_size=8, device="cpu", quiet=True)
    assert not list(Path(tmp_path / "cache").glob("views-*"))


def test_where_training_would_fine_tune_the_cold_start_builds_no_views(tiny_scenes, tmp_path,
                                                                       monkeypatch):
    """On a GPU `rsdml train` fine-tunes by default and would never read the views: the cold
    start then caches the plain trunk features only."""
    import rsdml.training.runner as runner

    cache = tmp_path / "cache"
    monkeypatch.setenv("RSDML_CACHE", str(cache))
    monkeypatch.setattr(runner, "default_fast_mode", lambda cfg: False)
    plain = trunk_vectors(tiny_scenes, device="cpu", quiet=True)
    assert plain.vectors.shape == (64, 1280)
    assert not list(cache.glob("views-*")) and len(list(cache.glob("features-*.pt"))) == 1
    monkeypatch.undo()  # fast mode again: the views' first is the same feature, in float16
    monkeypatch.setenv("RSDML_CACHE", str(tmp_path / "cache2"))
    viewed = trunk_vectors(tiny_scenes, device="cpu", quiet=True)
    assert (plain.vectors * viewed.vectors).sum(axis=1).min() > 0.9999
