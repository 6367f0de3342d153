"""Model zoo: each name = one deterministic builder + defaults for :func:`bayescale.bayesianize`.

``get_model(name)`` builds the plain network and, when Bayesian, converts the layers picked by the
name's ``include`` predicate (design §7.3). ``bayesian=False`` gives the deterministic twin of any
Bayesian model (same topology, plain layers); ``estimator=`` picks any estimator for any model.

Names: the seed tutorial's models (``BNN_conv_flip``, ``BNN_conv_nonflip``,
``BNN_FC_flip``, ``BNN_FC_nonflip``, ``CNN_conv``, ``CNN_FC``, ``CIFAR10_BNN_model``), the
paper's reconstructed TFP models of Sharma & Jennings (``vgg16_tfp``, ``resnet18_tfp``, init preset
``"tfp_vgg"``) and the standard CIFAR ``vgg16`` and ``resnet18`` (deterministic by default).

Parameter counts (:func:`count_parameters`) follow TF's "Trainable params": every tensor with
``requires_grad``, i.e. both ``weight_mu`` and ``weight_rho`` of each Bayesian layer, deterministic
biases and BatchNorm weight/bias (gamma/beta). BatchNorm running statistics are buffers (TF's
non-trainable moving mean/variance) and are not counted.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from ..nn.convert import DEFAULT_MAPPING, bayesianize
from ..nn.layers import ESTIMATORS
from ..nn.priors import PosteriorInit, Prior
from .resnet import resnet18, resnet18_tfp
from .seed import seed_conv, seed_fc, seed_vgg3
from .vgg import vgg16, vgg16_tfp

__all__ = [
    "ModelSpec",
    "register_model",
    "get_model",
    "list_models",
    "model_spec",
    "count_parameters",
    "seed_conv",
    "seed_fc",
    "seed_vgg3",
    "vgg16",
    "vgg16_tfp",
    "resnet18",
    "resnet18_tfp",
]

Include = Callable[[str, nn.Module], bool]
Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelSpec:
    """A registered name: its builder and the defaults :func:`get_model` applies.

    Attributes:
        builder: ``builder(num_classes=..., **kwargs) -> nn.Module`` (deterministic).
        bayesian: whether the name is Bayesian by default.
        estimator: default estimator when Bayesian.
        init: default posterior init (preset name or :class:`PosteriorInit`).
        include: ``include(name, module)`` for ``bayesianize``; ``None`` converts every layer.
        input_shape: ``(C, H, W)`` of one example.
        builder_kwargs: defaults passed to the builder (overridable in ``get_model``).
    """

    builder: Callable[..., nn.Module]
    bayesian: bool = False
    estimator: str = "flipout"
    init: PosteriorInit | str | None = None
    include: Include | None = None
    input_shape: tuple[int, ...] = (3, 32, 32)
    builder_kwargs: Mapping[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, **defaults: Any) -> Callable[[Builder], Builder]:
    """Decorator registering a deterministic builder under ``name``.

    Keyword arguments are :class:`ModelSpec` fields (``bayesian``, ``estimator``, ``init``,
    ``include``, ``input_shape``, ``builder_kwargs``). A builder may be registered under several
    names (e.g. ``seed_conv`` as ``BNN_conv_flip``, ``BNN_conv_nonflip`` and ``CNN_conv``).
    """
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    if defaults.get("estimator", "flipout") not in ESTIMATORS:
        raise ValueError(f"unknown estimator {defaults['estimator']!r}; choose one of {ESTIMATORS}")

    def decorator(builder: Builder) -> Builder:
        _REGISTRY[name] = ModelSpec(builder, **defaults)
        return builder

    return decorator


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; unknown names raise ``ValueError`` with suggestions."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    lowered = {n.lower(): n for n in _REGISTRY}
    close = difflib.get_close_matches(str(name).lower(), list(lowered), n=1)
    hint = f" (did you mean {lowered[close[0]]!r}?)" if close else ""
    raise ValueError(f"unknown model {name!r}{hint}; valid names: {', '.join(list_models())}")


def get_model(
    name: str,
    *,
    bayesian: bool | None = None,
    estimator: str | None = None,
    prior: Prior | str | None = None,
    init: PosteriorInit | str | None = None,
    layers: str | Sequence[str] | None = None,
    num_classes: int = 10,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        bayesian: override the name's default; ``False`` gives the deterministic twin (and then
            ``estimator``, ``prior`` and ``init`` are not used).
        estimator: ``"flipout"``, ``"reparam"`` or ``"local"`` (default: the name's).
        prior: prior of the Bayesian layers (default N(0, 1)).
        init: posterior init (default: the name's, e.g. ``"tfp_vgg"`` for the TFP models).
        layers: which layers become Bayesian: ``None`` the name's default (the seed models keep
            some layers deterministic), ``"all"`` every Linear/Conv, ``"last"`` only the last one
            (the classifier: a last-layer BNN), or a list of qualified module names.
        num_classes: logits width.
        **kwargs: builder arguments, e.g. ``projection_all=False`` for ``resnet18_tfp``.

    Raises:
        ValueError: unknown name or estimator.
    """
    spec = model_spec(name)
    if estimator is not None and estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose one of {ESTIMATORS}")
    model = spec.builder(num_classes=num_classes, **{**spec.builder_kwargs, **kwargs})
    if not (spec.bayesian if bayesian is None else bayesian):
        return model
    return bayesianize(
        model, estimator=estimator or spec.estimator, prior=prior,
        init=spec.init if init is None else init, include=_layers(model, spec, layers),
        inplace=True,
    )


def _layers(model: nn.Module, spec: ModelSpec, layers: str | Sequence[str] | None
            ) -> Include | None:
    """The ``include`` predicate of ``get_model(layers=...)``; unknown names raise."""
    if layers is None:
        return spec.include
    if layers == "all":
        return None
    names = [n for n, m in model.named_modules() if type(m) in DEFAULT_MAPPING]
    if layers == "last":
        return _only(names[-1])
    if isinstance(layers, str):
        raise ValueError(f"layers must be None, 'all', 'last' or a list of layer names, "
                         f"got {layers!r}")
    unknown = [n for n in layers if n not in names]
    if unknown or not layers:
        raise ValueError(f"layers {list(layers)!r}: {unknown or 'empty'} not convertible; "
                         f"the model's Linear/Conv layers are {names}")
    return _only(*layers)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters as TF counts them (see the module docstring)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _only(*names: str) -> Include:
    return lambda name, module: name in names


_MNIST = (1, 28, 28)
register_model("BNN_conv_flip", bayesian=True, include=_only("conv"), input_shape=_MNIST)(
    seed_conv)
register_model("BNN_conv_nonflip", bayesian=True, estimator="reparam", include=_only("conv"),
               input_shape=_MNIST)(seed_conv)
register_model("CNN_conv", include=_only("conv"), input_shape=_MNIST)(seed_conv)
register_model("BNN_FC_flip", bayesian=True, include=_only("fc1"), input_shape=_MNIST)(seed_fc)
register_model("BNN_FC_nonflip", bayesian=True, estimator="reparam", include=_only("fc1"),
               input_shape=_MNIST)(seed_fc)
register_model("CNN_FC", include=_only("fc1"), input_shape=_MNIST)(seed_fc)
register_model("CIFAR10_BNN_model", bayesian=True)(seed_vgg3)
register_model("vgg16_tfp", bayesian=True, init="tfp_vgg")(vgg16_tfp)
register_model("resnet18_tfp", bayesian=True, init="tfp_vgg",
               builder_kwargs={"projection_all": True})(resnet18_tfp)
register_model("vgg16")(vgg16)
register_model("resnet18")(resnet18)
