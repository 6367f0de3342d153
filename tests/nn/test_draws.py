"""``draws(model, k)``: k weight draws in one forward equal k successive ``fixed_sample`` forwards.

Same RNG state, same noise: the batched forward must reproduce the loop's outputs to float
tolerance for Linear (also with extra dims), every convolution option, Bayesian biases, pruned
layers, BatchNorm nets in eval mode, a bayesianized arbitrary module and the zoo models.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayescale import (
    BayesConv1d,
    BayesConv2d,
    BayesConv3d,
    BayesLinear,
    bayesianize,
    fixed_sample,
    get_model,
    list_models,
)
from bayescale.nn.sampling import bayesian_layers, draws


def _loop(model: nn.Module, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    outs = []
    for _ in range(k):
        with fixed_sample(model):
            outs.append(model(x))
    return torch.cat(outs)


def _batched(model: nn.Module, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with draws(model, k):
        return model(x.repeat(k, *([1] * (x.dim() - 1))))


def _shared(model: nn.Module, x: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with draws(model, k, shared_input=True):
        return model(x)  # B rows in, K * B rows out (the first Bayesian layer widens)


def _check(model: nn.Module, x: torch.Tensor, k: int = 3, shared: bool = True) -> None:
    model = model.double().eval()
    x = x.double()
    with torch.no_grad():
        ref, out = _loop(model, x, k, 7), _batched(model, x, k, 7)
        wide = _shared(model, x, k, 7) if shared else ref
    assert out.shape == ref.shape == wide.shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(wide, ref, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(ref[: len(x)], ref[len(x): 2 * len(x)])  # the draws do differ


@pytest.mark.parametrize("layer, shape", [
    (BayesLinear(5, 4), (6, 5)),
    (BayesLinear(5, 4, bayesian_bias=True), (6, 5)),
    (BayesLinear(5, 4, bias=False), (3, 2, 5)),
    (BayesConv1d(4, 6, 3, stride=2, padding=1, groups=2), (5, 4, 11)),
    (BayesConv1d(2, 3, 3, padding="same", padding_mode="circular", bayesian_bias=True),
     (2, 2, 9)),
    (BayesConv2d(4, 6, 3, stride=(2, 1), padding=2, dilation=2, groups=2,
                 padding_mode="reflect"), (5, 4, 9, 8)),
    (BayesConv2d(3, 6, 3, padding="same", padding_mode="replicate"), (2, 3, 7, 7)),
    (BayesConv2d(1, 8, 5, padding=2, estimator="reparam"), (4, 1, 12, 12)),
    (BayesConv3d(2, 4, (2, 3, 3), stride=(1, 2, 2), padding=1, bias=False), (2, 2, 5, 6, 6)),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "x".join(map(str, v)))
def test_one_layer_matches_the_loop(layer, shape):
    _check(layer, torch.randn(shape))


@pytest.mark.parametrize("estimator", ["reparam", "flipout", "local"])
def test_every_estimators_model_after_training_steps(estimator):
    torch.manual_seed(0)
    net = bayesianize(nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                    nn.Flatten(), nn.Linear(4 * 6 * 6, 3)), estimator=estimator)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(3):  # trained a little: mu, rho and BN statistics away from their init
        opt.zero_grad()
        net(torch.randn(8, 2, 8, 8)).square().mean().backward()
        opt.step()
    _check(net, torch.randn(5, 2, 8, 8))


def test_pruned_layers_stay_exactly_zero():
    layer = BayesConv2d(3, 4, 3, padding=1, bayesian_bias=True)
    mask = torch.rand(layer.weight_mu.shape) > 0.5
    layer.set_weight_mask(mask)
    _check(layer, torch.randn(2, 3, 5, 5))
    dead = BayesConv2d(3, 4, 3, padding=1)
    dead.set_weight_mask(torch.zeros_like(dead.weight_mu, dtype=torch.bool))
    with torch.no_grad(), draws(dead, 3):
        out = dead(torch.randn(6, 3, 5, 5))
    assert torch.equal(out, dead.bias.view(1, -1, 1, 1).expand_as(out))  # no noise leaks


def test_an_arbitrary_bayesianized_module():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(3, 3, 3, padding=1)
            self.head = nn.Linear(3 * 7, 2)

        def forward(self, x):
            h = x + torch.tanh(self.conv(x))  # a residual connection
            return self.head(h.flatten(1))

    # the residual adds the B input rows to the K * B rows of the first Bayesian layer, so
    # only the stacked input batches; mc_predict's "auto" finds that and keeps the loop
    _check(bayesianize(Block()), torch.randn(4, 3, 7), shared=False)
    with pytest.raises(RuntimeError), torch.no_grad():
        _shared(bayesianize(Block()), torch.randn(4, 3, 7), 3, 0)


def test_shared_input_runs_the_layers_before_the_first_bayesian_one_once():
    calls = []
    stem = nn.Conv2d(1, 4, 3, padding=1)
    stem.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[0]))
    net = nn.Sequential(stem, nn.ReLU(), BayesConv2d(4, 6, 3, groups=2), nn.ReLU(),
                        nn.Flatten(), BayesLinear(6 * 4 * 4, 3))
    _check(net, torch.randn(5, 1, 6, 6), k=4)
    assert calls == [5, 5, 5, 5, 20, 5]  # loop: 4 x 5 rows; stacked: 20; shared: 5 rows once
    for layer in bayesian_layers(net):
        assert layer._draw_rows is None  # the root-rows hook is gone after the context


@pytest.mark.parametrize("name", [n for n in list_models() if n.startswith(("BNN", "CIFAR10_BNN"))]
                         + ["resnet18_tfp", "vgg16_tfp"])
def test_zoo_models(name):
    torch.manual_seed(0)
    model = get_model(name, bayesian=True)
    shape = (1, 28, 28) if name.startswith("BNN") else (3, 32, 32)
    _check(model, torch.rand(2, *shape), k=2)


def test_modes_are_restored_and_bad_k_is_refused():
    net = nn.Sequential(BayesLinear(3, 2), nn.ReLU(), BayesLinear(2, 2))
    with pytest.raises(ValueError, match="positive int"):
        with draws(net, 0):
            pass
    with pytest.raises(ValueError, match="K \\* B rows"), draws(net, 3):
        net(torch.randn(4, 3))  # 4 rows cannot hold 3 draws
    assert all(layer._mode == "sample" and layer._fixed_eps is None
               for layer in bayesian_layers(net))
