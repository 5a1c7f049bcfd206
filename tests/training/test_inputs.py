"""The input side of training and embedding: the batch loop and where the cache lives."""

from __future__ import annotations

import numpy as np
import torch

import rsdml.training.inputs as inputs_mod
from rsdml.training.inputs import FeatureInputs, device_cache_fits, embed_batches, uses_channels_last


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
