"""Temperature scaling: one scalar T > 0 that divides the logits, fitted by minimising the NLL on
held-out validation data (Guo et al. 2017). It changes confidence, never the predicted class.

    T = fit_temperature(val_logits, val_labels)            # validation split, not the test set
    probs = mc_predict(TemperatureScaled(model, T), x_test)

The validation NLL as a function of 1/T is convex (a log-sum-exp of functions linear in 1/T minus
a linear one), so it has one minimum and a bounded golden-section search on log T finds it without
tuning; a final parabolic step is not needed at the tolerances used here.

References:
    Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017
    (arXiv:1706.04599), section 4.2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["fit_temperature", "temperature_nll", "TemperatureScaled"]

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # 0.618...


def _check(logits: Tensor, labels: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError("logits must be a float tensor (N, C); from probabilities pass "
                         "probs.clamp_min(1e-12).log() (softmax is shift-invariant)")
    if not isinstance(labels, Tensor) or labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must be a tensor (N,) = ({logits.shape[0]},), got "
                         f"{tuple(labels.shape) if isinstance(labels, Tensor) else labels!r}")
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN/Inf; clamp log-probabilities (clamp_min(1e-12)) "
                         "before fitting")


def temperature_nll(logits: Tensor, labels: Tensor, temperature: float) -> float:
    """Mean NLL (nats) of ``softmax(logits / temperature)`` at the true labels."""
    _check(logits, labels)
    return float(F.cross_entropy(logits.double() / temperature, labels.long()))


def fit_temperature(logits: Tensor, labels: Tensor, *, bounds: tuple[float, float] = (0.05, 20.0),
                    tol: float = 1e-6) -> float:
    """The T in ``bounds`` that minimises the mean NLL of ``softmax(logits / T)``.

    Args:
        logits: validation logits (N, C) (or log-probabilities: the same fit).
        labels: validation labels (N,).
        bounds: the search interval of T; a fit that lands on a bound is returned as is (the
            model is then far from calibrated: widen the bounds).
        tol: stop when the bracket of log T is narrower than this.

    Returns:
        the temperature as a Python float (> 1 softens over-confident predictions).
    """
    _check(logits, labels)
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds!r}")
    z, y = logits.detach().double(), labels.detach().long()

    def f(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), y))

    a, b = math.log(lo), math.log(hi)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = f(d)
    return math.exp((a + b) / 2.0)


class TemperatureScaled(nn.Module):
    """``model(x) / temperature``: a fitted temperature applied to any classifier's logits
    (a module, so :func:`bayescale.mc_predict` runs it like any other model)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) / self.temperature

    def extra_repr(self) -> str:
        return f"temperature={float(self.temperature):.4f}"
