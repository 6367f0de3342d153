"""MC dropout: a network trained with dropout, with dropout kept on at test time; each forward is
one sample of an approximate posterior, and :func:`bayescale.mc_predict` averages T of them
(Gal & Ghahramani 2016).

    model.eval()                                  # BatchNorm on running statistics
    with mc_dropout(model):                       # only the dropout layers sample
        probs = mc_predict(model, x, num_samples=50)

References:
    Gal & Ghahramani, "Dropout as a Bayesian Approximation: Representing Model Uncertainty in
    Deep Learning", ICML 2016 (arXiv:1506.02142).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["dropout_layers", "mc_dropout"]


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The dropout modules of ``model`` with a rate > 0 (``nn.Dropout``, ``Dropout2d``, ...)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, every dropout layer of ``model`` samples (training mode) and every other
    module keeps its mode; on exit the dropout layers get their old modes back.

    Raises:
        ValueError: ``model`` has no dropout layer with a rate > 0.
    """
    layers = dropout_layers(model)
    if not layers:
        raise ValueError("mc_dropout: the model has no dropout layer with p > 0; train it with "
                         "dropout (bayescale train ... model.dropout=0.5 for the seed models)")
    modes = [m.training for m in layers]
    for m in layers:
        m.train()
    try:
        yield model
    finally:
        for m, mode in zip(layers, modes, strict=True):
            m.train(mode)
