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

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..nn.sampling import bayesian_layers
from .decomposition import (
    decompose,
    decompose_regression,
    expected_entropy,
    mutual_information,
    predictive_entropy,
    predictive_variance,
)
from .passes import outputs

__all__ = [
    "DEFAULT_NUM_SAMPLES",
    "MCInfo",
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


# ------------------------------------------------------------------ accumulators
class _Classes:
    """Mean softmax probabilities (or all of them), and their MC standard error for "auto"."""

    def __init__(self, n: int, cap: int, keep: bool, track: bool) -> None:
        self.n, self.cap, self.keep, self.track = n, cap, keep, track
        self.out: Tensor | None = None
        self.sq: Tensor | None = None

    def add(self, t: int, sl: slice, logits: Tensor) -> None:
        if logits.dim() != 2:
            raise ValueError(f"classification expects logits (N, C) from the model, got "
                             f"{tuple(logits.shape)}; use task='regression' otherwise")
        probs = torch.softmax(logits.float(), dim=-1)
        if self.out is None:  # preallocated: no (T, N, C) copy from a final stack
            shape = (self.n, probs.shape[1])
            self.out = probs.new_zeros((self.cap, *shape) if self.keep else shape)
            if self.track:
                self.acc = probs.new_zeros(shape, dtype=torch.float64)
                self.sq = torch.zeros_like(self.acc)
        probs = probs.to(self.out.device)
        if self.keep:
            self.out[t, sl] = probs
        else:  # running sum: memory stays (N, C) whatever the number of samples
            self.out[sl] += probs
        if self.track:
            self.acc[sl] += probs
            self.sq[sl] += probs.double().square()

    def error(self, t: int) -> float:
        """Mean over inputs of the largest per-class MC standard error of the mean probability."""
        var = (self.sq - self.acc.square() / t).clamp_min(0) / (t - 1)
        return float((var / t).sqrt().amax(-1).mean())

    def result(self, t: int) -> Tensor:
        if self.keep:
            return self.out[:t].clone() if t < self.cap else self.out
        return self.out.div_(t)


class _Regression:
    """Welford's running mean and sum of squared deviations of the per-sample means (float64)."""

    def __init__(self, n: int, cap: int, keep: bool, noise_std: float | None) -> None:
        self.n, self.cap, self.keep, self.noise_std = n, cap, keep, noise_std
        self.mean = self.m2 = self.ale = self.s_mean = self.s_var = None
        self.dtype = torch.float32

    def add(self, t: int, sl: slice, out: Tensor) -> None:
        m, v = _split_head(out, self.noise_std)
        if self.mean is None:
            self.dtype = torch.promote_types(out.dtype, torch.float32)
            shape = (self.n, *m.shape[1:])
            self.mean, self.m2 = m.new_zeros(shape), m.new_zeros(shape)
            self.ale = m.new_zeros(shape) if v is not None else None
            if self.keep:
                self.s_mean = m.new_zeros((self.cap, *shape), dtype=self.dtype)
                self.s_var = None if v is None else torch.zeros_like(self.s_mean)
        m = m.to(self.mean.device)
        delta = m - self.mean[sl]
        self.mean[sl] += delta / (t + 1)
        self.m2[sl] += delta * (m - self.mean[sl])
        if v is not None:
            self.ale[sl] += v.to(self.ale.device)
        if self.keep:
            self.s_mean[t, sl] = m.to(self.dtype)
            if v is not None:
                self.s_var[t, sl] = v.to(self.s_var.device, self.dtype)

    def _aleatoric(self, t: int) -> Tensor:
        if self.ale is not None:
            return self.ale / t
        return torch.full_like(self.mean, self.noise_std**2)

    def error(self, t: int) -> float:
        """Mean over inputs of the MC standard error of the mean, relative to the predictive sd."""
        se = (self.m2 / ((t - 1) * t)).sqrt()
        total = self._aleatoric(t) + self.m2 / t
        return float((se / total.sqrt().clamp_min(1e-12)).mean())

    def result(self, t: int) -> RegressionPrediction:
        epistemic, aleatoric, d = self.m2 / t, self._aleatoric(t), self.dtype
        s_mean, s_var = self.s_mean, self.s_var
        if self.keep and t < self.cap:
            s_mean = s_mean[:t].clone()
            s_var = None if s_var is None else s_var[:t].clone()
        return RegressionPrediction(self.mean.to(d), aleatoric.to(d), epistemic.to(d),
                                    (aleatoric + epistemic).to(d), s_mean, s_var)


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


# ------------------------------------------------------------------ public API
@dataclass
class MCInfo:
    """How :func:`mc_predict` ran (``return_info=True``).

    ``num_samples`` is the T whose samples make the result (with ``num_samples="auto"`` the T at
    which the standard error fell below ``tol``, or ``max_samples``); ``passes`` the forwards per
    input chunk that were run (1 for a deterministic network, else T); ``draws_per_pass`` the K
    weight draws run per forward; ``standard_error`` the stopping statistic at the end (see
    :func:`mc_predict`), None for a fixed T.
    """

    num_samples: int
    passes: int
    draws_per_pass: int
    standard_error: float | None = None
    converged: bool | None = None


DEFAULT_TOL = {"classification": 5e-3, "regression": 0.05}
ADAPTIVE_ROUND = 10  # draws between two convergence checks (at least K)


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


@torch.no_grad()
def mc_predict(
    model: nn.Module | Sequence[nn.Module],
    x: Tensor,
    num_samples: int | str | None = None,
    *,
    batch_size: int = 1024,
    return_samples: bool = False,
    task: str = "classification",
    noise_std: float | None = None,
    draws_per_pass: int | str = "auto",
    memory_budget: int | None = None,
    tol: float | None = None,
    min_samples: int = 20,
    max_samples: int = 300,
    posterior: Any = None,
    progress: bool = False,
    desc: str = "MC draws",
    return_info: bool = False,
) -> Tensor | RegressionPrediction | tuple[Tensor | RegressionPrediction, MCInfo]:
    """Monte Carlo predictive distribution: average over T weight samples.

    Args:
        model: a network (Bayesian layers are sampled, one draw per MC sample shared by all
            inputs), or a sequence of networks (ensemble / collected weight samples: each member
            is one sample; members with Bayesian layers are sampled the same way). Call
            ``model.eval()`` first if it has BatchNorm; dropout left in training mode makes
            the passes stochastic (MC dropout).
        x: inputs (N, ...), floating point, finite; chunks are moved to the model's device.
        num_samples: T, the number of weight draws (default 100 for one model; for a sequence
            None or ``len(model)``), or ``"auto"``: draw in rounds of 10 (at least K) until the
            MC standard error falls below ``tol``, at least ``min_samples`` and at most
            ``max_samples`` draws. A model without Bayesian layers or active dropout is run
            ONCE (its T passes would be identical).
        batch_size: inputs per forward; bounds activation memory.
        return_samples: also keep every sample: per-sample probabilities (T, N, C) instead of
            their mean, or ``samples_mean``/``samples_var`` for regression.
        task: ``"classification"`` (the model returns logits (N, C)) or ``"regression"``.
        noise_std: regression only: the model outputs the mean and the observation noise is
            homoscedastic with this sd (``likelihood="gaussian"``). If None, the model must
            output (N, 2) = (mean, log-variance) (``likelihood="heteroscedastic"``).
        draws_per_pass: K weight draws per forward for one model with Bayesian layers
            (:func:`bayescale.nn.sampling.draws`; a forward holds ``batch_size // K`` inputs
            times K draws). ``"auto"`` (default) takes K from ``memory_budget``, checks that
            the model batches (else it runs the loop, K = 1) and keeps whichever of the loop
            and the batched forward ran faster on the first draws
            (:mod:`bayescale.uncertainty.passes`). Same draws as the loop under the same RNG
            state, unless the forward itself draws random numbers (dropout).
        memory_budget: bytes for the K stacked weight draws under ``"auto"`` (default 256 MiB).
        tol: the ``"auto"`` stopping level. Classification: the mean over inputs of the largest
            per-class standard error of the MC mean probability (default 5e-3; on MNIST the
            predictive NLL is then within 1% of 300 draws). Regression: the mean over inputs
            of the standard error of the MC predictive mean divided by the predictive sd
            (default 0.05).
        min_samples, max_samples: the bounds on T under ``num_samples="auto"``.
        posterior: a weight posterior held outside the model (e.g.
            :class:`bayescale.nn.posterior.ParamPosterior`, or an optimizer with a
            ``posterior()`` method such as IVON): each sample runs ``model`` under
            ``posterior.sample()``, which writes one weight draw into its parameters.
        progress: show a progress bar over the draws (labelled ``desc``).
        return_info: also return an :class:`MCInfo` (the T used, K, the standard error).

    Returns:
        classification: mean softmax probabilities (N, C) float32, or (T, N, C) with
        ``return_samples``; regression: a :class:`RegressionPrediction`; with ``return_info``
        the pair (result, :class:`MCInfo`).
    """
    adaptive = isinstance(num_samples, str)
    if adaptive and num_samples != "auto":
        raise ValueError(f"num_samples must be an int, None or 'auto', got {num_samples!r}")
    if posterior is not None:
        if hasattr(posterior, "posterior") and not hasattr(posterior, "sample"):
            posterior = posterior.posterior()
        if not hasattr(posterior, "sample") or not isinstance(model, nn.Module):
            raise TypeError("posterior= needs one nn.Module and an object with a sample() "
                            "context manager (bayescale.nn.posterior.ParamPosterior) or a "
                            f"posterior() method (the IVON optimizer), got {type(posterior)}")
    if adaptive:
        _check_int("min_samples", min_samples, 2)
        _check_int("max_samples", max_samples, min_samples)
        members, num_passes = _members(model, None if not isinstance(model, nn.Module)
                                       or isinstance(model, nn.ModuleList) else max_samples)
    else:
        members, num_passes = _members(model, num_samples)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    _check_int("batch_size", batch_size, 1)
    if draws_per_pass != "auto":
        _check_int("draws_per_pass (or 'auto')", draws_per_pass, 1)
    if noise_std is not None and (task != "regression" or not noise_std > 0):
        raise ValueError(f"noise_std (> 0) applies to task='regression' only, got {noise_std!r} "
                         f"with task={task!r}")
    tol = DEFAULT_TOL[task] if tol is None else tol
    if not (isinstance(tol, int | float) and not isinstance(tol, bool) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    _check_x(x)
    for net in [model] if members is None else members:
        _warn_batchnorm(net)
    total = num_passes
    if members is None and posterior is None and not _stochastic(model):
        num_passes = 1  # deterministic network: one pass gives every sample
        total = 1 if adaptive else total
    adaptive = adaptive and members is None and num_passes > 1
    if task == "classification":
        acc = _Classes(x.shape[0], num_passes, return_samples, adaptive)
    else:
        acc = _Regression(x.shape[0], num_passes, return_samples, noise_std)
    info: dict[str, Any] = {}
    gen = outputs(model, members, num_passes, x, batch_size, draws_per_pass, memory_budget,
                  info, posterior)
    done, check_at, error = 0, min_samples, None
    with tqdm(total=num_passes, desc=desc, unit="draw", disable=not progress) as bar:
        try:
            for t, sl, out, round_done in gen:
                acc.add(t, sl, out)
                if not round_done:
                    continue
                bar.update(t + 1 - done)
                done = t + 1
                if adaptive and done >= check_at:
                    error = acc.error(done)
                    if error <= tol:
                        break
                    check_at = done + max(ADAPTIVE_ROUND, info["draws_per_pass"])
        finally:
            gen.close()
    if adaptive and done >= 2:
        error = acc.error(done)  # at the T used (the last round may have ended at the cap)
    result = acc.result(done)
    if adaptive:
        total = done
    elif return_samples and num_passes < total:  # one pass stands for every sample
        if task == "classification":
            result = result.repeat(total, 1, 1)
        else:
            reps = (total,) + (1,) * (result.samples_mean.dim() - 1)
            result.samples_mean = result.samples_mean.repeat(reps)
            if result.samples_var is not None:
                result.samples_var = result.samples_var.repeat(reps)
    if not return_info:
        return result
    converged = None if error is None else error <= tol
    return result, MCInfo(total, done, info.get("draws_per_pass", 1), error, converged)


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
