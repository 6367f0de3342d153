"""Monte Carlo prediction from the weight posterior (or from a collection of weight samples).

Each MC sample is ONE network: one weight draw (:func:`bayescale.fixed_sample`) shared by every
input, so inference costs one plain forward per sample whatever estimator the model was trained
with (no Flipout doubling, no local-reparameterization noise). Memory is bounded by the input
chunk (``batch_size``) and the (N, C) running sum; it does not grow with the number of samples
unless ``return_samples=True``.

``model`` may also be a sequence of modules (an ensemble, or weight samples collected by an
SG-MCMC optimizer such as Ke & Fan's SGHMC): each member is one sample of the Bayesian model
average. Uncertainty decompositions live in :mod:`bayescale.uncertainty.decomposition` (re-exported
here).

References:
    Gal & Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016 (MC averaging).
    Blundell et al. 2015, arXiv:1505.05424, section 3 (predictive by sampling weights).
    Kendall & Gal 2017, arXiv:1703.04977, eq. (9) (regression aleatoric/epistemic split).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.sampling import bayesian_layers, draws, fixed_sample
from .decomposition import (
    decompose,
    decompose_regression,
    expected_entropy,
    mutual_information,
    predictive_entropy,
    predictive_variance,
)

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "TASKS",
    "RegressionPrediction",
    "mc_predict",
    "timed_mc_predict",
    "decompose",
    "decompose_regression",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "predictive_variance",
]

DEFAULT_NUM_SAMPLES = 100  # weight draws when num_samples is None and model is one module
TASKS = ("classification", "regression")


@dataclass
class RegressionPrediction:
    """Predictive mean and variance split of a regression model, per input (and output dim).

    ``total = aleatoric + epistemic`` is the variance of the predictive mixture (law of total
    variance): aleatoric = mean over samples of the noise variance, epistemic = variance over
    samples of the mean (population, 1/T). ``samples_mean``/``samples_var`` are the per-sample
    values (T, N, ...) when ``return_samples=True`` (``samples_var`` is None for a mean-only
    model with a fixed ``noise_std``).
    """

    mean: Tensor
    aleatoric: Tensor
    epistemic: Tensor
    total: Tensor
    samples_mean: Tensor | None = None
    samples_var: Tensor | None = None


# ------------------------------------------------------------------ input checks
def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert with "
                        "x.float() (and scale images to [0, 1] if they are uint8)")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(f"x must hold a batch of inputs (N, ...) with N >= 1, got "
                         f"{tuple(x.shape)}")
    bad = ~torch.isfinite(x)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"x contains NaN/Inf at index {idx}, clean the inputs (drop or impute "
                         "those rows, e.g. torch.nan_to_num) before predicting")


def _members(model: nn.Module | Sequence[nn.Module], num_samples: int | None,
             ) -> tuple[list[nn.Module] | None, int]:
    """(ensemble members, or None for one model; number of MC samples T)."""
    if isinstance(model, nn.Module) and not isinstance(model, nn.ModuleList):
        t = DEFAULT_NUM_SAMPLES if num_samples is None else num_samples
        if isinstance(t, bool) or not isinstance(t, int):
            raise TypeError(f"num_samples must be an int, got {num_samples!r}")
        if t < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        return None, t
    if isinstance(model, str | bytes) or not isinstance(model, Sequence | nn.ModuleList):
        raise TypeError(f"model must be an nn.Module or a sequence of nn.Modules, got "
                        f"{type(model).__name__}")
    members = list(model)
    if not members or not all(isinstance(m, nn.Module) for m in members):
        raise TypeError("a model sequence must hold at least one nn.Module and nothing else")
    if num_samples is not None and num_samples != len(members):
        raise ValueError(f"a sequence of {len(members)} models gives {len(members)} samples; "
                         f"pass num_samples=None (or {len(members)}), got {num_samples}")
    return members, len(members)


def _stochastic(model: nn.Module) -> bool:
    """Does a forward of ``model`` sample? (Bayesian layers, or dropout in training mode.)"""
    return bool(bayesian_layers(model)) or any(
        isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
        for m in model.modules())


def _warn_batchnorm(model: nn.Module) -> None:
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
           for m in model.modules()):
        warnings.warn("mc_predict: the model has BatchNorm in training mode, so predictions use "
                      "batch statistics and update the running ones; call model.eval() first "
                      "(Bayesian layers still sample in eval mode)", stacklevel=3)


def _device(model: nn.Module, fallback: torch.device) -> torch.device:
    p = next(model.parameters(), None)
    return fallback if p is None else p.device


# ------------------------------------------------------------------ the passes
def _outputs(model: nn.Module | Sequence[nn.Module], members: list[nn.Module] | None,
             num_passes: int, x: Tensor, batch_size: int, k: int
             ) -> Iterator[tuple[int, slice, Tensor]]:
    """(pass t, input slice, model output) for every MC pass and input chunk.

    Each slice sees t = 0, 1, 2, ... in order. One model with Bayesian layers and ``k > 1`` runs
    ``k`` weight draws per forward (:func:`~bayescale.nn.sampling.draws`) on chunks of
    ``max(1, batch_size // k)`` inputs repeated ``k`` times; the draws are the ones the loop of
    :func:`~bayescale.nn.sampling.fixed_sample` passes would make.
    """
    if members is None and k > 1 and bayesian_layers(model):
        device, rows = _device(model, x.device), max(1, batch_size // k)
        for t0 in range(0, num_passes, k):
            kk = min(k, num_passes - t0)
            with draws(model, kk):
                for i in range(0, x.shape[0], rows):
                    sl = slice(i, i + rows)
                    xb = x[sl].to(device, non_blocking=True)
                    out = model(xb.repeat(kk, *([1] * (xb.dim() - 1))))
                    for j, part in enumerate(out.chunk(kk)):
                        yield t0 + j, sl, part
        return
    for t in range(num_passes):
        net = model if members is None else members[t]
        ctx = fixed_sample(net) if bayesian_layers(net) else contextlib.nullcontext()
        device = _device(net, x.device)
        with ctx:
            for i in range(0, x.shape[0], batch_size):
                sl = slice(i, i + batch_size)
                yield t, sl, net(x[sl].to(device, non_blocking=True))


def _classify(outputs, num_passes: int, x: Tensor, keep: bool) -> Tensor:
    out: Tensor | None = None
    for t, sl, logits in outputs:
        if logits.dim() != 2:
            raise ValueError(f"classification expects logits (N, C) from the model, got "
                             f"{tuple(logits.shape)}; use task='regression' otherwise")
        probs = torch.softmax(logits.float(), dim=-1)
        if out is None:  # preallocated: no (T, N, C) copy from a final stack
            shape = (num_passes, *_full(probs, x)) if keep else _full(probs, x)
            out = probs.new_zeros(shape)
        if keep:
            out[t, sl] = probs.to(out.device)
        else:  # running sum: memory stays (N, C) whatever the number of samples
            out[sl] += probs.to(out.device)
    return out if keep else out.div_(num_passes)


def _full(chunk: Tensor, x: Tensor) -> tuple[int, ...]:
    return (x.shape[0], *chunk.shape[1:])


def _split_head(out: Tensor, noise_std: float | None) -> tuple[Tensor, Tensor | None]:
    """(mean, variance or None) of one regression forward, in float64."""
    if noise_std is not None:
        return out.double(), None
    if out.dim() != 2 or out.shape[1] != 2:
        raise ValueError(f"regression without noise_std expects a heteroscedastic head (N, 2) = "
                         f"(mean, log-variance), got {tuple(out.shape)}; pass noise_std=... for "
                         "a model that outputs the mean only")
    mean, log_var = out.double().unbind(-1)
    return mean, log_var.exp()


def _regress(outputs, num_passes: int, x: Tensor, keep: bool,
             noise_std: float | None) -> RegressionPrediction:
    # Welford's running mean / sum of squared deviations of the per-sample means (float64).
    mean = m2 = ale = s_mean = s_var = None
    dtype = torch.float32
    for t, sl, out in outputs:
        m, v = _split_head(out, noise_std)
        if mean is None:
            dtype = torch.promote_types(out.dtype, torch.float32)
            mean, m2 = m.new_zeros(_full(m, x)), m.new_zeros(_full(m, x))
            ale = m.new_zeros(_full(m, x)) if v is not None else None
            if keep:
                s_mean = m.new_zeros((num_passes, *_full(m, x)), dtype=dtype)
                s_var = None if v is None else torch.zeros_like(s_mean)
        m = m.to(mean.device)
        delta = m - mean[sl]
        mean[sl] += delta / (t + 1)
        m2[sl] += delta * (m - mean[sl])
        if v is not None:
            ale[sl] += v.to(ale.device)
        if keep:
            s_mean[t, sl] = m.to(dtype)
            if v is not None:
                s_var[t, sl] = v.to(s_var.device, dtype)
    epistemic = m2 / num_passes
    aleatoric = ale / num_passes if ale is not None else torch.full_like(mean, noise_std**2)
    return RegressionPrediction(mean.to(dtype), aleatoric.to(dtype), epistemic.to(dtype),
                                (aleatoric + epistemic).to(dtype), s_mean, s_var)


# ------------------------------------------------------------------ public API
@torch.no_grad()
def mc_predict(
    model: nn.Module | Sequence[nn.Module],
    x: Tensor,
    num_samples: int | None = None,
    *,
    batch_size: int = 1024,
    return_samples: bool = False,
    task: str = "classification",
    noise_std: float | None = None,
    draws_per_pass: int = 1,
) -> Tensor | RegressionPrediction:
    """Monte Carlo predictive distribution: average over T weight samples.

    Args:
        model: a network (Bayesian layers are sampled, one draw per MC sample shared by all
            inputs), or a sequence of networks (ensemble / collected weight samples: each member
            is one sample; members with Bayesian layers are sampled the same way). Call
            ``model.eval()`` first if it has BatchNorm; dropout left in training mode makes
            the passes stochastic (MC dropout).
        x: inputs (N, ...), floating point, finite; chunks are moved to the model's device.
        num_samples: T, the number of weight draws (default 100 for one model; for a sequence
            None or ``len(model)``). A model without Bayesian layers or active dropout is run
            ONCE (its T passes would be identical).
        batch_size: inputs per forward; bounds activation memory.
        return_samples: also keep every sample: per-sample probabilities (T, N, C) instead of
            their mean, or ``samples_mean``/``samples_var`` for regression.
        task: ``"classification"`` (the model returns logits (N, C)) or ``"regression"``.
        noise_std: regression only: the model outputs the mean and the observation noise is
            homoscedastic with this sd (``likelihood="gaussian"``). If None, the model must
            output (N, 2) = (mean, log-variance) (``likelihood="heteroscedastic"``).
        draws_per_pass: K weight draws per forward for one model with Bayesian layers
            (:func:`bayescale.nn.sampling.draws`: one ``bmm`` per Linear, one grouped
            convolution per conv layer, on ``batch_size // K`` inputs repeated K times, so a
            forward still holds about ``batch_size`` rows). Same draws as the loop (K = 1)
            under the same RNG state, unless the forward itself draws random numbers (dropout).

    Returns:
        classification: mean softmax probabilities (N, C) float32, or (T, N, C) with
        ``return_samples``; regression: a :class:`RegressionPrediction`.
    """
    members, num_passes = _members(model, num_samples)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(draws_per_pass, bool) or not isinstance(draws_per_pass, int) \
            or draws_per_pass < 1:
        raise ValueError(f"draws_per_pass must be a positive int, got {draws_per_pass!r}")
    if noise_std is not None and (task != "regression" or not noise_std > 0):
        raise ValueError(f"noise_std (> 0) applies to task='regression' only, got {noise_std!r} "
                         f"with task={task!r}")
    _check_x(x)
    nets = [model] if members is None else members
    for net in nets:
        _warn_batchnorm(net)
    total = num_passes
    if members is None and not _stochastic(model):
        num_passes = 1  # deterministic network: one pass gives every sample
    outputs = _outputs(model, members, num_passes, x, batch_size, draws_per_pass)
    if task == "classification":
        probs = _classify(outputs, num_passes, x, return_samples)
        if return_samples and num_passes < total:
            probs = probs.repeat(total, 1, 1)
        return probs
    pred = _regress(outputs, num_passes, x, return_samples, noise_std)
    if return_samples and num_passes < total:
        reps = (total,) + (1,) * (pred.samples_mean.dim() - 1)
        pred.samples_mean = pred.samples_mean.repeat(reps)
        if pred.samples_var is not None:
            pred.samples_var = pred.samples_var.repeat(reps)
    return pred


def timed_mc_predict(*args: Any, **kwargs: Any) -> tuple[Tensor | RegressionPrediction, float]:
    """:func:`mc_predict` and its wall time in seconds (BPrune's "inference runtime").

    The time covers the T forward passes, softmax and averaging (CUDA is synchronised before
    reading the clock). Arguments are those of :func:`mc_predict`.
    """
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    result = mc_predict(*args, **kwargs)
    sync()
    return result, time.perf_counter() - start
