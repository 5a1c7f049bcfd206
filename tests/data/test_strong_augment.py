"""The weak and strong views (rsdml.data.strong_augment): reproducible per (seed, step), the
colour operations equal to torchvision's per-sample functional ops, the geometry exact where
it should be, and the draws distributed as specified."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import rsdml.data.strong_augment as sa
from rsdml.data.augment import normalize
from rsdml.data.bands import BandNormalize
from rsdml.data.strong_augment import RGB_OPS, ViewAugment, color_op, posterize_bits


def _images(n: int = 16, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("strong", [False, True])
def test_views_are_reproducible_per_seed_and_step(strong):
    x, aug = _images(), ViewAugment(strong)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def _symmetries(img: torch.Tensor) -> list[torch.Tensor]:
    out = []
    for flipped in (img, img.flip(-1)):
        out += [torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4)]
    return out


def test_weak_view_without_shift_is_one_of_the_eight_symmetries_uniformly(monkeypatch):
    monkeypatch.setattr(sa, "MAX_SHIFT", 0.0)
    x = _images(n=2000, size=4, seed=1)
    y = ViewAugment(False)(x, torch.Generator().manual_seed(0))
    counts = torch.zeros(8)
    for img, out in zip(normalize(x), y):
        hits = [k for k, s in enumerate(_symmetries(img)) if torch.allclose(s, out, atol=1e-5)]
        assert hits, "not a symmetry of the square"
        counts[hits[0]] += 1
    # each of the 8 with probability 1/8 (2000 draws: a std of about 0.0074)
    assert (counts / counts.sum() - 1 / 8).abs().max() < 0.03


def test_weak_shift_moves_whole_pixels_with_reflected_borders():
    x = _images(n=64, size=16, seed=2)
    y = ViewAugment(False)(x, torch.Generator().manual_seed(3))
    n = normalize(x)
    moved = 0
    for img, out in zip(n, y):
        # every output value is an input value (to float rounding): no interpolation, no fill
        gap = (out.flatten()[:, None] - img.flatten()[None]).abs().min(dim=1).values
        assert gap.max() < 1e-4
        moved += not any(torch.allclose(s, out, atol=1e-5) for s in _symmetries(img))
    assert moved > 32  # shifts of up to 2 px happened in most of them


def _reference_color(name: str, img: torch.Tensor, m: float) -> torch.Tensor:
    """torchvision's functional op on one image, parameters from the magnitude as specified."""
    f = 1.0 + (2.0 * m - 1.0) * 0.9
    if name == "identity":
        return img
    if name == "autocontrast":
        return TF.autocontrast(img)
    if name == "equalize":
        return TF.equalize(img)
    if name == "brightness":
        return TF.adjust_brightness(img, f)
    if name == "color":
        return TF.adjust_saturation(img, f)
    if name == "contrast":
        return TF.adjust_contrast(img, f)
    if name == "sharpness":
        return TF.adjust_sharpness(img, f)
    if name == "posterize":
        bits = int(posterize_bits(torch.tensor([m]))[0])
        return TF.posterize((img * 255).round().to(torch.uint8), bits).float() / 255
    if name == "solarize":
        return TF.solarize(img, m)
    raise AssertionError(name)


@pytest.mark.parametrize("name", [n for n in RGB_OPS if n not in sa.GEOMETRIC])
def test_colour_operations_equal_torchvision_per_sample(name):
    x = _images(n=12, size=8, seed=4).float() / 255
    m = torch.rand(12, generator=torch.Generator().manual_seed(5))
    batched = color_op(name, x.clone(), m)
    ref = torch.stack([_reference_color(name, img, float(mi)) for img, mi in zip(x, m)])
    torch.testing.assert_close(batched, ref, atol=2e-6, rtol=0)


def test_strong_view_draws_two_ops_uniformly_and_cutout_sizes():
    x = _images(n=7000, size=4)
    u, _ = ViewAugment(True).draw(x, torch.Generator().manual_seed(0))
    for col in sa._OP:
        ops = (u[:, col] * len(RGB_OPS)).long()
        freq = torch.bincount(ops, minlength=len(RGB_OPS)).float() / len(ops)
        assert (freq - 1 / len(RGB_OPS)).abs().max() < 0.015
    assert float(u[:, sa._CUT_SIZE].min()) >= 0.0 and float(u[:, sa._CUT_SIZE].max()) < 1.0


def test_cutout_zeroes_a_square_of_the_drawn_side():
    x = torch.ones(1, 3, 20, 20)
    u = torch.zeros(1, sa._N_DRAWS)
    u[0, sa._CUT_X] = u[0, sa._CUT_Y] = 0.5
    u[0, sa._CUT_SIZE] = 1.0  # side = MAX_CUTOUT = half the image: 10 x 10 pixels
    out = sa._cutout_(x, u)
    assert int((out[0, 0] == 0).sum()) == 100 and torch.equal(out[0, 0], out[0, 1])


def test_strong_view_of_n_band_input_uses_band_operations():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 4000, (6, 5, 16, 16), generator=g, dtype=torch.int32).to(torch.uint16)
    norm = BandNormalize([2000.0] * 5, [1000.0] * 5)
    aug = ViewAugment(True, norm)
    assert aug.ops == sa.BAND_OPS
    a = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == (6, 5, 16, 16) and torch.isfinite(a).all()
    assert torch.equal(a, aug(x, torch.Generator().manual_seed(1)))
    weak = ViewAugment(False, norm)(x, torch.Generator().manual_seed(1))
    assert weak.abs().max() < 2.5  # normalised raw values (0..4000 around 2000 / 1000)
