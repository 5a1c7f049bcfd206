"""The input side of training and embedding: the batch loop and where the cache lives."""

from __future__ import annotations

import numpy as np
import torch

import rsdml.training.inputs as inputs_mod
from rsdml.training.inputs import (
    FeatureInputs,
    device_cache_fits,
    embed_batches,
    uses_channels_last,
)


def test_embed_batches_copies_back_in_groups_without_changing_rows(monkeypatch):
    """More batches than one copy-back group, and a last group and batch that are partial."""
    monkeypatch.setattr(inputs_mod, "_EMBED_COPY_EVERY", 3)
    feats = torch.randn(23, 5)
    source = FeatureInputs(feats, torch.device("cpu"))
    w = torch.randn(5, 4)
    index = torch.randperm(23)
    out = embed_batches(lambda x: x @ w, source, index, 2, None, False, 4)
    assert out.shape == (23, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, (feats[index] @ w).numpy(), rtol=1e-6, atol=1e-6)
    empty = embed_batches(lambda x: x @ w, source, torch.arange(0), 2, None, False, 4)
    assert empty.shape == (0, 4)


def test_device_cache_is_for_cuda_only_and_can_be_turned_off():
    class Cache:
        nbytes = 1

    cpu = torch.device("cpu")
    assert not device_cache_fits(Cache(), cpu, "auto")
    assert not device_cache_fits(Cache(), torch.device("cuda"), "off")


def test_channels_last_on_cpu_and_cuda():
    assert uses_channels_last(torch.device("cpu"))
    assert uses_channels_last(torch.device("cuda"))
    assert not uses_channels_last(torch.device("meta"))


def test_device_resident_images_give_the_same_batches_as_host_rows(tiny_scenes, tmp_path):
    """The resident path (one index_select on the device's copy of the cache) feeds exactly the
    rows, augmentation draws and normalisation of the host path; on a CPU the copy is free, so
    the wiring is tested here and only the copy's destination differs on CUDA."""
    from rsdml.data.augment import TrainAugment
    from rsdml.data.cache import load_image_cache
    from rsdml.data.scan import scan_image_folder
    from rsdml.training.inputs import ImageInputs

    paths = scan_image_folder(tiny_scenes, progress=False).paths
    cache = load_image_cache(tiny_scenes, paths, 32, cache_dir=tmp_path, progress=False)
    cpu = torch.device("cpu")
    host = ImageInputs(cache, cpu, TrainAugment())
    resident = ImageInputs(cache, cpu, TrainAugment(), on_device=True)
    assert resident.on_device and not host.on_device
    index = torch.tensor([5, 0, 63, 17, 17])
    assert torch.equal(host.eval(index), resident.eval(index))
    a = host.train(index, torch.Generator().manual_seed(3))
    b = resident.train(index, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, host.eval(index))
