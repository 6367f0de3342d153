"""The one ELBO convention of bayescale, written once.

    loss = mean_{i in batch} NLL_i  +  kl_weight * KL(q || p) / num_train

* ``KL(q || p)`` is :func:`kl_divergence`: the SUM over every Bayesian layer of ``layer.kl()``,
  itself the SUM over that layer's Bayesian parameters. Never a mean.
* ``num_train`` is the number of training examples (the whole training set, all ranks together).
* With ``kl_weight = 1`` the loss is the negative ELBO divided by ``num_train``: its minimiser is
  the variational posterior, and ``loss * num_train`` estimates -ELBO without bias.

Data-parallel training changes nothing: each rank computes this loss on its own minibatch with the
same global ``num_train``; DDP averages the gradients, which averages the NLL terms and keeps the KL
term once (every rank contributes the same KL/num_train, and the average of identical terms is that
term). Do not multiply or divide anything by the world size.

KL-weight schedules are small functions returning the ``kl_weight`` for a step; they average to 1
over an epoch (Blundell) or reach 1 after a warm-up (TFP's linear annealing).

References:
    Blundell et al., "Weight Uncertainty in Neural Networks", ICML 2015, arXiv:1505.05424,
    eq. (8)-(9).
    Sharma & Jennings 2020 (seed code): loss = NLL + KL / N_train.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import BayesianLayer

__all__ = [
    "LIKELIHOODS",
    "ELBOTerms",
    "kl_divergence",
    "elbo_terms",
    "elbo_loss",
    "kl_weight_linear",
    "kl_weight_blundell",
]

LIKELIHOODS = ("categorical", "gaussian", "heteroscedastic")
_LOG_2PI = math.log(2.0 * math.pi)


class ELBOTerms(NamedTuple):
    """The per-example negative ELBO and its two parts (``loss = nll + kl_weight*kl/num_train``)."""

    loss: Tensor
    nll: Tensor
    kl: Tensor


def kl_divergence(model: nn.Module) -> Tensor:
    """KL(q || p) of the whole model: the sum of ``layer.kl()`` over its Bayesian layers.

    Returns a 0-dim tensor (exactly 0 for a model without Bayesian layers).
    """
    kls = [m.kl() for m in model.modules() if isinstance(m, BayesianLayer)]
    if not kls:
        p = next(model.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)
    return sum(kls[1:], kls[0])


def _nll(output: Tensor, target: Tensor, likelihood: str, noise_std: float | None) -> Tensor:
    if likelihood == "categorical":
        if output.dim() != 2 or target.shape != output.shape[:1]:
            raise ValueError(
                f"categorical likelihood expects logits (N, C) and integer labels (N,), got "
                f"{tuple(output.shape)} and {tuple(target.shape)}"
            )
        if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"class labels must be integers, got dtype {target.dtype}")
        # A range check needs a host sync; on CUDA the kernel's own assertion covers it.
        if target.device.type == "cpu" and target.numel():
            lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= output.shape[1]:
                raise ValueError(
                    f"labels must lie in [0, {output.shape[1] - 1}] for {output.shape[1]} classes, "
                    f"got range [{lo}, {hi}]; check num_classes or the label encoding"
                )
        return F.cross_entropy(output.float(), target.long())
    if likelihood == "heteroscedastic":
        if output.dim() != 2 or output.shape[1] != 2 or output.shape[0] != target.shape[0]:
            raise ValueError(
                f"heteroscedastic likelihood expects outputs (N, 2) = (mean, log-variance) and "
                f"targets (N,) or (N, 1), got {tuple(output.shape)} and {tuple(target.shape)}"
            )
        mean, log_var = output.float().unbind(-1)
        y = target.float().reshape(-1)
        return 0.5 * (_LOG_2PI + log_var + (y - mean).square() * torch.exp(-log_var)).mean()
    # Gaussian with a fixed noise standard deviation.
    if noise_std is None or not noise_std > 0:
        raise ValueError(f"gaussian likelihood needs noise_std > 0, got {noise_std!r}")
    if output.shape != target.shape:
        raise ValueError(
            f"gaussian likelihood expects outputs and targets of the same shape, got "
            f"{tuple(output.shape)} and {tuple(target.shape)}"
        )
    sq = (target.float() - output.float()).square() / (2.0 * noise_std**2)
    return (sq + 0.5 * _LOG_2PI + math.log(noise_std)).reshape(output.shape[0], -1).sum(1).mean()


def elbo_terms(
    output: Tensor,
    target: Tensor,
    model: nn.Module,
    num_train: int,
    kl_weight: float = 1.0,
    *,
    likelihood: str = "categorical",
    noise_std: float | None = None,
) -> ELBOTerms:
    """The per-example negative ELBO and its parts; see the module docstring for the convention.

    Args:
        output: model output: logits (N, C); the mean (N, ...) for ``"gaussian"``; or
            (mean, log-variance) as (N, 2) for ``"heteroscedastic"``.
        target: labels (N,) or regression targets.
        model: the model whose Bayesian layers give the KL.
        num_train: training-set size N (all ranks together).
        kl_weight: multiplies KL / N (1 = the true ELBO; see the schedules below).
        likelihood: one of ``LIKELIHOODS``.
        noise_std: observation noise sd for ``"gaussian"``.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
    if isinstance(num_train, bool) or not isinstance(num_train, int) or num_train <= 0:
        raise ValueError(f"num_train must be a positive int (training-set size), got {num_train!r}")
    if not (kl_weight >= 0 and math.isfinite(kl_weight)):
        raise ValueError(f"kl_weight must be finite and >= 0, got {kl_weight!r}")
    nll = _nll(output, target, likelihood, noise_std)
    kl = kl_divergence(model)
    return ELBOTerms(nll + (kl_weight / num_train) * kl, nll, kl)


def elbo_loss(
    output: Tensor,
    target: Tensor,
    model: nn.Module,
    num_train: int,
    kl_weight: float = 1.0,
    *,
    likelihood: str = "categorical",
    noise_std: float | None = None,
) -> Tensor:
    """mean NLL + kl_weight * KL / num_train, a scalar to ``.backward()`` (see elbo_terms)."""
    return elbo_terms(
        output, target, model, num_train, kl_weight, likelihood=likelihood, noise_std=noise_std
    ).loss


def kl_weight_linear(step: int, warmup_steps: int) -> float:
    """Linear KL annealing min(1, step / warmup_steps) (TFP ``cifar10_bnn.py``; 0 -> 1).

    TFP anneals over 50 epochs: ``warmup_steps = 50 * num_train // batch_size``.
    """
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, max(0, step) / warmup_steps)


def kl_weight_blundell(batch_index: int, num_batches: int) -> float:
    """Blundell et al.'s minibatch weight pi_i = 2^(M-i) / (2^M - 1), in this module's units.

    Blundell weight the KL of minibatch i (1-based, M per epoch) by pi_i, with sum_i pi_i = 1.
    With our per-example loss that is ``kl_weight = M * pi_i`` (the weights average to 1 over an
    epoch); ``batch_index`` is 0-based here. Early minibatches carry most of the KL.
    """
    if num_batches <= 0 or not 0 <= batch_index < num_batches:
        raise ValueError(f"need 0 <= batch_index < num_batches, got {batch_index}, {num_batches}")
    i, m = batch_index + 1, num_batches
    # 2^(M-i)/(2^M-1) = 2^-i / (1 - 2^-M), computed without overflow for large M.
    return m * math.ldexp(1.0, -i) / (1.0 - math.ldexp(1.0, -m))
