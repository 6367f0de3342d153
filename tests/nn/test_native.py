"""PyTorch-native behaviour: state_dict round trip, autocast bf16, torch.compile, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bayescale


def _bnn(estimator="flipout") -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 6 * 6, 5))
    return bayescale.bayesianize(net, estimator=estimator)


def test_state_dict_round_trip_through_file(tmp_path):
    a = _bnn()
    with torch.no_grad():
        a[0].weight_rho.add_(0.5)
    path = tmp_path / "bnn.pt"
    torch.save(a.state_dict(), path)
    b = _bnn()
    b.load_state_dict(torch.load(path, weights_only=True))
    assert set(a.state_dict()) == {"0.weight_mu", "0.weight_rho", "0.bias", "3.weight_mu",
                                   "3.weight_rho", "3.bias"}
    x = torch.randn(3, 1, 6, 6)
    torch.manual_seed(7)
    ya = a(x)
    torch.manual_seed(7)
    torch.testing.assert_close(b(x), ya, rtol=0, atol=0)
    torch.testing.assert_close(bayescale.kl_divergence(b), bayescale.kl_divergence(a))


@pytest.mark.parametrize("estimator", bayescale.ESTIMATORS)
def test_autocast_bf16_keeps_sigma_kl_and_noise_in_float32(estimator):
    model = _bnn(estimator)
    x = torch.randn(8, 1, 6, 6)
    kl_ref = bayescale.kl_divergence(model)
    with bayescale.mean_weights(model):
        ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with bayescale.mean_weights(model):
            out = model(x)
        kl = bayescale.kl_divergence(model)
        sample = model(x)
        loss = bayescale.elbo_loss(sample, torch.randint(0, 5, (8,)), model, 100)
    assert model[0].weight_sigma.dtype == torch.float32
    assert kl.dtype == torch.float32 and torch.equal(kl, kl_ref)
    assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32
    # bf16 keeps ~3 significant digits: compare with a tolerance scaled to the outputs.
    assert (out.float() - ref).abs().max() < 2e-2 * ref.abs().max()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model[0].weight_rho.grad.dtype == torch.float32


def test_local_estimator_noise_is_float32_under_autocast():
    layer = bayescale.BayesLinear(4, 3, estimator="local")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16  # returned in the op's dtype, computed in fp32


@pytest.mark.parametrize("estimator", ["reparam", "flipout", "local"])
def test_torch_compile_matches_eager(estimator):
    model = _bnn(estimator)
    compiled = torch.compile(model)
    x = torch.randn(4, 1, 6, 6)
    with bayescale.mean_weights(model):
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    # Sampling mode: compiled draws have the eager per-example mean and variance.
    n = 400
    with torch.no_grad():
        eager = torch.stack([model(x) for _ in range(n)])
        comp = torch.stack([compiled(x) for _ in range(n)])
    se = (eager.var(0) / n).sqrt()
    assert ((comp.mean(0) - eager.mean(0)).abs() / (se * 2 ** 0.5)).max() < 5
    ratio = comp.var(0) / eager.var(0)
    assert ((ratio - 1).abs()).max() < 5 * (2 * 2 / (n - 1)) ** 0.5


@pytest.mark.gpu
def test_cuda_forward_backward_and_autocast():
    model = _bnn().cuda()
    x = torch.randn(4, 1, 6, 6, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = bayescale.elbo_loss(model(x), torch.randint(0, 5, (4,), device="cuda"), model, 10)
    loss.backward()
    assert torch.isfinite(loss)
