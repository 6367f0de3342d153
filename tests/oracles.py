"""Closed forms and naive reference implementations the tests compare against."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gaussian_kl_naive(mu: Tensor, sigma: Tensor, m: float, s: float) -> Tensor:
    """KL(N(mu, sigma^2) || N(m, s^2)) summed, written straight from the textbook formula."""
    return (torch.log(s / sigma) + (sigma**2 + (mu - m) ** 2) / (2 * s**2) - 0.5).sum()


def mixture_kl_quadrature(mu: float, sigma: float, pi: float, s1: float, s2: float) -> float:
    """KL(N(mu, sigma^2) || pi N(0,s1^2) + (1-pi) N(0,s2^2)) by trapezoid quadrature."""
    w = torch.linspace(mu - 12 * sigma, mu + 12 * sigma, 200001, dtype=torch.float64)
    log_q = -0.5 * ((w - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    p = (pi * torch.exp(-0.5 * (w / s1) ** 2) / s1
         + (1 - pi) * torch.exp(-0.5 * (w / s2) ** 2) / s2) / math.sqrt(2 * math.pi)
    integrand = torch.exp(log_q) * (log_q - torch.log(p))
    return float(torch.trapezoid(integrand, w))


def blr_posterior(x: Tensor, y: Tensor, noise_std: float, prior_std: float):
    """Exact posterior N(mean, cov) of w for y = x w + noise, w ~ N(0, prior_std^2 I)."""
    d = x.shape[1]
    precision = x.T @ x / noise_std**2 + torch.eye(d, dtype=x.dtype) / prior_std**2
    cov = torch.linalg.inv(precision)
    return cov @ x.T @ y / noise_std**2, cov
