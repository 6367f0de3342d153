"""Bayesian layers: estimator statistics against closed forms, exact structure, modes, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bayescale
from bayescale.nn import layers as layers_mod


@pytest.fixture(autouse=True)
def _float64():
    """Exact maths in float64 for this module (restored afterwards)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _linear(estimator: str, bayesian_bias: bool = False) -> bayescale.BayesLinear:
    torch.manual_seed(1)
    layer = bayescale.BayesLinear(6, 4, estimator=estimator, bayesian_bias=bayesian_bias)
    with torch.no_grad():  # larger sigma so the noise is well above float error
        layer.weight_rho.uniform_(-1.5, 0.0)
        if bayesian_bias:
            layer.bias_rho.fill_(-1.0)
    return layer


def _conv(estimator: str) -> bayescale.BayesConv2d:
    torch.manual_seed(2)
    layer = bayescale.BayesConv2d(3, 4, (3, 2), padding=1, dilation=(1, 2), estimator=estimator)
    with torch.no_grad():
        layer.weight_rho.uniform_(-1.5, 0.0)
    return layer


def _closed_form(layer, x):
    """Per-example output mean and variance of a mean-field layer: op(x, mu)+b, op(x^2, sigma^2)."""
    with torch.no_grad():
        mean = layer._op(layer._prepare_input(x), layer.weight_mu, layer._bias_mean())
        bias_var = layer.bias_sigma.square() if layer.bayesian_bias else None
        var = layer._op(layer._prepare_input(x).square(), layer.weight_sigma.square(), bias_var)
    return mean, var


@pytest.mark.parametrize("estimator", bayescale.ESTIMATORS)
@pytest.mark.parametrize("kind", ["linear", "linear_bias", "conv"])
def test_output_mean_and_variance_match_closed_form(estimator, kind):
    layer = _conv(estimator) if kind == "conv" else _linear(estimator, kind == "linear_bias")
    x = torch.randn(3, 3, 4, 4) if kind == "conv" else torch.randn(3, 6)
    mean, var = _closed_form(layer, x)
    n = 4000
    with torch.no_grad():
        draws = torch.stack([layer(x) for _ in range(n)])
    z_mean = (draws.mean(0) - mean) / (var / n).sqrt()
    # Var of the sample variance of a Gaussian is 2 var^2 / (n - 1).
    z_var = (draws.var(0) - var) / (var * math.sqrt(2.0 / (n - 1)))
    assert z_mean.abs().max() < 5.0
    assert z_var.abs().max() < 5.0


def _noise_corr(layer, x, n=3000):
    """Correlation across draws of the output noise of examples 0 and 1 (identical inputs)."""
    mean, _ = _closed_form(layer, x)
    with torch.no_grad():
        noise = torch.stack([layer(x) - mean for _ in range(n)])  # [n, B, out]
    a, b = noise[:, 0].flatten(1), noise[:, 1].flatten(1)
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(0) / (a.norm(dim=0) * b.norm(dim=0))


def test_flipout_noise_decorrelated_across_examples_reparam_shared():
    x = torch.randn(1, 6).repeat(2, 1)
    n = 3000
    corr_reparam = _noise_corr(_linear("reparam"), x, n)
    corr_flip = _noise_corr(_linear("flipout"), x, n)
    assert torch.allclose(corr_reparam, torch.ones_like(corr_reparam), atol=1e-9)
    assert corr_flip.abs().max() < 5.0 / math.sqrt(n)
    conv_x = torch.randn(1, 3, 4, 4).repeat(2, 1, 1, 1)
    corr_conv = _noise_corr(_conv("flipout"), conv_x, n)
    assert corr_conv.abs().max() < 5.0 / math.sqrt(n)


def test_flipout_matches_naive_per_example_reference(monkeypatch):
    """y_i = op(x_i, mu) + s_out_i * op(x_i * s_in_i, sigma * eps), with given signs."""
    layer = _conv("flipout")
    x = torch.randn(3, 3, 5, 4)
    s_in = torch.tensor([1.0, -1.0, 1.0]).view(3, 1, 1, 1) * torch.tensor([1.0, 1.0, -1.0]).view(
        1, 3, 1, 1)
    out_shape = layer(x).shape
    s_out = torch.where(torch.rand(out_shape[:2]) < 0.5, -1.0, 1.0).view(*out_shape[:2], 1, 1)
    signs = iter([s_in, s_out])
    monkeypatch.setattr(layers_mod, "_rademacher", lambda shape, like: next(signs))
    torch.manual_seed(5)
    y = layer(x)
    torch.manual_seed(5)
    delta = layer.weight_sigma * torch.randn_like(layer.weight_mu)
    with torch.no_grad():
        for i in range(3):
            xi = x[i : i + 1]
            ref = F.conv2d(xi, layer.weight_mu, layer.bias, 1, 1, (1, 2))
            ref = ref + s_out[i] * F.conv2d(xi * s_in[i], delta, None, 1, 1, (1, 2))
            torch.testing.assert_close(y[i : i + 1], ref, rtol=1e-12, atol=1e-12)


def test_rademacher_signs_are_fair_and_independent():
    torch.manual_seed(0)
    s = layers_mod._rademacher((4000, 50), torch.empty(0))
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    n = s.numel()
    assert abs(s.mean()) < 5 / math.sqrt(n)
    lag = (s[:, 1:] * s[:, :-1]).mean()  # neighbouring bits of one word must not correlate
    assert abs(lag) < 5 / math.sqrt(n)


@pytest.mark.parametrize("estimator", bayescale.ESTIMATORS)
def test_mean_weights_equals_plain_layer(estimator):
    plain = nn.Conv2d(4, 6, (3, 1), stride=(2, 1), padding=(1, 0), dilation=(2, 1), groups=2,
                      padding_mode="reflect")
    layer = bayescale.BayesConv2d.from_module(plain, estimator=estimator)
    with torch.no_grad():
        plain.weight.copy_(layer.weight_mu)
        plain.bias.copy_(layer.bias)
    x = torch.randn(2, 4, 7, 5)
    with bayescale.mean_weights(layer):
        torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=1e-12)
    assert not torch.allclose(layer(x), plain(x))  # sampling again outside the context


@pytest.mark.parametrize("cls, plain_cls, shape", [
    (bayescale.BayesConv1d, nn.Conv1d, (2, 4, 9)),
    (bayescale.BayesConv3d, nn.Conv3d, (2, 4, 5, 6, 4)),
])
def test_conv1d_conv3d_same_padding_mean_mode(cls, plain_cls, shape):
    plain = plain_cls(4, 2, 4, padding="same", padding_mode="circular")
    layer = cls.from_module(plain, init=bayescale.moped(0.1))
    x = torch.randn(*shape)
    with bayescale.mean_weights(layer):
        torch.testing.assert_close(layer(x), plain(x), rtol=0, atol=1e-12)


def test_fixed_sample_holds_one_draw_and_keeps_gradients():
    layer = _linear("flipout", bayesian_bias=True)
    x = torch.randn(5, 6)
    with bayescale.fixed_sample(layer):
        a, b = layer(x), layer(x)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        a.sum().backward()
    assert layer.weight_rho.grad is not None and layer.weight_rho.grad.abs().sum() > 0
    with bayescale.fixed_sample(layer):
        c = layer(x)
    assert not torch.allclose(a, c)
    assert layer._mode == "sample" and layer._fixed_eps is None


def test_kl_is_sum_over_weights_and_bias():
    layer = _linear("reparam", bayesian_bias=True)
    prior = layer.prior
    expected = (
        _kl_ref(layer.weight_mu, layer.weight_sigma, prior)
        + _kl_ref(layer.bias_mu, layer.bias_sigma, prior)
    )
    torch.testing.assert_close(layer.kl(), expected)


@pytest.mark.parametrize("estimator", bayescale.ESTIMATORS)
@pytest.mark.parametrize("init", ["tutorial", "tfp_vgg"])
def test_fused_training_forward_equals_unfused_autograd(estimator, init, monkeypatch):
    """A training forward computes sigma and the KL in one fused op with a hand-written backward;
    loss and every gradient must equal plain autograd through softplus + the KL formula."""
    prior = bayescale.GaussianPrior(0.3, 0.7)

    def run(fused: bool):
        torch.manual_seed(3)
        layer = bayescale.BayesLinear(7, 5, estimator=estimator, prior=prior, init=init)
        with torch.no_grad():
            layer.weight_rho.uniform_(-4.0, 1.0)  # some entries above tfp_vgg's rho cap
        if not fused:
            monkeypatch.setattr(layer, "_fuse_kl", lambda: False)
        x = torch.randn(9, 7)
        torch.manual_seed(4)
        loss = layer(x).sin().sum() + 0.37 * layer.kl()
        loss.backward()
        return loss.detach(), [p.grad for p in layer.parameters()], layer

    loss_f, grads_f, layer = run(True)
    loss_u, grads_u, _ = run(False)
    torch.testing.assert_close(loss_f, loss_u, rtol=1e-12, atol=1e-12)
    for gf, gu in zip(grads_f, grads_u, strict=True):
        torch.testing.assert_close(gf, gu, rtol=1e-10, atol=1e-12)
    assert layer._kl_cache is None  # consumed by kl()


def test_fused_kl_is_reused_once_and_never_stale():
    layer = _linear("flipout")
    x = torch.randn(3, 6)
    layer(x)
    cached = layer._kl_cache[0]
    assert layer.kl() is cached  # the forward's KL, not a recomputation
    layer(x)
    with torch.no_grad():
        layer.weight_mu.add_(0.5)  # parameters changed after the forward: recompute
    expected = _kl_ref(layer.weight_mu, layer.weight_sigma, layer.prior)
    torch.testing.assert_close(layer.kl(), expected)
    # Backward through the NLL alone frees the fused op's graph; a later KL backward still works.
    layer.zero_grad()
    layer(x).sum().backward()
    layer.kl().backward()
    assert torch.isfinite(layer.weight_rho.grad).all()
    with torch.no_grad():  # no fused op (and no cache) without gradient recording
        layer(x)
    assert layer._kl_cache is None


def test_prior_subclass_overriding_kl_is_not_bypassed_by_fusion():
    class HalfKL(bayescale.GaussianPrior):
        def kl(self, mu, sigma):
            return 0.5 * super().kl(mu, sigma)

    layer = bayescale.BayesLinear(6, 4, prior=HalfKL())
    layer(torch.randn(3, 6))
    expected = 0.5 * _kl_ref(layer.weight_mu, layer.weight_sigma, layer.prior)
    torch.testing.assert_close(layer.kl(), expected)


def _kl_ref(mu, sigma, prior):
    from oracles import gaussian_kl_naive

    return gaussian_kl_naive(mu, sigma, prior.mean, prior.std)


def test_tfp_init_caps_sigma():
    layer = bayescale.BayesLinear(50, 40, init="tfp_vgg")
    sigma = layer.weight_sigma
    assert abs(sigma.mean().item() - F.softplus(torch.tensor(-9.0)).item()) < 2e-5
    with torch.no_grad():
        layer.weight_rho.fill_(3.0)
    cap = F.softplus(torch.tensor(math.log(0.2))).item()
    assert torch.allclose(layer.weight_sigma, torch.full_like(sigma, cap))


def test_tutorial_init_statistics():
    torch.manual_seed(0)
    layer = bayescale.BayesConv2d(16, 32, 5)
    n = layer.weight_mu.numel()
    assert abs(layer.weight_mu.std().item() - 0.1) < 5 * 0.1 / math.sqrt(2 * n)
    assert abs(layer.weight_rho.mean().item() + 3.0) < 5 * 0.1 / math.sqrt(n)


def test_repr_shows_sizes_estimator_prior():
    r = repr(bayescale.BayesConv2d(3, 8, (3, 5), groups=1, estimator="local",
                                   prior=bayescale.GaussianPrior(0.0, 0.5)))
    assert "3, 8, kernel_size=(3, 5)" in r and "estimator=local" in r and "std=0.5" in r


@pytest.mark.parametrize("make, x, match", [
    (lambda: bayescale.BayesLinear(4, 2), torch.randn(3, 5), "shape"),
    (lambda: bayescale.BayesLinear(4, 2), torch.ones(3, 4, dtype=torch.long), "floating"),
    (lambda: bayescale.BayesConv2d(3, 2, 3), torch.randn(1, 4, 8, 8), "in_channels"),
    (lambda: bayescale.BayesConv2d(3, 2, 3), torch.randn(8, 8), "shape"),
])
def test_bad_inputs_are_named(make, x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()(x)


@pytest.mark.parametrize("kwargs, match", [
    ({"estimator": "flip"}, "unknown estimator"),
    ({"prior": "laplace"}, "unknown prior"),
    ({"prior": bayescale.GaussianPrior}, "prior must be"),
    ({"init": "xavier"}, "unknown init"),
])
def test_bad_options_are_named(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bayescale.BayesLinear(4, 2, **kwargs)


def test_bad_conv_arguments():
    with pytest.raises(ValueError, match="divisible by groups"):
        bayescale.BayesConv2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="stride 1"):
        bayescale.BayesConv2d(3, 4, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding_mode"):
        bayescale.BayesConv2d(3, 4, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="MOPED"):
        bayescale.BayesLinear(3, 4, init=bayescale.moped(0.1))
