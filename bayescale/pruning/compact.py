"""Structured pruning and physical compaction: remove whole units so inference is really faster.

Masking a weight to zero (:mod:`bayescale.pruning.bprune`) leaves every matrix its full size. Here
whole output units (Linear rows, conv filters) go, with the matching inputs of the next layer, and a
physically smaller network is rebuilt. It works on chains: ``nn.Sequential`` models (nested
Sequentials allowed) of Linear/Conv layers, plain or Bayesian, with channel-wise modules between
them (activations, BatchNorm, pooling, dropout, Flatten), i.e. the seed models, VGGs and MLPs.

    keep = unit_masks(unit_scores(bnn), sparsity=0.8)           # per layer, True = unit kept
    small = structured_prune(bnn, x[:1], sparsity=0.8)          # = mask_units + compact
    small = compact(net, x[:1])                                 # any chain with exactly-zero units

:func:`compact` only removes what it can remove exactly (the compacted network computes the same
function as the input, in eval mode): a channel between a producer P and the next producer Q
goes when Q ignores it (Q's input columns are zero), or when P's unit is dead (zero weights), in
which case what reaches Q is a constant that is dropped if it is 0, folded into Q's bias if Q is
deterministic and the fold is exact (Linear; convolution without a padded border), and otherwise
the unit stays (see :func:`compaction_plan`). :func:`mask_units` removes a unit entirely: its
weights (mu and sigma), bias and the affine of the BatchNorm after it, so its output is exactly 0.

Scores: Bayesian layers use the group SNR ||mu_g|| / ||sigma_g|| over each unit's weights
(:func:`bayescale.kefan.groups.group_snr`); deterministic ones the unit's L2 norm.

References:
    Sharma & Jennings 2020 (SNR pruning, arXiv:2005.11619); Li et al., "Pruning filters for
    efficient ConvNets", arXiv:1608.08710 (filter pruning with the next layer's channels).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..kefan.groups import expand_group_mask, group_is_zero, group_snr
from ..nn.conv import _BayesConvNd
from ..nn.layers import BayesianLayer
from ..nn.linear import BayesLinear
from ..nn.sampling import mean_weights
from .bprune import masks_from_scores

__all__ = ["CompactionPlan", "unit_scores", "unit_masks", "mask_units", "compaction_plan",
           "compact", "structured_prune", "posterior_mean_model"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, _BayesConvNd)
_LINEARS = (nn.Linear, BayesLinear)
_PRODUCERS = _CONVS + _LINEARS
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Modules that act on each channel separately (so a channel can be cut through them).
_CHANNELWISE = _NORMS + (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten,
)


# ------------------------------------------------------------------ the chain
@dataclass
class _Boundary:
    """Producer P, the channel-wise modules between, and the next producer Q."""

    producer: str
    between: list[str]
    consumer: str


def _chain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules in execution order, through nested ``nn.Sequential``s."""
    out: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, m: nn.Module) -> None:
        if isinstance(m, nn.Sequential):
            for name, child in m.named_children():
                walk(f"{prefix}.{name}" if prefix else name, child)
        elif isinstance(m, _PRODUCERS) or not list(m.children()):
            out.append((prefix, m))
        else:
            raise ValueError(
                f"compaction works on nn.Sequential chains; {prefix or 'the model'} is a "
                f"{type(m).__name__} with its own forward (e.g. a residual block), whose channel "
                "dependencies cannot be read off the chain. Prune such networks by masks "
                "(bayescale.pruning.bprune) or with a dependency-graph pruner (Torch-Pruning)")

    walk("", model)
    return out


def _boundaries(model: nn.Module) -> list[_Boundary]:
    chain = _chain(model)
    mods = dict(chain)
    producers = [i for i, (_, m) in enumerate(chain) if isinstance(m, _PRODUCERS)]
    if len(producers) < 2:
        raise ValueError(f"{type(model).__name__} has {len(producers)} Linear/Conv layer(s): "
                         "structured pruning needs a layer followed by another one")
    out = []
    for a, b in zip(producers, producers[1:], strict=False):
        between = [chain[i][0] for i in range(a + 1, b)]
        for name in [chain[a][0], chain[b][0]]:
            if getattr(mods[name], "groups", 1) != 1:
                raise ValueError(f"layer {name!r} is a grouped convolution (groups="
                                 f"{mods[name].groups}); compaction supports groups=1 only")
        for name in between:
            m = mods[name]
            if not isinstance(m, _CHANNELWISE):
                raise ValueError(f"module {name!r} ({type(m).__name__}) between {chain[a][0]!r} "
                                 f"and {chain[b][0]!r} is not channel-wise; cannot cut channels "
                                 "through it")
            if isinstance(m, nn.Flatten) and (m.start_dim != 1 or m.end_dim != -1):
                raise ValueError(f"Flatten {name!r} must flatten all dims after the batch")
        out.append(_Boundary(chain[a][0], between, chain[b][0]))
    return out


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def _weights(m: nn.Module) -> list[Tensor]:
    """The tensors that must all be zero for a weight entry to be absent (mu and sigma)."""
    if isinstance(m, BayesianLayer):
        mask = m.weight_mask if m._masked else None
        mu, sigma = m.weight_mu.detach(), m.weight_sigma.detach()
        return [mu, sigma] if mask is None else [mu * mask, sigma * mask]
    return [m.weight.detach()]


def _bias(m: nn.Module) -> Tensor | None:
    if isinstance(m, BayesianLayer):
        return m.bias_mu.detach() if m.bayesian_bias else (
            None if m.bias is None else m.bias.detach())
    return None if m.bias is None else m.bias.detach()


# ------------------------------------------------------------------ scores and masks
@torch.no_grad()
def unit_scores(model: nn.Module) -> dict[str, Tensor]:
    """One score per output unit of every layer that feeds another layer (the last is kept).

    Bayesian: group SNR ||mu_g||/||sigma_g|| of the unit's weights (pruned weights count as 0);
    deterministic: the unit's L2 norm.
    """
    scores = {}
    for b in _boundaries(model):
        m = _module(model, b.producer)
        w = _weights(m)
        scores[b.producer] = (group_snr(w[0], w[1], "out") if isinstance(m, BayesianLayer)
                              else w[0].reshape(w[0].shape[0], -1).norm(dim=1))
    return scores


def unit_masks(scores: Mapping[str, Tensor], *, sparsity: float | None = None,
               threshold: float | None = None, scope: str = "layer") -> dict[str, Tensor]:
    """Kept units (True) from :func:`unit_scores`: floor(sparsity * units) lowest per layer
    (``scope="layer"``) or over all units (``"global"``), or score <= ``threshold`` pruned."""
    keep = masks_from_scores(scores, threshold=threshold, sparsity=sparsity, scope=scope)
    for name, k in keep.items():
        if not k.any():
            raise ValueError(f"all {k.numel()} units of layer {name!r} would be pruned; use a "
                             "lower threshold/sparsity or scope='layer'")
    return keep


@torch.no_grad()
def mask_units(model: nn.Module, keep: Mapping[str, Tensor]) -> nn.Module:
    """Remove units in place (their output becomes exactly 0): weights (Bayesian: the
    ``weight_mask``), bias, and gamma/beta of the BatchNorm(s) before the next layer."""
    bounds = {b.producer: b for b in _boundaries(model)}
    for name, k in keep.items():
        if name not in bounds:
            raise ValueError(f"{name!r} is not a prunable layer; choose from {sorted(bounds)}")
        m = _module(model, name)
        shape = _weights(m)[0].shape
        if k.dtype != torch.bool or k.shape != (shape[0],):
            raise ValueError(f"keep mask of {name!r} must be bool of shape ({shape[0]},)")
        if not k.any():
            raise ValueError(f"the keep mask would remove every unit of layer {name!r}")
        full = expand_group_mask(k.to(m.weight_mu.device if isinstance(m, BayesianLayer)
                                      else m.weight.device), shape, "out")
        if isinstance(m, BayesianLayer):
            m.set_weight_mask(full.clone() & (m.weight_mask if m._masked else True))
            if m.bayesian_bias:
                raise ValueError(f"layer {name!r} has a Bayesian bias: a removed unit would "
                                 "still output noise; use deterministic biases")
        else:
            m.weight.mul_(full)
        if _bias(m) is not None:
            (m.bias_mu if isinstance(m, BayesianLayer) and m.bayesian_bias else m.bias)[~k] = 0
        for between in bounds[name].between:
            bn = _module(model, between)
            if isinstance(bn, _NORMS) and bn.affine:
                bn.weight[~k] = 0
                bn.bias[~k] = 0
    return model


# ------------------------------------------------------------------ planning
@dataclass
class CompactionPlan:
    """What :func:`compact` removes: kept channel indices per boundary producer, folded biases."""

    keep: dict[str, Tensor] = field(default_factory=dict)  # producer -> kept output indices
    sizes: dict[str, int] = field(default_factory=dict)  # producer -> units before
    consumer_cols: dict[str, Tensor] = field(default_factory=dict)  # consumer -> kept inputs
    bias_delta: dict[str, Tensor] = field(default_factory=dict)  # consumer -> added to its bias
    not_exact: dict[str, list[int]] = field(default_factory=dict)  # dead units that must stay

    def removed(self) -> dict[str, int]:
        """Number of units removed per producer."""
        return {n: int(self.sizes[n] - k.numel()) for n, k in self.keep.items()}


def _trace(model: nn.Module, example_input: Tensor) -> dict[str, torch.Size]:
    """Output shape of every leaf of the chain on ``example_input``."""
    shapes: dict[str, torch.Size] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=name: shapes.__setitem__(n, o.shape))
             for name, m in _chain(model)]
    training = model.training
    try:
        with torch.no_grad(), mean_weights(model):
            model.eval()(example_input[:1])
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return shapes


def _constant_through(model: nn.Module, b: _Boundary, shape: torch.Size,
                      dead: Tensor) -> Tensor:
    """What the dead units' constant pre-activations (their biases) become at Q's input."""
    p = _module(model, b.producer)
    z = torch.zeros((1, *shape[1:]), dtype=_weights(p)[0].dtype)
    bias = _bias(p)
    if bias is not None:
        view = (1, -1) + (1,) * (len(shape) - 2)
        z = z + (bias * dead).view(view)  # live channels stay 0: only dead ones are read
    with torch.no_grad():
        for name in b.between:
            m = copy.deepcopy(_module(model, name)).eval()
            z = m(z)
    return z[0]


def _fold(q: nn.Module, const: Tensor, cols: Tensor) -> Tensor | None:
    """Q's output from the constant input ``const`` on columns ``cols`` (None: not exact)."""
    if isinstance(q, BayesianLayer):
        return None  # a random weight times a constant is not a constant
    if isinstance(q, nn.Linear):
        return q.weight.detach()[:, cols] @ const.reshape(-1)[cols]
    x = torch.zeros((1, *const.shape), dtype=const.dtype)
    x[0, cols] = const[cols]
    out = q._conv_forward(x, q.weight.detach(), None)[0].reshape(q.out_channels, -1)
    if not torch.allclose(out, out[:, :1].expand_as(out), rtol=1e-6, atol=1e-9):
        return None  # zero padding makes the border differ: folding would not be exact
    return out[:, 0]


@torch.no_grad()
def compaction_plan(model: nn.Module, example_input: Tensor) -> CompactionPlan:
    """Which output units :func:`compact` removes, and the biases it folds (pure: no writes)."""
    shapes = _trace(model, example_input)
    plan = CompactionPlan()
    for b in _boundaries(model):
        p, q = _module(model, b.producer), _module(model, b.consumer)
        c = shapes[b.producer][1]
        q_in = _weights(q)
        per = q_in[0].shape[1] // c  # inputs of Q per channel of P (Flatten: H*W, else 1)
        if per * c != q_in[0].shape[1]:
            raise ValueError(f"cannot map the {c} channels of {b.producer!r} onto the "
                             f"{q_in[0].shape[1]} inputs of {b.consumer!r}")
        grouped = [w.reshape(w.shape[0], c, per, -1).transpose(0, 1) for w in q_in]
        unused = torch.stack([group_is_zero(g, "out") for g in grouped]).all(0)
        dead = torch.stack([group_is_zero(w, "out") for w in _weights(p)]).all(0)
        if isinstance(p, BayesianLayer) and p.bayesian_bias:
            dead[:] = False  # a Bayesian bias is noise, never a constant
        dead &= ~unused
        remove = unused.clone()
        delta = None
        if dead.any():
            const = _constant_through(model, b, shapes[b.producer], dead)
            const = const.reshape(c, -1) if const.dim() == 1 else const
            cols_of = torch.arange(q_in[0].shape[1]).view(c, per)
            for ch in dead.nonzero().flatten().tolist():
                if not const[ch].any():
                    remove[ch] = True
                    continue
                cols = cols_of[ch] if isinstance(q, _LINEARS) else torch.tensor([ch])
                src = const.reshape(-1) if isinstance(q, _LINEARS) else const
                folded = _fold(q, src, cols)
                if folded is None:
                    plan.not_exact.setdefault(b.producer, []).append(ch)
                else:
                    remove[ch] = True
                    delta = folded if delta is None else delta + folded
        if remove.all():
            remove[0] = False  # keep one channel: layers of width 0 are not supported
        keep = (~remove).nonzero().flatten()
        plan.keep[b.producer] = keep
        plan.sizes[b.producer] = c
        plan.consumer_cols[b.consumer] = (keep.view(-1, 1) * per
                                          + torch.arange(per).view(1, -1)).flatten()
        if delta is not None:
            plan.bias_delta[b.consumer] = delta
    return plan


# ------------------------------------------------------------------ rebuilding
def _slice(m: nn.Module, out_idx: Tensor | None, in_idx: Tensor | None) -> nn.Module:
    """A copy of Linear/Conv layer ``m`` (plain or Bayesian) with only those units/inputs."""
    new = copy.deepcopy(m)

    def cut(t: Tensor, weight: bool) -> Tensor:
        if out_idx is not None:
            t = t.index_select(0, out_idx.to(t.device))
        if weight and in_idx is not None:
            t = t.index_select(1, in_idx.to(t.device))
        return t.clone(memory_format=torch.contiguous_format)  # never share the original's

    for name, p in list(m.named_parameters(recurse=False)):
        setattr(new, name, nn.Parameter(cut(p.detach(), name.startswith("weight")),
                                        requires_grad=p.requires_grad))
    if isinstance(m, BayesianLayer):
        new._fixed_eps = None
        mask = cut(m.weight_mask, True) if m._masked else None
        new.set_weight_mask(None if mask is None or mask.all() else mask)
    shape = new.weight_mu.shape if isinstance(m, BayesianLayer) else new.weight.shape
    if isinstance(m, _LINEARS):
        new.out_features, new.in_features = shape[0], shape[1]
    else:
        new.out_channels, new.in_channels = shape[0], shape[1]
    return new


def _slice_norm(bn: nn.Module, idx: Tensor) -> nn.Module:
    new = copy.deepcopy(bn)
    for name, t in list(bn.named_parameters(recurse=False)) + list(bn.named_buffers(recurse=False)):
        if t is not None and t.dim() == 1:
            value = t.detach().index_select(0, idx).clone()
            setattr(new, name, nn.Parameter(value) if isinstance(t, nn.Parameter) else value)
    new.num_features = idx.numel()
    return new


@torch.no_grad()
def compact(model: nn.Module, example_input: Tensor, *,
            plan: CompactionPlan | None = None) -> nn.Module:
    """A physically smaller copy of ``model`` without its removable units (see module doc).

    Args:
        model: an ``nn.Sequential`` chain of Linear/Conv layers (plain or Bayesian); units are
            removable when exactly zero (e.g. after :func:`mask_units`, or Ke & Fan's pruning).
        example_input: one input batch (only its first example is run, to read shapes).
        plan: cut by this plan instead of the model's own (:func:`compaction_plan` of a model
            with the same shapes, e.g. the support |m| + sigma of a posterior).

    Returns:
        The compacted copy (``model`` is untouched); same function in eval mode.
    """
    plan = compaction_plan(model, example_input) if plan is None else plan
    new = copy.deepcopy(model)
    bounds = {b.producer: b for b in _boundaries(model)}
    names = set(plan.keep) | set(plan.consumer_cols)
    for name in names:
        out_idx = plan.keep.get(name)
        if out_idx is not None and out_idx.numel() == plan.sizes[name]:
            out_idx = None
        layer = _slice(_module(model, name), out_idx, plan.consumer_cols.get(name))
        if name in plan.bias_delta:
            delta = plan.bias_delta[name]
            if out_idx is not None:
                delta = delta.index_select(0, out_idx)
            if layer.bias is None:
                layer.bias = nn.Parameter(delta.clone())
            else:
                layer.bias.add_(delta.to(layer.bias.dtype))
        new.set_submodule(name, layer)
        if out_idx is not None:
            for between in bounds[name].between:
                if isinstance(_module(model, between), _NORMS):
                    new.set_submodule(between, _slice_norm(_module(model, between), out_idx))
    return new


def structured_prune(model: nn.Module, example_input: Tensor, *, sparsity: float | None = None,
                     threshold: float | None = None, scope: str = "layer",
                     layers: list[str] | None = None, posterior_mean: bool = False) -> nn.Module:
    """Score units, remove the lowest (:func:`mask_units`) and rebuild smaller (:func:`compact`).

    Args:
        sparsity / threshold: fraction of units to remove, or a unit-score threshold.
        scope: ``"layer"`` (each layer loses the same fraction) or ``"global"``.
        layers: restrict pruning to these producers (default: every layer but the last).
        posterior_mean: return the deterministic posterior-mean network instead.
    """
    scores = unit_scores(model)
    if layers is not None:
        scores = {n: scores[n] for n in layers}
    masked = mask_units(copy.deepcopy(model), unit_masks(scores, sparsity=sparsity,
                                                         threshold=threshold, scope=scope))
    small = compact(masked, example_input)
    return posterior_mean_model(small) if posterior_mean else small


@torch.no_grad()
def _plain(m: BayesianLayer) -> nn.Module:
    """The torch layer computing ``m``'s posterior mean (W = mu * mask, bias mean)."""
    w = m.weight_mu * m.weight_mask if m._masked else m.weight_mu
    bias = _bias(m)
    kw = {"bias": bias is not None, "device": w.device, "dtype": w.dtype}
    if isinstance(m, BayesLinear):
        plain: nn.Module = nn.Linear(m.in_features, m.out_features, **kw)
    elif isinstance(m, _BayesConvNd):
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[m._nd]
        plain = conv(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                     m.dilation, m.groups, padding_mode=m.padding_mode, **kw)
    else:
        raise ValueError(f"no plain twin for {type(m).__name__}")
    plain.weight.copy_(w)
    if bias is not None:
        plain.bias.copy_(bias)
    return plain.train(m.training)


def posterior_mean_model(model: nn.Module) -> nn.Module:
    """A deterministic copy in which every Bayesian layer is the torch layer of its posterior
    mean (W = mu * mask): what ``mean_weights(model)`` computes, exportable anywhere."""
    if isinstance(model, BayesianLayer):
        return _plain(model)
    new = copy.deepcopy(model)
    for name, m in list(new.named_modules()):
        if isinstance(m, BayesianLayer):
            new.set_submodule(name, _plain(m))
    return new

