"""Structured pruning and compaction: same function as the masked network, exact folds, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import bayescale
from bayescale.kefan.groups import group_is_zero
from bayescale.models.resnet import resnet18_tfp
from bayescale.pruning import compact as C


@pytest.fixture
def f64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _randomize_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return model


def _vggish() -> nn.Module:
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12),
                      nn.ReLU(), nn.MaxPool2d(2)),
        nn.Flatten(), nn.Linear(12 * 2 * 2, 10), nn.ReLU(), nn.Linear(10, 4))
    return _randomize_bn(bayescale.bayesianize(net)).eval()


def _same(a: nn.Module, b: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad(), bayescale.mean_weights(a), bayescale.mean_weights(b):
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("sparsity", [0.3, 0.8])
def test_compacted_equals_masked_bayesian_float64(f64, sparsity):
    model = _vggish()
    x = torch.randn(5, 3, 8, 8)
    keep = C.unit_masks(C.unit_scores(model), sparsity=sparsity)
    for k in keep.values():  # floor(s * units) removed in each layer
        assert int((~k).sum()) == math.floor(sparsity * k.numel())
    masked = C.mask_units(copy.deepcopy(model), keep)
    small = C.compact(masked, x)
    _same(masked, small, x)
    widths = [m.weight_mu.shape[0] for m in small.modules()
              if isinstance(m, bayescale.BayesianLayer)]
    assert widths == [int(k.sum()) for k in keep.values()] + [4]
    assert small[0][1].num_features == widths[0] and small[0][5].num_features == widths[1]
    # the posterior of the kept weights is unchanged: mu and sigma are slices of the original
    k0, k1 = keep["0.0"], keep["0.4"]
    torch.testing.assert_close(small[0][4].weight_rho,
                               model[0][4].weight_rho[k1][:, k0], rtol=0, atol=0)
    assert not small[0][0]._masked  # fully kept after compaction: fast unmasked forward
    pm = C.posterior_mean_model(small)
    assert not any(isinstance(m, bayescale.BayesianLayer) for m in pm.modules())
    with torch.no_grad(), bayescale.mean_weights(small):
        torch.testing.assert_close(pm(x), small(x), rtol=0, atol=1e-12)


def test_structured_prune_global_and_samples_stay_distributed_as_masked(f64):
    model = bayescale.bayesianize(nn.Sequential(nn.Flatten(), nn.Linear(20, 16), nn.ReLU(),
                                                nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)))
    x = torch.randn(6, 20)
    scores = C.unit_scores(model)
    keep = C.unit_masks(scores, sparsity=0.5, scope="global")
    assert sum(int((~k).sum()) for k in keep.values()) == 16
    small = C.structured_prune(model, x, sparsity=0.5, scope="global")
    masked = C.mask_units(copy.deepcopy(model), keep)
    _same(masked, small, x)
    # fixed weight noise: the compacted net draws the same W as the masked one on kept entries
    with torch.no_grad():
        eps = {n: torch.randn_like(m.weight_mu) for n, m in masked.named_modules()
               if isinstance(m, bayescale.BayesianLayer)}
        cols = {"1": torch.arange(20), "3": keep["1"], "5": keep["3"]}
        rows = {"1": keep["1"], "3": keep["3"], "5": torch.ones(3, dtype=torch.bool)}
        with bayescale.fixed_sample(masked), bayescale.fixed_sample(small):
            for n, e in eps.items():
                masked.get_submodule(n)._fixed_eps = (e, None)
                small.get_submodule(n)._fixed_eps = (e[rows[n]][:, cols[n]], None)
            torch.testing.assert_close(masked(x), small(x), rtol=0, atol=1e-12)
    pm = C.structured_prune(model, x, sparsity=0.5, posterior_mean=True)
    assert isinstance(pm[1], nn.Linear) and pm[1].out_features == 8


def test_deterministic_zero_units_are_removed_and_biases_folded(f64):
    """Ke & Fan-style nets: zero groups, biases not pruned; removal must stay exact."""
    net = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3),
                        nn.Tanh(), nn.Conv2d(5, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 7), nn.Sigmoid(), nn.Linear(7, 3)).eval()
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        net[0].weight[1] = 0          # dead filter, bias kept: consumer conv unpadded -> folded
        net[2].weight[:, 4] = 0       # input channel 4 unused by conv 2 -> filter 4 removed
        net[2].weight[0] = 0          # dead filter before a padded conv: must stay (not exact)
        net[4].weight[2] = 0          # dead filter, then Flatten -> Linear: folded
        net[7].weight[5] = 0          # dead unit, sigmoid(b) != 0, Linear consumer: folded
        net[4].bias[3] = 0
        net[4].weight[3] = 0          # dead and zero bias: simply dropped
    before = copy.deepcopy(net.state_dict())
    plan = C.compaction_plan(net, x)
    assert plan.removed() == {"0": 2, "2": 0, "4": 2, "7": 1}
    assert plan.not_exact == {"2": [0]}
    small = C.compact(net, x)
    assert [m.weight.shape[0] for m in small if isinstance(m, (nn.Conv2d, nn.Linear))] \
        == [4, 5, 2, 6, 3]
    assert small[7].in_features == 2 * 36
    with torch.no_grad():
        torch.testing.assert_close(small(x), net(x), rtol=0, atol=1e-12)
    for k, v in net.state_dict().items():  # the input network is untouched
        assert torch.equal(v, before[k])
    again = C.compact(small, x)  # idempotent
    assert C.compaction_plan(small, x).removed() == {"0": 0, "2": 0, "4": 0, "7": 0}
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x), rtol=0, atol=1e-12)
    assert group_is_zero(net[2].weight, "in").tolist() == [False] * 4 + [True, False]


def test_errors_are_clear():
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="Sequential chains.*Torch-Pruning"):
        C.compact(resnet18_tfp(), x)
    with pytest.raises(ValueError, match="grouped convolution"):
        C.unit_scores(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 2, 1)))
    with pytest.raises(ValueError, match="followed by another"):
        C.unit_scores(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="not channel-wise"):
        C.unit_scores(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)))
    model = bayescale.bayesianize(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    with pytest.raises(ValueError, match="all 4 units of layer '0'"):
        C.unit_masks(C.unit_scores(model), threshold=1e9)
    with pytest.raises(ValueError, match="not a prunable layer"):
        C.mask_units(model, {"2": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="sparsity must be"):
        C.structured_prune(model, torch.randn(1, 3), sparsity=1.0)


def test_resnet_dependency_graph_pruning_is_exact(f64):
    pytest.importorskip("torch_pruning")
    from bayescale.pruning.graph import graph_prune

    model = _randomize_bn(bayescale.get_model("resnet18_tfp", widths=(8, 16, 16, 32))).eval()
    x = torch.randn(3, 3, 32, 32)
    small, masked = graph_prune(model, x, sparsity=0.5, return_masked=True)
    _same(small, masked, x)
    blocks = [m for m in small.modules() if type(m).__name__ == "TFPResBlock"]
    assert [b.conv2.weight_mu.shape[0] for b in blocks] == [4, 8, 8, 16]
    assert blocks[1].shortcut.weight_mu.shape[:2] == (8, 4)  # coupled with the residual sum
    assert sum(p.numel() for p in small.parameters()) < 0.3 * sum(
        p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="sparsity must be"):
        graph_prune(model, x, sparsity=1.0)
