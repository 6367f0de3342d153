"""Priors: closed-form KL vs Monte Carlo and a textbook formula; mixture KL vs quadrature."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from oracles import gaussian_kl_naive, mixture_kl_quadrature

import bayescale
from bayescale.nn.priors import softplus_inverse


def test_gaussian_kl_matches_textbook_and_gradients():
    mu = torch.randn(40, dtype=torch.float64, requires_grad=True)
    rho = torch.randn(40, dtype=torch.float64, requires_grad=True)
    prior = bayescale.GaussianPrior(mean=0.3, std=0.7)
    kl = prior.kl(mu, F.softplus(rho))
    ref = gaussian_kl_naive(mu, F.softplus(rho), 0.3, 0.7)
    torch.testing.assert_close(kl, ref, rtol=1e-12, atol=1e-12)
    g = torch.autograd.grad(kl, (mu, rho))
    g_ref = torch.autograd.grad(ref, (mu, rho))
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda m, r: prior.kl(m, F.softplus(r)), (mu.detach().requires_grad_(),
                                                  rho.detach().requires_grad_()))


def test_gaussian_kl_equals_monte_carlo_within_standard_error():
    torch.manual_seed(0)
    mu = torch.randn(20, dtype=torch.float64) * 0.5
    sigma = torch.rand(20, dtype=torch.float64) * 0.5 + 0.1
    prior = bayescale.GaussianPrior(0.0, 1.0)
    n = 20000
    w = mu + sigma * torch.randn(n, 20, dtype=torch.float64)
    log_q = torch.distributions.Normal(mu, sigma).log_prob(w).sum(1)
    log_p = prior.log_prob(w).sum(1)
    est = log_q - log_p
    se = est.std() / math.sqrt(n)
    assert abs(est.mean() - prior.kl(mu, sigma)) < 5 * se


def test_kl_is_zero_at_the_prior():
    prior = bayescale.GaussianPrior(0.2, 0.5)
    mu = torch.full((7,), 0.2, dtype=torch.float64)
    assert abs(prior.kl(mu, torch.full_like(mu, 0.5))) < 1e-12


def test_scale_mixture_kl_matches_quadrature():
    prior = bayescale.ScaleMixturePrior(pi=0.25, std1=1.0, std2=0.05, num_samples=1)
    torch.manual_seed(0)
    cases = [(0.3, 0.1), (-0.02, 0.01), (1.2, 0.4)]
    for m, s in cases:
        n = 40000
        mu = torch.full((n,), m, dtype=torch.float64)
        sigma = torch.full((n,), s, dtype=torch.float64)
        # n single-sample estimates of one weight's KL, via the summed KL of n copies.
        per = []
        for _ in range(20):
            per.append(prior.kl(mu, sigma) / n)
        est = torch.stack(per)
        exact = mixture_kl_quadrature(m, s, 0.25, 1.0, 0.05)
        # Each of the 20 batches averages n draws; their spread gives the standard error.
        se = est.std() / math.sqrt(len(per))
        assert abs(est.mean() - exact) < 5 * se + 1e-9, (m, s, float(est.mean()), exact)


def test_scale_mixture_log_prob_matches_torch_mixture():
    prior = bayescale.ScaleMixturePrior(0.3, 2.0, 0.1)
    w = torch.linspace(-3, 3, 101, dtype=torch.float64)
    ref = torch.logsumexp(torch.stack([
        math.log(0.3) + torch.distributions.Normal(0.0, 2.0).log_prob(w),
        math.log(0.7) + torch.distributions.Normal(0.0, 0.1).log_prob(w),
    ]), 0)
    torch.testing.assert_close(prior.log_prob(w), ref)


def test_softplus_inverse_round_trip():
    s = torch.logspace(-8, 2, 50, dtype=torch.float64)
    torch.testing.assert_close(F.softplus(softplus_inverse(s)), s, rtol=1e-10, atol=0)


@pytest.mark.parametrize("ctor, match", [
    (lambda: bayescale.GaussianPrior(std=0.0), "std"),
    (lambda: bayescale.GaussianPrior(std=-1.0), "std"),
    (lambda: bayescale.GaussianPrior(mean=float("nan")), "mean"),
    (lambda: bayescale.ScaleMixturePrior(pi=1.0), "pi"),
    (lambda: bayescale.ScaleMixturePrior(std2=0.0), "std2"),
    (lambda: bayescale.moped(-0.1), "delta"),
])
def test_bad_prior_arguments(ctor, match):
    with pytest.raises(ValueError, match=match):
        ctor()


def test_layer_with_mixture_prior_trains():
    layer = bayescale.BayesLinear(3, 2, prior=bayescale.ScaleMixturePrior())
    kl = layer.kl()
    kl.backward()
    assert torch.isfinite(kl) and layer.weight_rho.grad.abs().sum() > 0
