"""Sampling control: posterior-mean forwards and one weight sample held across forwards.

Bayesian layers sample on every forward, in train and eval mode alike (MC inference needs it;
``model.eval()`` only changes BatchNorm/Dropout). These context managers are the only switches:

    with bayescale.mean_weights(model):   # deterministic network with W = mu
        logits = model(x)
    with bayescale.fixed_sample(model):   # one W = mu + sigma * eps, reused by every forward
        a, b = model(x1), model(x2)

Both restore the previous mode on exit (also on exceptions) and nest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .layers import BayesianLayer

__all__ = ["bayesian_layers", "mean_weights", "fixed_sample", "draws"]


def bayesian_layers(model: nn.Module) -> list[BayesianLayer]:
    """All Bayesian layers of ``model`` (works through DDP and other wrappers)."""
    return [m for m in model.modules() if isinstance(m, BayesianLayer)]


@contextmanager
def _switch(layers: list[BayesianLayer], mode: str, eps: list | None) -> Iterator[None]:
    """Set every layer's mode (and noise, if given); restore both on exit, also on errors."""
    saved = [(layer._mode, layer._fixed_eps) for layer in layers]
    try:
        for i, layer in enumerate(layers):
            if eps is not None:
                layer._fixed_eps = eps[i]
            layer._mode = mode
        yield
    finally:
        for layer, (mode_, e) in zip(layers, saved, strict=True):
            layer._mode, layer._fixed_eps = mode_, e
            layer._sample_cache = None  # the draw's weights (no-grad reuse) go with the draw


@contextmanager
def _mode(model: nn.Module, mode: str, draw: bool) -> Iterator[nn.Module]:
    layers = bayesian_layers(model)
    eps = [_noise(layer) for layer in layers] if draw else None
    with _switch(layers, mode, eps):
        yield model


def _noise(layer: BayesianLayer) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One standard-normal draw for the weights (and the Bayesian bias) of ``layer``."""
    with torch.no_grad():
        eps_w = torch.randn_like(layer.weight_mu)
        return eps_w, torch.randn_like(layer.bias_mu) if layer.bayesian_bias else None


@contextmanager
def draws(model: nn.Module, k: int, *, shared_input: bool = False) -> Iterator[nn.Module]:
    """Context manager: ``k`` weight draws per forward, on inputs stacked draw-major.

    Inside, ``model(x.repeat(k, ...))`` (K blocks of the same B rows) returns the K outputs that
    K successive :func:`fixed_sample` forwards would give, stacked the same way. The noise is
    drawn in the order those K contexts would draw it, so under the same RNG state the samples
    are the same ones. Linear layers run the draws as one ``bmm``, convolutions as one grouped
    convolution (``groups * k``); deterministic layers see a batch of K * B rows.

    With ``shared_input=True`` the model takes the plain B rows instead: layers before the first
    Bayesian layer run once on them, and a Bayesian layer that receives the model's own B rows
    applies its K draws to them as one wide op (a matmul or convolution with K times the output
    channels) and passes K * B rows on. Models that mix the B-row and K * B-row tensors (a
    residual connection around the first Bayesian layer) fail there: stack the input instead.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (weight draws per forward) must be a positive int, got {k!r}")
    layers = bayesian_layers(model)
    per_draw = [[_noise(layer) for layer in layers] for _ in range(k)]  # k fixed_sample draws
    eps = [(torch.stack([d[i][0] for d in per_draw]),
            torch.stack([d[i][1] for d in per_draw]) if layer.bayesian_bias else None)
           for i, layer in enumerate(layers)]
    if not shared_input:
        with _switch(layers, "draws", eps):
            yield model
        return

    def record_rows(_module: nn.Module, args: tuple) -> None:
        rows = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) else None
        for layer in layers:
            layer._draw_rows = rows

    hook = model.register_forward_pre_hook(record_rows)
    try:
        with _switch(layers, "draws", eps):
            yield model
    finally:
        hook.remove()
        for layer in layers:
            layer._draw_rows = None


def mean_weights(model: nn.Module):
    """Context manager: every Bayesian layer uses its posterior mean (W = mu, b = bias mu)."""
    return _mode(model, "mean", draw=False)


def fixed_sample(model: nn.Module):
    """Context manager: draw one weight sample per layer and reuse it for every forward.

    The noise eps is fixed, W = mu + sigma * eps is recomputed each forward, so gradients with
    respect to mu and rho stay correct. The draw uses the global torch RNG.
    """
    return _mode(model, "fixed", draw=True)
