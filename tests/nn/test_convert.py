"""bayesianize: exact-type conversion, predicate, custom mapping, MOPED, original untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import bayescale


class Block(nn.Module):  # a user layer that must survive conversion
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        return x * self.scale


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, (3, 5), padding=(1, 2)),  # non-square kernel
        nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4),  # grouped + dilated
        Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def test_bayesianize_converts_layers_and_leaves_original_intact():
    net = _net()
    before = copy.deepcopy(net.state_dict())
    bnn = bayescale.bayesianize(net, estimator="reparam")
    assert isinstance(bnn[0], bayescale.BayesConv2d) and bnn[0].kernel_size == (3, 5)
    assert bnn[3].groups == 4 and bnn[3].dilation == (2, 2)
    assert isinstance(bnn[7], bayescale.BayesLinear) and bnn[7].estimator == "reparam"
    assert isinstance(bnn[1], nn.BatchNorm2d) and isinstance(bnn[4], Block)
    assert bnn[1] is not net[1]  # a copy, not shared modules
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in (net[0], net[3], net[7]))
    out = bnn(torch.randn(2, 3, 9, 7))
    out.sum().backward()
    assert out.shape == (2, 4) and bnn[0].weight_rho.grad is not None
    assert bayescale.kl_divergence(bnn) > 0


def test_include_predicate_keeps_head_deterministic():
    bnn = bayescale.bayesianize(_net(), include=lambda name, m: not isinstance(m, nn.Linear))
    assert type(bnn[7]) is nn.Linear and isinstance(bnn[0], bayescale.BayesConv2d)


def test_moped_copies_weights_and_sets_sigma():
    net = _net()
    bnn = bayescale.bayesianize(net, init=bayescale.moped(0.2))
    for i in (0, 3, 7):
        torch.testing.assert_close(bnn[i].weight_mu, net[i].weight)
        torch.testing.assert_close(bnn[i].bias, net[i].bias)
        torch.testing.assert_close(bnn[i].weight_sigma, 0.2 * net[i].weight.abs(),
                                   rtol=1e-4, atol=1e-7)
    x = torch.randn(2, 3, 9, 7)
    net.eval()
    bnn.eval()
    with bayescale.mean_weights(bnn):
        torch.testing.assert_close(bnn(x), net(x))


def test_custom_mapping_and_exact_types():
    class MyLinear(nn.Linear):
        pass

    class MyBayesLinear(bayescale.BayesLinear):
        pass

    net = nn.Sequential(MyLinear(3, 4), nn.Linear(4, 2))
    bnn = bayescale.bayesianize(net, mapping={**bayescale.DEFAULT_MAPPING,
                                              MyLinear: MyBayesLinear})
    assert type(bnn[0]) is MyBayesLinear and type(bnn[1]) is bayescale.BayesLinear
    # Without the mapping entry, the subclass is left alone (exact-type matching).
    assert type(bayescale.bayesianize(net)[0]) is MyLinear


def test_multihead_attention_out_proj_is_not_converted():
    net = nn.Sequential(nn.Linear(8, 8))
    net.append(nn.MultiheadAttention(8, 2))
    bnn = bayescale.bayesianize(net)
    assert not isinstance(bnn[1].out_proj, bayescale.BayesianLayer)


def test_root_module_and_errors():
    assert isinstance(bayescale.bayesianize(nn.Linear(3, 2)), bayescale.BayesLinear)
    with pytest.raises(ValueError, match="converted no layer"):
        bayescale.bayesianize(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match="nn.Module"):
        bayescale.bayesianize("model")
    with pytest.raises(ValueError, match="unknown estimator"):
        bayescale.bayesianize(nn.Linear(3, 2), estimator="bbb")


def test_inplace_converts_the_model_itself():
    net = _net()
    out = bayescale.bayesianize(net, inplace=True)
    assert out is net and isinstance(net[0], bayescale.BayesConv2d)
