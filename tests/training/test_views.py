"""Cached views for fast mode: the symmetries, the trunk cut, the cache (seeded, keyed by its
plan, resumable, refused when it cannot fit) and the inputs that draw from it."""

from __future__ import annotations

import json

import pytest
import torch

import rsdml.training.views as views
from rsdml.data.activation_views import strong_activation, symmetry
from rsdml.data.cache import CacheStats, ImageCache
from rsdml.errors import RsdmlError
from rsdml.models.embedding import EmbeddingNet
from rsdml.models.resnet import resnet18
from rsdml.models.stages import TrunkCut, trunk_stages
from rsdml.training.frozen import compute_features
from rsdml.training.inputs import FeatureInputs
from rsdml.training.views import ViewPlan, view_features


def test_symmetries_are_the_eight_distinct_elements_of_the_group():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    imgs = [symmetry(x, j) for j in range(8)]
    assert torch.equal(imgs[0], x)
    assert len({tuple(i.flatten().tolist()) for i in imgs}) == 8
    # closed under composition: any symmetry of any symmetry is one of the eight
    seen = {tuple(i.flatten().tolist()) for i in imgs}
    for i in imgs:
        for j in range(8):
            assert tuple(symmetry(i, j).flatten().tolist()) in seen


@pytest.mark.parametrize("top", [0, 1, 3, 5, 99])
def test_a_cut_trunk_composes_to_the_trunk(top):
    trunk = resnet18(False).eval()
    x = torch.randn(2, 3, 64, 64)
    cut = TrunkCut(trunk, top)
    with torch.no_grad():
        assert torch.allclose(cut.top(cut.bottom(x)), trunk(x), atol=1e-5)
    assert cut.at_pixels == (top >= len(trunk_stages(trunk)))


def test_strong_activation_views_are_seeded_and_differ_from_the_input():
    a = torch.randn(4, 8, 6, 6)
    one = strong_activation(a, torch.Generator().manual_seed(1))
    two = strong_activation(a, torch.Generator().manual_seed(1))
    other = strong_activation(a, torch.Generator().manual_seed(2))
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert one.shape == a.shape and not torch.allclose(one, a)


def _model() -> EmbeddingNet:
    torch.manual_seed(0)
    return EmbeddingNet(resnet18(False), embedding_dim=8).eval()


def _cache(n: int = 10, size: int = 32) -> ImageCache:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return ImageCache(images, size, None, CacheStats("memory", images.numel(), 0, True, False, 0, 0, 0))


def _features(tmp_path, plan, key="k", model=None, cache=None, limit=2**30):
    from rsdml.data.augment import normalize

    return view_features(key, tmp_path, plan, model or _model(), cache or _cache(),
                         torch.device("cpu"), normalize, None, limit, show_progress=False)


@pytest.mark.parametrize("stages", [0, 1])
def test_view_zero_is_the_plain_trunk_feature_and_a_rebuild_is_identical(tmp_path, stages):
    plan = ViewPlan(weak=3, strong=2, stages=stages)
    model, cache = _model(), _cache()
    feats = _features(tmp_path, plan, model=model, cache=cache)
    assert feats.shape == (10, 5, 512) and feats.dtype == torch.float16
    plain = compute_features(model, cache, torch.device("cpu"), 4, show_progress=False)
    assert torch.allclose(feats[:, 0].float(), plain, rtol=1e-2, atol=1e-2)
    # views differ from each other
    assert not torch.allclose(feats[:, 1].float(), feats[:, 0].float(), atol=1e-2)
    assert not torch.allclose(feats[:, 3].float(), feats[:, 4].float(), atol=1e-2)
    rebuilt = _features(tmp_path / "other", plan, model=model, cache=cache)
    assert torch.equal(feats, rebuilt)  # seeded strong views: the same vectors


def test_the_plan_is_part_of_the_key(tmp_path):
    a = _features(tmp_path, ViewPlan(2, 1, 1))
    b = _features(tmp_path, ViewPlan(2, 2, 1))
    assert a.shape[1] == 3 and b.shape[1] == 4
    assert len(list(tmp_path.glob("views-*.npy"))) == 2


def test_an_interrupted_build_resumes_to_the_same_array(tmp_path, monkeypatch):
    plan = ViewPlan(2, 1, 1)
    cache = _cache(n=views.CHUNK * 2 + 5)
    whole = _features(tmp_path / "whole", plan, cache=cache)
    original = views._build_into

    def stop_after_first_chunks(arr, done, *a):
        on_chunk = a[-1]

        def record(c):
            on_chunk(c)
            if c == 1:
                raise KeyboardInterrupt

        return original(arr, done, *a[:-1], record)

    monkeypatch.setattr(views, "CHUNK", views.CHUNK)
    monkeypatch.setattr(views, "_build_into", stop_after_first_chunks)
    # progress is recorded every 16 chunks and at the end; record every chunk here
    monkeypatch.setattr(views, "_record_every", 1, raising=False)
    with pytest.raises(KeyboardInterrupt):
        _features(tmp_path / "cut", plan, cache=cache)
    state = next((tmp_path / "cut").glob("*.progress"))
    assert json.loads(state.read_text())["chunks"] == 1
    monkeypatch.setattr(views, "_build_into", original)
    resumed = _features(tmp_path / "cut", plan, cache=cache)
    assert torch.equal(whole, resumed)
    assert not list((tmp_path / "cut").glob("*.partial"))


def test_a_cache_the_disk_cannot_hold_is_refused_before_any_work(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10, 10, 1000))
    monkeypatch.setattr(views, "_build_into", lambda *a: pytest.fail("built anyway"))
    with pytest.raises(RsdmlError, match=r"needs .* GiB .*--view-strong"):
        _features(tmp_path, ViewPlan(8, 4, 1))


def test_a_cache_above_the_memory_limit_is_memory_mapped(tmp_path):
    feats = _features(tmp_path, ViewPlan(2, 0, 1), limit=1)
    assert isinstance(feats, torch.Tensor) and feats.shape == (10, 2, 512)


def test_feature_inputs_draw_weak_and_strong_views_and_evaluate_view_zero():
    n, v, f = 6, 5, 3
    feats = torch.arange(n * v, dtype=torch.float16).view(n, v, 1).expand(n, v, f).contiguous()
    inputs = FeatureInputs(feats, torch.device("cpu"), weak=3)
    index = torch.arange(n).repeat(20)
    g = torch.Generator().manual_seed(0)
    weak, strong = inputs.views(index, g)
    w_view = (weak[:, 0] - index * v).long()
    s_view = (strong[:, 0] - index * v).long()
    assert set(w_view.tolist()) == {0, 1, 2} and set(s_view.tolist()) == {3, 4}
    assert weak.dtype == torch.float32
    lab = (inputs.train(index, g)[:, 0] - index * v).long()
    assert set(lab.tolist()) == {0, 1, 2}  # labelled images: a random weak view
    assert torch.equal(inputs.eval(torch.arange(n))[:, 0], torch.arange(n).float() * v)
    plain = FeatureInputs(torch.randn(4, 3), torch.device("cpu"))
    assert torch.equal(plain.train(torch.arange(4), g), plain.eval(torch.arange(4)))


def test_rsdml_cache_lists_and_clears_view_caches(tmp_path):
    from rsdml.data.cache_files import cache_files, clear_cache

    _features(tmp_path, ViewPlan(2, 1, 1))
    (tmp_path / "views-x-v1w8s4c2.npy.partial").write_bytes(b"0" * 10)
    (tmp_path / "views-x-v1w8s4c2.npy.progress").write_text("{}")
    names = {f.path.name for f in cache_files(tmp_path)}
    assert any(n.startswith("views-k-") and n.endswith(".npy") for n in names)
    assert "views-x-v1w8s4c2.npy.partial" in names
    removed, _ = clear_cache(tmp_path)
    assert len(removed) == 2
    assert not list(tmp_path.glob("views-*.np*"))  # the .npy, the part and its record
