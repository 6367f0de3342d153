"""Export: TorchScript and ONNX match PyTorch; the MC export samples the right distribution."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayescale
from bayescale.pruning import bprune as P
from bayescale.pruning import compact as C
from bayescale.pruning import export as E


def _pruned_cnn() -> nn.Module:
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(6, 4, 3, padding="same", padding_mode="reflect"),
                        nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    model = bayescale.bayesianize(net).eval()
    P.apply_masks(model, P.masks_from_scores(P.snr_scores(model), sparsity=0.5))
    return C.structured_prune(model, torch.randn(1, 1, 8, 8), sparsity=0.5)


def test_torchscript_matches_posterior_mean_and_mc_draws(tmp_path):
    model = _pruned_cnn()
    x = torch.randn(7, 1, 8, 8)
    ts = torch.jit.load(str(E.export_torchscript(model, x[:2], tmp_path / "m.pt")))
    with torch.no_grad(), bayescale.mean_weights(model):
        torch.testing.assert_close(ts(x), model(x), rtol=1e-5, atol=1e-6)
    mc = torch.jit.load(str(E.export_torchscript(model, x[:2], tmp_path / "mc.pt", mc=True)))
    a, b = mc(x), mc(x)
    assert a.shape == (7, 5) and not torch.equal(a, b)  # a new weight draw per call


def _linear_moments_check(draws: torch.Tensor, layer: bayescale.BayesLinear, x: torch.Tensor):
    """Closed form: out = x W^T + b, W ~ N(mu * m, (sigma * m)^2): mean and variance."""
    m = layer.weight_mask.double()
    mu, sig = layer.weight_mu.detach().double() * m, layer.weight_sigma.detach().double() * m
    mean = x.double() @ mu.T + layer.bias.detach().double()
    var = x.double().square() @ sig.square().T
    t = draws.shape[0]
    se = (var / t).sqrt()
    assert ((draws.double().mean(0) - mean).abs() <= 5 * se + 1e-6).all()
    # sample variance of a Gaussian: sd of s^2 is var * sqrt(2 / (t - 1))
    assert ((draws.double().var(0) - var).abs() <= 5 * var * (2 / (t - 1)) ** 0.5 + 1e-9).all()


def test_mc_sampling_model_has_the_posterior_distribution():
    layer = bayescale.BayesLinear(4, 3)
    mask = torch.ones(3, 4, dtype=torch.bool)
    mask[0] = False  # unit 0 fully pruned: no noise at all
    layer.set_weight_mask(mask)
    net = E.sampling_model(nn.Sequential(layer))
    x = torch.randn(2, 4)
    with torch.no_grad():
        draws = torch.stack([net(x) for _ in range(4000)])
    assert (draws[:, :, 0] == layer.bias[0]).all()
    _linear_moments_check(draws, layer, x)


def test_onnx_matches_pytorch_and_mc_export(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _pruned_cnn()
    x = torch.randn(9, 1, 8, 8)
    path = E.export_onnx(model, x[:1], tmp_path / "m.onnx")
    assert E.check_onnx(path, model, x) < 1e-5  # batch size 9 != the exported 1: dynamic
    # MC export: one weight draw per call, the posterior's moments (single layer, closed form)
    layer = bayescale.BayesLinear(4, 3)
    layer.set_weight_mask(torch.rand(3, 4) > 0.3)
    mc_path = E.export_onnx(nn.Sequential(layer), torch.randn(1, 4), tmp_path / "mc.onnx",
                            mc=True)
    session = ort.InferenceSession(str(mc_path), providers=["CPUExecutionProvider"])
    xs = torch.randn(2, 4)
    draws = torch.stack([torch.from_numpy(session.run(None, {"x": xs.numpy()})[0])
                         for _ in range(4000)])
    _linear_moments_check(draws, layer, xs)
