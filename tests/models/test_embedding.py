"""EmbeddingNet: head layout, unit-norm output, config wiring."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from rsdml.config import TrainConfig
from rsdml.models.embedding import EmbeddingNet, build_model
from rsdml.models.registry import BACKBONES, create_backbone

NAMES = sorted(BACKBONES)


@pytest.mark.parametrize("mlp_head", [False, True], ids=["linear", "mlp"])
@pytest.mark.parametrize("name", NAMES)
def test_embedding_is_unit_norm(name, mlp_head):
    torch.manual_seed(0)
    net = EmbeddingNet(create_backbone(name, "none"), embedding_dim=16, mlp_head=mlp_head)
    x = torch.randn(3, 3, 32, 32)
    net.train()
    e = net(x)
    assert e.shape == (3, 16)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    f = net.forward_features(x)
    assert f.shape == (3, net.trunk.num_features)
    net.eval()
    with torch.no_grad():
        f = net.forward_features(x)
        torch.testing.assert_close(net.embed_features(f), net(x))


class _FakeTrunk(nn.Module):
    num_features = 12

    def forward(self, x):
        return x


def test_linear_head_is_layernorm_without_affine_then_linear():
    net = EmbeddingNet(_FakeTrunk(), embedding_dim=5)
    ln, lin = list(net.head)
    assert isinstance(ln, nn.LayerNorm) and not ln.elementwise_affine
    assert list(ln.parameters()) == []
    assert isinstance(lin, nn.Linear) and (lin.in_features, lin.out_features) == (12, 5)
    # Against an independent computation.
    f = torch.randn(3, 12) * 4 + 2
    z = (f - f.mean(1, keepdim=True)) / torch.sqrt(f.var(1, unbiased=False, keepdim=True) + 1e-5)
    expected = z @ lin.weight.T + lin.bias
    expected = expected / expected.norm(dim=1, keepdim=True)
    torch.testing.assert_close(net.embed_features(f), expected, rtol=1e-5, atol=1e-5)


def test_mlp_head_layout():
    net = EmbeddingNet(_FakeTrunk(), embedding_dim=5, mlp_head=True)
    kinds = [type(m) for m in net.head]
    assert kinds == [nn.LayerNorm, nn.Linear, nn.ReLU, nn.Linear]
    assert not net.head[0].elementwise_affine
    assert (net.head[1].in_features, net.head[1].out_features) == (12, 12)
    assert (net.head[3].in_features, net.head[3].out_features) == (12, 5)


def test_gradients_reach_trunk_and_head():
    torch.manual_seed(0)
    net = EmbeddingNet(create_backbone("resnet18", "none"), embedding_dim=8)
    net(torch.randn(2, 3, 32, 32))[:, 0].sum().backward()
    assert net.trunk.conv1.weight.grad is not None and net.trunk.conv1.weight.grad.abs().sum() > 0
    assert net.head[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_build_model_follows_the_config(name, tmp_path):
    cfg = TrainConfig(backbone=name, pretrained="none", embedding_dim=24, mlp_head=True)
    net = build_model(cfg)
    assert net.embedding_dim == 24 and len(net.head) == 4
    # --weights overrides --pretrained.
    torch.manual_seed(9)
    src = create_backbone(name, "none")
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    net = build_model(cfg.replace(pretrained="imagenet", weights=str(path)))
    assert all(torch.equal(net.trunk.state_dict()[k], v) for k, v in src.state_dict().items())
