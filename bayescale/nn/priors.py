"""Weight priors p(w) and posterior initialisations for the mean-field layers.

A prior is anything with ``kl(mu, sigma) -> Tensor`` (KL(q || p) summed over all entries, for
q = N(mu, sigma^2) elementwise) and ``log_prob(w) -> Tensor`` (elementwise). Priors hold only
scalars: there is no per-weight prior state.

Posterior initialisations (:class:`PosteriorInit`) say how ``mu`` and ``rho`` start:
``"tutorial"`` is the seed tutorial's (TFP default), ``"tfp_vgg"`` the TFP VGG/ResNet one, and
:func:`moped` copies pretrained weights (Krishnan et al. 2020).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "Prior",
    "GaussianPrior",
    "ScaleMixturePrior",
    "PosteriorInit",
    "INIT_PRESETS",
    "moped",
    "resolve_prior",
    "resolve_init",
    "softplus_inverse",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@runtime_checkable
class Prior(Protocol):
    """What a layer needs from a prior."""

    def kl(self, mu: Tensor, sigma: Tensor) -> Tensor:
        """KL(N(mu, sigma^2) || p), summed over all entries (a 0-dim tensor)."""
        ...

    def log_prob(self, w: Tensor) -> Tensor:
        """Elementwise log density of the prior at ``w``."""
        ...


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return value


class GaussianPrior:
    """Isotropic Gaussian prior N(mean, std^2) with the closed-form KL.

    The seed's prior is N(0, 1) (TFP ``default_multivariate_normal_fn``).
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if not math.isfinite(float(mean)):
            raise ValueError(f"prior mean must be finite, got {mean!r}")
        self.mean = float(mean)
        self.std = _check_positive("prior std", std)

    def kl(self, mu: Tensor, sigma: Tensor) -> Tensor:
        """sum_j [log(s / sigma_j) + (sigma_j^2 + (mu_j - m)^2) / (2 s^2) - 1/2]."""
        return _GaussianKL.apply(mu, sigma, self.mean, self.std)

    def posterior_and_kl(self, mu: Tensor, rho: Tensor, sample: bool) -> tuple[Tensor, Tensor]:
        """(W = mu + softplus(rho) * eps, KL) if ``sample`` else (softplus(rho), KL), fused."""
        return _PosteriorAndKL.apply(mu, rho, self.mean, self.std, sample)

    def log_prob(self, w: Tensor) -> Tensor:
        return -0.5 * ((w - self.mean) / self.std).square() - math.log(self.std) - _HALF_LOG_2PI

    def __repr__(self) -> str:
        return f"GaussianPrior(mean={self.mean:g}, std={self.std:g})"


def _gaussian_kl_value(mu: Tensor, sigma: Tensor, mean: float, std: float) -> Tensor:
    diff = mu - mean if mean != 0.0 else mu
    quad = torch.linalg.vector_norm(sigma).square() + torch.linalg.vector_norm(diff).square()
    return quad / (2.0 * std**2) - torch.log(sigma).sum() + mu.numel() * (math.log(std) - 0.5)


class _PosteriorAndKL(torch.autograd.Function):
    """(W, KL) or (sigma, KL) from (mu, rho) with sigma = softplus(rho), one pass each way.

    The training forward of a layer needs sigma (and, for reparam, W = mu + sigma * eps) and the
    ELBO needs KL(q || N(m, s^2)); computing both here shares softplus(rho) and folds the three
    gradient paths into one backward:
        d/dmu  = dL/dW + g_kl (mu - m) / s^2
        d/drho = (dL/dW * eps + g_kl (sigma / s^2 - 1 / sigma)) * sigmoid(rho)
    (for the sigma output, dL/dsigma replaces dL/dW * eps and mu gets only the KL term).
    """

    @staticmethod
    def forward(ctx, mu: Tensor, rho: Tensor, mean: float, std: float, sample: bool):
        sigma = torch.nn.functional.softplus(rho)
        kl = _gaussian_kl_value(mu, sigma, mean, std)
        ctx.mean, ctx.std, ctx.sample = mean, std, sample
        if sample:
            eps = torch.randn_like(sigma)
            ctx.save_for_backward(mu, rho, sigma, eps)
            return torch.addcmul(mu, sigma, eps), kl
        ctx.save_for_backward(mu, rho, sigma)
        return sigma, kl

    @staticmethod
    def backward(ctx, g_out: Tensor, g_kl: Tensor):
        mu, rho, sigma, *eps = ctx.saved_tensors
        c = g_kl / ctx.std**2
        d_sigma = torch.addcdiv(sigma * c, g_kl, sigma, value=-1.0)  # g_kl (sigma/s^2 - 1/sigma)
        diff = mu - ctx.mean if ctx.mean != 0.0 else mu
        if ctx.sample:
            d_sigma.addcmul_(g_out, eps[0])
            grad_mu = torch.addcmul(g_out, diff, c)
        else:
            d_sigma.add_(g_out)
            grad_mu = diff * c
        return grad_mu, d_sigma.mul_(torch.sigmoid(rho)), None, None, None


class _GaussianKL(torch.autograd.Function):
    """Closed-form Gaussian KL with a hand-written backward (one pass each way, no graph):
    d/dmu = (mu - m) / s^2 and d/dsigma = sigma / s^2 - 1 / sigma.
    """

    @staticmethod
    def forward(ctx, mu: Tensor, sigma: Tensor, mean: float, std: float) -> Tensor:
        ctx.save_for_backward(mu, sigma)
        ctx.mean, ctx.std = mean, std
        return _gaussian_kl_value(mu, sigma, mean, std)

    @staticmethod
    def backward(ctx, grad: Tensor):
        mu, sigma = ctx.saved_tensors
        scale = grad / ctx.std**2
        grad_mu = (mu - ctx.mean) * scale if ctx.needs_input_grad[0] else None
        grad_sigma = None
        if ctx.needs_input_grad[1]:
            grad_sigma = sigma * scale - grad / sigma
        return grad_mu, grad_sigma, None, None


class ScaleMixturePrior:
    """Two-Gaussian scale mixture pi N(0, std1^2) + (1 - pi) N(0, std2^2) (Blundell et al. 2015).

    No closed-form KL exists: ``kl`` is a Monte Carlo estimate, exact entropy of q minus the
    sampled cross-entropy E_q[log p(w)] (``num_samples`` draws, unbiased).

    References:
        Blundell et al., "Weight Uncertainty in Neural Networks", ICML 2015, arXiv:1505.05424.
    """

    def __init__(
        self, pi: float = 0.5, std1: float = 1.0, std2: float = 0.0025, num_samples: int = 1
    ) -> None:
        pi = float(pi)
        if not 0.0 < pi < 1.0:
            raise ValueError(f"mixture weight pi must be in (0, 1), got {pi!r}")
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
        self.pi = pi
        self.std1 = _check_positive("prior std1", std1)
        self.std2 = _check_positive("prior std2", std2)
        self.num_samples = int(num_samples)

    def log_prob(self, w: Tensor) -> Tensor:
        lp1 = math.log(self.pi) - math.log(self.std1) - 0.5 * (w / self.std1).square()
        lp2 = math.log1p(-self.pi) - math.log(self.std2) - 0.5 * (w / self.std2).square()
        return torch.logaddexp(lp1, lp2) - _HALF_LOG_2PI

    def kl(self, mu: Tensor, sigma: Tensor) -> Tensor:
        neg_entropy = -torch.log(sigma).sum() - mu.numel() * (0.5 + _HALF_LOG_2PI)
        cross = 0.0
        for _ in range(self.num_samples):
            w = mu + sigma * torch.randn_like(sigma)
            cross = cross + self.log_prob(w).sum()
        return neg_entropy - cross / self.num_samples

    def __repr__(self) -> str:
        return f"ScaleMixturePrior(pi={self.pi:g}, std1={self.std1:g}, std2={self.std2:g})"


_PRIORS = {"gaussian": GaussianPrior, "normal": GaussianPrior, "scale_mixture": ScaleMixturePrior}


def resolve_prior(prior: Prior | str | None) -> Prior:
    """``None`` -> N(0, 1); a name in ("gaussian", "scale_mixture") -> its default; else as is."""
    if prior is None:
        return GaussianPrior()
    if isinstance(prior, str):
        if prior not in _PRIORS:
            raise ValueError(f"unknown prior {prior!r}; choose one of {sorted(_PRIORS)}")
        return _PRIORS[prior]()
    if isinstance(prior, type):
        raise TypeError(
            f"prior must be an instance, got the class {prior.__name__}; "
            f"pass {prior.__name__}(...)"
        )
    if not isinstance(prior, Prior):
        raise TypeError(
            f"prior must be a name or an object with kl(mu, sigma) and log_prob(w), "
            f"got {type(prior).__name__}"
        )
    return prior


@dataclass(frozen=True)
class PosteriorInit:
    """How a layer's posterior starts.

    Attributes:
        mu_std: mu ~ N(0, mu_std^2) for fresh layers (TFP loc initializer: 0.1).
        rho_mean, rho_std: rho ~ N(rho_mean, rho_std^2); sigma = softplus(rho).
        rho_max: if set, sigma is computed from min(rho, rho_max), capping sigma at
            softplus(rho_max) (TFP VGG/ResNet clip rho at log 0.2).
        moped_delta: if set, mu = pretrained w and sigma = delta * |w| (needs a module to copy).
    """

    mu_std: float = 0.1
    rho_mean: float = -3.0
    rho_std: float = 0.1
    rho_max: float | None = None
    moped_delta: float | None = None

    def __post_init__(self) -> None:
        if self.mu_std < 0 or self.rho_std < 0:
            raise ValueError("mu_std and rho_std must be >= 0")
        if self.moped_delta is not None:
            _check_positive("moped delta", self.moped_delta)


INIT_PRESETS: dict[str, PosteriorInit] = {
    # Seed tutorial / TFP layer defaults: mu ~ N(0, 0.1^2), rho ~ N(-3, 0.1^2) (sigma ~ 0.049).
    "tutorial": PosteriorInit(),
    # TFP bayesian_vgg / bayesian_resnet: near-deterministic start, sigma <= softplus(log 0.2).
    "tfp_vgg": PosteriorInit(rho_mean=-9.0, rho_max=math.log(0.2)),
}


def moped(delta: float = 0.1) -> PosteriorInit:
    """MOPED init: mu = w, sigma = delta * |w| from pretrained weights.

    References:
        Krishnan et al., "Specifying Weight Priors in Bayesian Deep Neural Networks with
        Empirical Bayes", AAAI 2020, arXiv:1906.05323.
    """
    return PosteriorInit(moped_delta=delta)


def resolve_init(init: PosteriorInit | str | None) -> PosteriorInit:
    if init is None:
        return INIT_PRESETS["tutorial"]
    if isinstance(init, str):
        if init not in INIT_PRESETS:
            raise ValueError(f"unknown init {init!r}; choose one of {sorted(INIT_PRESETS)}")
        return INIT_PRESETS[init]
    if not isinstance(init, PosteriorInit):
        raise TypeError(f"init must be a preset name or PosteriorInit, got {type(init).__name__}")
    return init


def softplus_inverse(sigma: Tensor) -> Tensor:
    """rho with softplus(rho) = sigma, stable for small and large sigma (sigma > 0)."""
    return sigma + torch.log(-torch.expm1(-sigma))
