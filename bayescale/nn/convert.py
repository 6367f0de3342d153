"""``bayesianize(model)``: a Bayesian copy of any ``nn.Module``.

Layers whose exact type is in the mapping (Linear, Conv1d/2d/3d by default) and that pass the
``include(name, module)`` predicate are replaced by their Bayesian twins built with
``from_module``; everything else (BatchNorm, activations, pooling, user layers) is kept as is.
Exact types on purpose: subclasses such as ``nn.modules.linear.NonDynamicallyQuantizableLinear``
inside ``nn.MultiheadAttention`` are used through their raw weights and must stay plain.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

from torch import nn

from .conv import BayesConv1d, BayesConv2d, BayesConv3d
from .layers import BayesianLayer
from .linear import BayesLinear
from .priors import PosteriorInit, Prior

__all__ = ["DEFAULT_MAPPING", "bayesianize"]

DEFAULT_MAPPING: Mapping[type[nn.Module], type[BayesianLayer]] = {
    nn.Linear: BayesLinear,
    nn.Conv1d: BayesConv1d,
    nn.Conv2d: BayesConv2d,
    nn.Conv3d: BayesConv3d,
}


def bayesianize(
    model: nn.Module,
    *,
    estimator: str = "flipout",
    prior: Prior | str | None = None,
    init: PosteriorInit | str | None = None,
    bayesian_bias: bool = False,
    include: Callable[[str, nn.Module], bool] | None = None,
    mapping: Mapping[type[nn.Module], type[BayesianLayer]] | None = None,
    inplace: bool = False,
) -> nn.Module:
    """Return a copy of ``model`` with its Linear/Conv layers made Bayesian.

    Args:
        model: any module; it is deep-copied first unless ``inplace=True``.
        estimator, prior, init, bayesian_bias: passed to every new layer (see BayesianLayer).
            ``init=bayescale.moped(delta)`` copies the trained weights into mu.
        include: ``include(qualified_name, module) -> bool`` picks the layers to convert, e.g.
            ``lambda name, m: name != "fc"`` keeps the head deterministic. Default: all.
        mapping: exact type -> Bayesian class with a ``from_module`` classmethod. Extend with
            ``{**bayescale.DEFAULT_MAPPING, MyLayer: MyBayesLayer}``.
        inplace: convert ``model`` itself instead of a copy.

    Returns:
        The converted model (the original is untouched unless ``inplace``).

    Raises:
        ValueError: if no layer was converted (nothing matched ``mapping`` and ``include``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"bayesianize expects an nn.Module, got {type(model).__name__}")
    mapping = DEFAULT_MAPPING if mapping is None else mapping
    include = include or (lambda name, module: True)
    model = model if inplace else copy.deepcopy(model)

    def convert(module: nn.Module) -> nn.Module:
        return mapping[type(module)].from_module(
            module, estimator=estimator, prior=prior, init=init, bayesian_bias=bayesian_bias
        )

    if type(model) in mapping and include("", model):
        return convert(model)
    swaps = [
        (name, module)
        for name, module in model.named_modules()
        if name and type(module) in mapping and include(name, module)
    ]
    # Skip modules nested inside one that is itself being replaced.
    swapped: set[str] = set()
    for name, module in swaps:
        if any(name.startswith(prefix + ".") for prefix in swapped):
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, convert(module))
        swapped.add(name)
    if not swapped:
        raise ValueError(
            "bayesianize converted no layer: the model has no module whose exact type is in "
            f"the mapping ({', '.join(t.__name__ for t in mapping)}) and passes `include`; "
            "extend `mapping` for custom layers or relax `include`"
        )
    return model
