"""The ELBO convention: loss = mean NLL + kl_weight * KL / num_train, pinned numerically."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from oracles import blr_posterior, gaussian_kl_naive
from torch import nn

import bayescale


def _model():
    torch.manual_seed(0)
    return nn.Sequential(bayescale.BayesLinear(5, 8), nn.ReLU(),
                         bayescale.BayesLinear(8, 3, bayesian_bias=True), nn.Linear(3, 3))


def test_kl_divergence_sums_layers_and_is_zero_without_bayesian_layers():
    model = _model()
    ref = sum(gaussian_kl_naive(m.weight_mu, m.weight_sigma, 0.0, 1.0) for m in model
              if isinstance(m, bayescale.BayesianLayer))
    ref = ref + gaussian_kl_naive(model[2].bias_mu, model[2].bias_sigma, 0.0, 1.0)
    torch.testing.assert_close(bayescale.kl_divergence(model), ref, rtol=1e-5, atol=1e-3)
    assert bayescale.kl_divergence(nn.Linear(3, 2)).item() == 0.0


def test_categorical_elbo_is_mean_nll_plus_weighted_kl_over_n():
    model = _model()
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    with bayescale.mean_weights(model):
        out = model(x)
    terms = bayescale.elbo_terms(out, y, model, num_train=1000, kl_weight=0.5)
    nll = F.cross_entropy(out, y)
    kl = bayescale.kl_divergence(model)
    torch.testing.assert_close(terms.nll, nll)
    torch.testing.assert_close(terms.kl, kl)
    torch.testing.assert_close(terms.loss, nll + 0.5 * kl / 1000)
    torch.testing.assert_close(bayescale.elbo_loss(out, y, model, 1000, 0.5), terms.loss)


def test_gaussian_and_heteroscedastic_nll_match_torch_distributions():
    model = nn.Linear(2, 2)
    out = torch.randn(10, 2)
    y = torch.randn(10)
    het = bayescale.elbo_terms(out, y, model, 10, likelihood="heteroscedastic").nll
    ref = -torch.distributions.Normal(out[:, 0], out[:, 1].mul(0.5).exp()).log_prob(y).mean()
    torch.testing.assert_close(het, ref)
    gau = bayescale.elbo_terms(out[:, :1], y[:, None], model, 10, likelihood="gaussian",
                               noise_std=0.3).nll
    ref = -torch.distributions.Normal(out[:, 0], 0.3).log_prob(y).mean()
    torch.testing.assert_close(gau, ref)


def test_kl_weight_schedules():
    m = 10
    weights = [bayescale.kl_weight_blundell(i, m) for i in range(m)]
    assert math.isclose(sum(weights) / m, 1.0, rel_tol=1e-12)  # average weight is 1
    assert all(a > b for a, b in zip(weights, weights[1:], strict=False))
    assert math.isclose(weights[0], m * 2 ** (m - 1) / (2**m - 1))
    assert bayescale.kl_weight_blundell(0, 5000) > 0  # no overflow for long epochs
    assert [bayescale.kl_weight_linear(s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("args, kwargs, match", [
    ((torch.randn(4, 3), torch.tensor([0, 1, 2, 3])), {}, r"\[0, 2\]"),
    ((torch.randn(4, 3), torch.tensor([0, 1, 2, -1])), {}, "range"),
    ((torch.randn(4, 3), torch.rand(4)), {}, "integers"),
    ((torch.randn(4, 3), torch.tensor([0, 1])), {}, "logits"),
    ((torch.randn(4, 3), torch.tensor([0, 1, 2, 0])), {"likelihood": "poisson"}, "likelihood"),
    ((torch.randn(4, 1), torch.randn(4, 1)), {"likelihood": "gaussian"}, "noise_std"),
    ((torch.randn(4, 3), torch.randn(4)), {"likelihood": "heteroscedastic"}, "log-variance"),
])
def test_bad_loss_inputs(args, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bayescale.elbo_loss(*args, nn.Linear(2, 2), 100, **kwargs)


def test_bad_num_train_and_weight():
    out, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="num_train"):
        bayescale.elbo_loss(out, y, nn.Linear(2, 2), 0)
    with pytest.raises(ValueError, match="kl_weight"):
        bayescale.elbo_loss(out, y, nn.Linear(2, 2), 10, kl_weight=-1.0)


def test_elbo_training_recovers_exact_blr_posterior():
    """Bayesian linear regression with orthogonal design: the mean-field family contains the
    exact posterior, so minimising the ELBO must recover its mean and sd."""
    torch.manual_seed(0)
    n, d, noise_std = 200, 3, 0.5
    q, _ = torch.linalg.qr(torch.randn(n, d, dtype=torch.float64))
    x = q * math.sqrt(n)  # x^T x = n I  => diagonal posterior covariance
    y = x @ torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64) + noise_std * torch.randn(
        n, dtype=torch.float64)
    post_mean, post_cov = blr_posterior(x, y, noise_std, 1.0)
    post_sd = post_cov.diagonal().sqrt()

    layer = bayescale.BayesLinear(d, 1, bias=False, estimator="local", dtype=torch.float64)
    opt = torch.optim.Adam(layer.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3000)
    mu_avg, sd_avg = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    for step in range(3000):
        opt.zero_grad()
        loss = bayescale.elbo_loss(layer(x).squeeze(1), y, layer, n,
                                   likelihood="gaussian", noise_std=noise_std)
        loss.backward()
        opt.step()
        sched.step()
        if step >= 2000:  # Polyak average of the last third removes the SGD jitter
            mu_avg += layer.weight_mu.detach()[0] / 1000
            sd_avg += layer.weight_sigma.detach()[0] / 1000
    # Tolerances: 0.1 posterior sd on the mean, 5% relative on the sd (MC-gradient noise).
    assert ((mu_avg - post_mean).abs() / post_sd).max() < 0.1, (mu_avg, post_mean)
    assert ((sd_avg - post_sd).abs() / post_sd).max() < 0.05, (sd_avg, post_sd)
