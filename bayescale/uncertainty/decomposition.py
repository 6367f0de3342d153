"""Total / aleatoric / epistemic uncertainty from Monte Carlo samples (pure tensor functions).

Classification, from per-sample probabilities p_t = p(y | x, w_t), shape (T, N, C), in nats:

    total     = H[ mean_t p_t ]                       (predictive entropy)
    aleatoric = mean_t H[ p_t ]                       (expected entropy)
    epistemic = total - aleatoric = I(y; w | x)       (mutual information, >= 0)

with H[p] = -sum_c p_c log p_c and 0 log 0 = 0. Bounds: 0 <= epistemic <= total <= log C and
aleatoric <= log C. Regression, from per-sample means m_t and variances v_t (law of total
variance): aleatoric = mean_t v_t, epistemic = Var_t m_t (population, 1/T), total = their sum.

References:
    Depeweg et al., "Decomposition of Uncertainty in Bayesian Deep Learning for Efficient and
    Risk-sensitive Learning", ICML 2018, arXiv:1710.07283 (eq. 9-10).
    Houlsby et al., "Bayesian Active Learning for Classification and Preference Learning",
    2011, arXiv:1112.5745 (BALD: mutual information).
    Kendall & Gal, "What Uncertainties Do We Need in Bayesian Deep Learning for Computer
    Vision?", NeurIPS 2017, arXiv:1703.04977 (eq. 9: regression split).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "PredictiveVariance",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "predictive_variance",
    "decompose",
    "decompose_regression",
]


class PredictiveVariance(NamedTuple):
    """Variance of the class probabilities over the MC samples."""

    per_class: Tensor  # (N, C): Var_t p_t[c] (population, 1/T)
    total: Tensor  # (N,): sum over classes of per_class


def _check_samples(sample_probs: Tensor) -> None:
    if not isinstance(sample_probs, Tensor) or not sample_probs.is_floating_point():
        raise TypeError("sample_probs must be a floating-point tensor (T, N, C) of probabilities")
    if sample_probs.dim() != 3 or sample_probs.shape[0] < 1:
        raise ValueError(
            f"sample_probs must have shape (T, N, C) with T >= 1, got {tuple(sample_probs.shape)};"
            " get it from mc_predict(..., return_samples=True) (add a leading dim for one sample)"
        )


def _entropy(probs: Tensor) -> Tensor:
    """-sum_c p_c log p_c over the last dim, in float64, with 0 log 0 = 0."""
    p = probs.double()
    return -torch.special.xlogy(p, p).sum(-1)


def predictive_entropy(mean_probs: Tensor) -> Tensor:
    """Total uncertainty H[mean_t p_t] (nats), one value per input: (..., C) -> (...)."""
    if not isinstance(mean_probs, Tensor) or not mean_probs.is_floating_point():
        raise TypeError("mean_probs must be a floating-point tensor (..., C) of probabilities")
    return _entropy(mean_probs).to(mean_probs.dtype)


def expected_entropy(sample_probs: Tensor) -> Tensor:
    """Aleatoric uncertainty mean_t H[p_t] (nats): (T, N, C) -> (N,)."""
    _check_samples(sample_probs)
    return _entropy(sample_probs).mean(0).to(sample_probs.dtype)


def mutual_information(sample_probs: Tensor) -> Tensor:
    """Epistemic uncertainty H[mean_t p_t] - mean_t H[p_t] (nats), clamped at 0: (T, N, C) -> (N,).

    Mathematically >= 0 (Jensen); tiny negative values from rounding are clamped to 0.
    """
    return decompose(sample_probs)["epistemic"]


def predictive_variance(sample_probs: Tensor) -> PredictiveVariance:
    """Per-class variance of the probabilities over samples (1/T) and its sum over classes."""
    _check_samples(sample_probs)
    var = sample_probs.double().var(0, correction=0)
    return PredictiveVariance(var.to(sample_probs.dtype), var.sum(-1).to(sample_probs.dtype))


def decompose(sample_probs: Tensor) -> dict[str, Tensor]:
    """Split predictive uncertainty into total = aleatoric + epistemic, per input (nats).

    Args:
        sample_probs: per-sample probabilities (T, N, C), e.g.
            ``mc_predict(model, x, T, return_samples=True)``.

    Returns:
        ``{"total": (N,), "aleatoric": (N,), "epistemic": (N,)}`` in the input dtype; the sums
        are computed in float64 and ``epistemic = max(total - aleatoric, 0)``.
    """
    _check_samples(sample_probs)
    total = _entropy(sample_probs.double().mean(0))
    aleatoric = _entropy(sample_probs).mean(0)
    epistemic = (total - aleatoric).clamp_min(0.0)
    dtype = sample_probs.dtype
    return {"total": total.to(dtype), "aleatoric": aleatoric.to(dtype),
            "epistemic": epistemic.to(dtype)}


def decompose_regression(sample_means: Tensor, sample_vars: Tensor | float) -> dict[str, Tensor]:
    """Regression split by the law of total variance, per output.

    Args:
        sample_means: predicted means m_t, shape (T, N, ...).
        sample_vars: predicted noise variances v_t, same shape, or one float (homoscedastic
            noise_std**2).

    Returns:
        ``{"mean": mean_t m_t, "aleatoric": mean_t v_t, "epistemic": Var_t m_t (1/T),
        "total": aleatoric + epistemic}``, each of shape (N, ...).
    """
    if not isinstance(sample_means, Tensor) or sample_means.dim() < 2:
        raise ValueError("sample_means must be a tensor (T, N, ...) of per-sample means")
    m = sample_means.double()
    if isinstance(sample_vars, Tensor):
        if sample_vars.shape != sample_means.shape:
            raise ValueError(f"sample_vars must match sample_means {tuple(sample_means.shape)}, "
                             f"got {tuple(sample_vars.shape)}")
        aleatoric = sample_vars.double().mean(0)
    else:
        aleatoric = torch.full_like(m[0], float(sample_vars))
    epistemic = m.var(0, correction=0)
    dtype = sample_means.dtype
    return {"mean": m.mean(0).to(dtype), "aleatoric": aleatoric.to(dtype),
            "epistemic": epistemic.to(dtype), "total": (aleatoric + epistemic).to(dtype)}
