"""Batched augmentations vs the paper's per-sample torchvision pipeline.

Exactness is tested op by op against torchvision's tensor functions; the whole pipeline is
tested in distribution against ``paper_pil_transform`` on one fixed image (PIL rounds to
uint8 after every op, so only distributions, not pixels, can agree).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms._functional_tensor import _rgb2hsv

from rsdml.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TrainAugment,
    _adjust_hue,
    _color_jitter_batched,
    _color_jitter_group,
    normalize,
    paper_pil_transform,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
N_DRAWS = 2000
SIZE = 16


def _colour_image(size: int = SIZE) -> np.ndarray:
    """A smooth, saturated, asymmetric test image (H x W x 3 uint8)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    rgb = np.stack([0.2 + 0.6 * xx, 0.3 + 0.5 * yy, 0.8 - 0.6 * xx * yy], -1)
    return (rgb * 255).round().astype(np.uint8)


def _batch(img: np.ndarray, n: int) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).expand(n, -1, -1, -1).contiguous()


def _unnormalize(y: torch.Tensor) -> torch.Tensor:
    return y * STD + MEAN


def _draws(img: np.ndarray, n: int = N_DRAWS, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n outputs of the batched augmentation and n of the paper's PIL pipeline."""
    ours = TrainAugment()(_batch(img, n), torch.Generator().manual_seed(seed))
    ref_t = paper_pil_transform(img.shape[0], train=True)
    pil = Image.fromarray(img)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        ref = torch.stack([ref_t(pil) for _ in range(n)])
    return ours, ref


@pytest.fixture(scope="module")
def colour_draws() -> tuple[torch.Tensor, torch.Tensor]:
    return _draws(_colour_image())


def _features(y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-draw statistics of the colour (not grayscale) draws: channel means/stds
    (normalised units), mean HSV saturation, the saturation-weighted mean hue direction
    (cos, sin), which hue shifts rotate, and the brightest value (clamping caps it at 1)."""
    y = y[~_is_gray(y)]
    u = _unnormalize(y).clamp(min=0)
    hsv = _rgb2hsv(u.clamp(max=1))
    h, s = hsv[:, 0], hsv[:, 1]
    ang = 2 * math.pi * h
    return {
        "channel_mean": y.mean((2, 3)),
        "channel_std": y.std((2, 3)),
        "saturation": s.mean((1, 2))[:, None],
        "hue_cos": (s * torch.cos(ang)).mean((1, 2))[:, None],
        "hue_sin": (s * torch.sin(ang)).mean((1, 2))[:, None],
        "max_value": u.amax((1, 2, 3))[:, None],
    }


def _assert_same_distribution(fa: dict, fb: dict) -> None:
    """Mean and spread over draws of every statistic agree within 5 standard errors of the
    difference (sampling noise; seeds are fixed, so this is not flaky) plus an allowance for
    PIL's rounding: it truncates to uint8 after each op, lowering pixels by ~0.5/255 per op
    (~1/255 measured here), so means get 2/255 and spreads 0.5/255 (pixel units)."""
    quant = 1 / 255
    for name in fa:
        a, b = fa[name].double(), fb[name].double()
        unit = quant / min(IMAGENET_STD) if name.startswith("channel") else quant
        for j in range(a.shape[1]):
            sa, sb = a[:, j].std(), b[:, j].std()
            se_mean = math.sqrt(sa**2 / len(a) + sb**2 / len(b))
            diff = abs(a[:, j].mean() - b[:, j].mean())
            assert diff <= 5 * se_mean + 2 * unit, (name, j, float(diff), se_mean)
            se_std = math.sqrt(sa**2 / (2 * len(a)) + sb**2 / (2 * len(b)))
            assert abs(sa - sb) <= 5 * se_std + unit / 2, (name, j, float(sa), float(sb))


def test_distribution_matches_paper_pipeline(colour_draws):
    ours, ref = colour_draws
    _assert_same_distribution(_features(ours), _features(ref))


def test_distribution_test_detects_a_narrower_hue_jitter(colour_draws):
    """The statistics have the power to see the hue op: hue in +-0.2 instead of +-0.4 fails."""
    _, ref = colour_draws
    aug = TrainAugment()
    u = aug.draw(1000, torch.Generator().manual_seed(0))
    u[:, 8] = 0.25 + 0.5 * u[:, 8]  # the hue factor's uniform, squeezed to the middle half
    narrow = aug._apply_grouped(_batch(_colour_image(), 1000), u)
    with pytest.raises(AssertionError):
        _assert_same_distribution(_features(narrow), _features(ref))


def _is_gray(y: torch.Tensor) -> torch.Tensor:
    u = _unnormalize(y)
    return ((u - u[:, :1]).abs().amax((1, 2, 3)) < 1e-4)


def test_grayscale_frequency(colour_draws):
    ours, ref = colour_draws
    sd = math.sqrt(0.2 * 0.8 / N_DRAWS)
    for y in (ours, ref):
        assert abs(_is_gray(y).float().mean().item() - 0.2) < 4 * sd


def test_horizontal_flip_frequency():
    """A gray image, bright left and dark right: no colour op on a gray image reverses which
    side is brighter, so the brighter side tells whether it was flipped."""
    img = np.full((SIZE, SIZE, 3), 40, np.uint8)
    img[:, : SIZE // 2] = 200
    ours, ref = _draws(img, n=600, seed=1)
    sd = math.sqrt(0.25 / 600)
    for y in (ours, ref):
        flipped = y[..., SIZE // 2 :].mean((1, 2, 3)) > y[..., : SIZE // 2].mean((1, 2, 3))
        assert abs(flipped.float().mean().item() - 0.5) < 4 * sd


def _sequential_reference(x: torch.Tensor, order: torch.Tensor, factors: torch.Tensor):
    ops = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
    out = []
    for i in range(x.shape[0]):
        y = x[i]
        for op in order[i].tolist():
            y = ops[op](y, float(factors[i, op]))
        out.append(y)
    return torch.stack(out)


def _random_jitter_inputs(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 12, 12, generator=g)
    x[0] = 0.5  # all gray
    x[1, :, :4] = x[1, :1, :4]  # some gray pixels
    x[2, 0] = 1.0  # saturated channel
    order = torch.rand(n, 4, generator=g).argsort(1)
    factors = 0.6 + 0.8 * torch.rand(n, 4, generator=g)
    factors[:, 3] = torch.rand(n, generator=g) * 0.8 - 0.4
    return x, order, factors


def test_hue_equals_torchvision():
    x, _, factors = _random_jitter_inputs()
    ref = torch.stack([F.adjust_hue(x[i], float(factors[i, 3])) for i in range(x.shape[0])])
    torch.testing.assert_close(_adjust_hue(x, factors[:, 3]), ref, atol=1e-5, rtol=0)


def test_jitter_equals_torchvision_in_each_samples_order():
    x, order, factors = _random_jitter_inputs()
    ref = _sequential_reference(x, order, factors)
    torch.testing.assert_close(_color_jitter_batched(x, order, factors), ref, atol=1e-5, rtol=0)
    grouped = torch.cat(
        [
            _color_jitter_group(x[i : i + 1], order[i].tolist(), factors[i : i + 1])
            for i in range(x.shape[0])
        ]
    )
    torch.testing.assert_close(grouped, ref, atol=1e-5, rtol=0)


def test_jitter_order_is_a_uniform_permutation_per_sample():
    u = TrainAugment().draw(24_000, torch.Generator().manual_seed(3))
    order = TrainAugment()._params(u)[4]
    assert (order.sort(1).values == torch.arange(4)).all()
    ids = (order * torch.tensor([64, 16, 4, 1])).sum(1)
    counts = torch.unique(ids, return_counts=True)[1]
    assert counts.numel() == 24
    assert (counts - 1000).abs().max() < 4 * math.sqrt(1000)


def test_cpu_and_accelerator_paths_agree():
    aug = TrainAugment(extra=True)
    x = torch.randint(0, 256, (64, 3, 12, 12), dtype=torch.uint8)
    u = aug.draw(64, torch.Generator().manual_seed(0))
    grouped, batched = aug._apply_grouped(x, u), aug._apply_batched(x, u)
    torch.testing.assert_close(grouped, batched, atol=1e-4, rtol=0)


def test_same_seed_same_batch_other_seed_other_batch():
    aug = TrainAugment()
    x = _batch(_colour_image(), 32)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert a.dtype == torch.float32 and a.shape == x.shape and a.device == x.device
    assert x.dtype == torch.uint8 and torch.equal(x, _batch(_colour_image(), 32))  # input intact


def test_each_sample_gets_its_own_parameters():
    y = TrainAugment()(_batch(_colour_image(), 16), torch.Generator().manual_seed(0))
    flat = y.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(16) * 1e9).min() > 1e-3


@pytest.mark.parametrize("extra", [False, True])
def test_geometry_without_colour(extra):
    """Outputs are exactly the dihedral transforms allowed: identity and hflip, or all 8."""
    aug = TrainAugment(grayscale_p=0.0, jitter=0.0, extra=extra)
    img = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    n = 800
    y = aug(img.expand(n, -1, -1, -1), torch.Generator().manual_seed(0))
    base = normalize(img)[0]
    variants = []
    for k in range(4):
        r = torch.rot90(base, k, dims=(-2, -1))
        variants += [r, r.flip(-1)]
    allowed = variants if extra else [base, base.flip(-1)]
    which = torch.stack([(y - v).abs().amax((1, 2, 3)) < 1e-6 for v in allowed], 1)
    assert which.any(1).all()
    counts = which.float().argmax(1).bincount(minlength=len(allowed)).float()
    p = 1 / len(allowed)
    assert (counts - n * p).abs().max() < 4 * math.sqrt(n * p * (1 - p))


def test_normalize_equals_torchvision_and_keeps_geometry():
    img = _colour_image(10)
    img[2, 7] = (255, 0, 9)
    ref = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(Image.fromarray(img)))
    out = normalize(torch.from_numpy(img).permute(2, 0, 1))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert out.shape == (3, 10, 10)
    torch.testing.assert_close(_unnormalize(out)[:, 2, 7], torch.tensor([1.0, 0.0, 9 / 255]))
    batch = normalize(_batch(img, 2))
    torch.testing.assert_close(batch[1], ref, atol=1e-6, rtol=0)


def test_evaluation_pipeline_is_resize_and_normalize_only(tmp_path):
    """paper_pil_transform(train=False) on a file == normalize(read_resized(file)): the cached
    evaluation input is exactly the reference one, with no augmentation."""
    from rsdml.data.imageio import read_resized

    rng = np.random.default_rng(0)
    path = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (30, 22, 3), dtype=np.uint8)).save(path)
    ref = paper_pil_transform(16, train=False)(Image.open(path).convert("RGB"))
    ours = normalize(torch.from_numpy(np.array(read_resized(path, 16))).permute(2, 0, 1))
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    assert len(paper_pil_transform(16, train=False).transforms) == 3


def test_rejects_bad_input():
    aug = TrainAugment()
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="uint8"):
        aug(torch.rand(2, 3, 8, 8), g)
    with pytest.raises(ValueError, match="batch"):
        aug(torch.zeros(3, 8, 8, dtype=torch.uint8), g)
    with pytest.raises(ValueError, match="square"):
        TrainAugment(extra=True)(torch.zeros(2, 3, 8, 6, dtype=torch.uint8), g)
    with pytest.raises(ValueError, match="jitter"):
        TrainAugment(jitter=0.6)


@pytest.mark.parametrize("extra", [False, True])
def test_accelerator_path_has_no_data_dependent_ops(extra):
    """Off the CPU, forward must not synchronise with the host (no nonzero/tolist/item):
    the "meta" device, which has no data, runs it only if every op is shape-static."""
    x = torch.empty(4, 3, 8, 8, dtype=torch.uint8, device="meta")
    y = TrainAugment(extra=extra)(x, torch.Generator().manual_seed(0))
    assert y.device.type == "meta" and y.dtype == torch.float32 and y.shape == x.shape
    with pytest.raises(NotImplementedError):  # the CPU path does use data-dependent shapes
        TrainAugment()._apply_grouped(x, torch.rand(4, 12, device="meta"))


def test_accelerator_path_copies_no_host_lists_after_the_first_batch(monkeypatch):
    """``torch.tensor([...], device=cuda)`` copies from pageable host memory and makes the host
    wait for the GPU: constants are made once per device, then every batch reuses them."""
    aug = TrainAugment(extra=True)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    u = aug.draw(6, torch.Generator().manual_seed(0))
    first = aug._apply_batched(x, u)
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    again = aug._apply_batched(x, u)
    assert made == [] and torch.equal(first, again)
