"""Groups of weights, the unit of structured pruning (pure tensor functions).

A weight tensor ``[out, in, *kernel]`` (Linear: ``[out, in]``) is split into groups three ways:

* ``"out"``    one group per output unit: a Linear row, a conv filter ``w[i]``;
* ``"in"``     one group per input unit: a Linear column, an input channel ``w[:, j]`` of every
  filter;
* ``"kernel"`` one group per (out, in) pair: a conv kernel slice ``w[i, j]`` (for a Linear weight
  every element is its own group).

:func:`group_view` returns the ``(num_groups, group_size)`` matrix that every statistic below
reduces over its last dim; :func:`expand_group_mask` maps a per-group decision back onto the
weight's shape. BPrune's structured variant (:mod:`bayescale.pruning.bprune`) and the Ke & Fan
spike-and-slab E-step and hard pruning (:mod:`bayescale.kefan`) are both written with
these functions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["GROUPINGS", "group_view", "num_groups", "expand_group_mask", "group_mean_square",
           "group_range", "group_snr", "spike_slab_estep", "spike_slab_threshold",
           "hard_prune_groups", "group_is_zero", "noise_floor_threshold", "sparsity",
           "layer_sparsity"]

GROUPINGS = ("out", "in", "kernel")


def _check(w: Tensor, grouping: str) -> None:
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}; choose one of {GROUPINGS}")
    if w.dim() < 2:
        raise ValueError(f"groups are defined for weights with >= 2 dims [out, in, ...], got "
                         f"shape {tuple(w.shape)} (biases and norms are never grouped)")


def group_view(w: Tensor, grouping: str) -> Tensor:
    """``w`` as a ``(num_groups, group_size)`` matrix, one row per group."""
    _check(w, grouping)
    if grouping == "out":
        return w.reshape(w.shape[0], -1)
    if grouping == "in":
        return w.transpose(0, 1).reshape(w.shape[1], -1)
    return w.reshape(w.shape[0] * w.shape[1], -1)


def num_groups(shape: torch.Size | tuple[int, ...], grouping: str) -> int:
    """How many groups a weight of ``shape`` has under ``grouping``."""
    return {"out": shape[0], "in": shape[1], "kernel": shape[0] * shape[1]}[grouping]


def expand_group_mask(mask: Tensor, shape: torch.Size | tuple[int, ...], grouping: str) -> Tensor:
    """A per-group mask ``(num_groups,)`` broadcast to a per-weight mask of ``shape``."""
    shape = tuple(shape)
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}; choose one of {GROUPINGS}")
    if mask.shape != (num_groups(shape, grouping),):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not have one entry per "
                         f"{grouping!r} group of a {shape} weight ({num_groups(shape, grouping)})")
    rest = (1,) * (len(shape) - 2)
    if grouping == "out":
        return mask.view(-1, 1, *rest).expand(shape)
    if grouping == "in":
        return mask.view(1, -1, *rest).expand(shape)
    return mask.view(shape[0], shape[1], *rest).expand(shape)


def group_mean_square(w: Tensor, grouping: str) -> Tensor:
    """Mean of w^2 over each group, ``||w_g||^2 / m`` (the Ke & Fan E-step statistic)."""
    return group_view(w, grouping).pow(2).mean(dim=1)


def group_range(w: Tensor, grouping: str) -> Tensor:
    """max - min of w over each group (the Ke & Fan CNN hard-pruning statistic)."""
    v = group_view(w, grouping)
    return v.amax(dim=1) - v.amin(dim=1)


def group_snr(mu: Tensor, sigma: Tensor, grouping: str) -> Tensor:
    """Group signal-to-noise ratio ``||mu_g||_2 / ||sigma_g||_2``.

    For a single weight this is BPrune's |mu|/sigma (Sharma & Jennings, BPrune step 4); for a
    group it is the SNR of the group's weight vector as a whole (its squared value is the ratio
    of the group's mean energy to its mean variance).
    """
    if mu.shape != sigma.shape:
        raise ValueError(f"mu {tuple(mu.shape)} and sigma {tuple(sigma.shape)} differ in shape")
    num = group_view(mu, grouping).pow(2).sum(dim=1)
    den = group_view(sigma, grouping).pow(2).sum(dim=1)
    return (num / den.clamp_min(torch.finfo(den.dtype).tiny)).sqrt()


def spike_slab_estep(w: Tensor, grouping: str, soft_threshold: float) -> Tensor:
    """Hard E-step of the spike-and-slab group prior (Ke & Fan).

    Returns a boolean per group: True = slab (the group is kept, small weight decay), False =
    spike (``mean(w_g^2) < soft_threshold``, large weight decay). The decision is re-made at every
    call, so a group can return to the slab.
    """
    if not soft_threshold >= 0:
        raise ValueError(f"soft_threshold must be >= 0, got {soft_threshold}")
    return group_mean_square(w, grouping) >= soft_threshold


def noise_floor_threshold(w: Tensor, grouping: str, floor: float, rel: float) -> float:
    """E-step threshold relative to the noise floor: ``max(floor, rel * median_g mean(w_g^2))``.

    In a sparse input layer most groups carry no signal, so the median group mean square (pruned
    groups count as 0) measures how large sampling noise and fitting noise make a useless group
    at the current step size, loss and width; a group is put under the slab only when it stands
    ``rel`` times above it. This makes the E-step scale-free where a fixed threshold is not (a
    noise column's mean square grows with the step size and shrinks with the loss's curvature).
    ``rel = 0`` gives the fixed ``floor`` (Ke & Fan's rule).
    """
    if not (floor >= 0 and rel >= 0):
        raise ValueError(f"need floor >= 0 and rel >= 0, got {floor}, {rel}")
    if rel == 0:
        return float(floor)
    return max(float(floor), rel * float(group_mean_square(w, grouping).median()))


def spike_slab_threshold(group_size: int, slab_std: float, spike_std: float,
                         inclusion: float = 0.5) -> float:
    """The ``soft_threshold`` at which a group's posterior inclusion probability is 1/2.

    For slab N(0, s1^2 I), spike N(0, s0^2 I) (s0 < s1) over a group of m weights and prior
    inclusion probability theta, p(slab | w_g) > 1/2 iff
    ``||w_g||^2 / m > [2 log((1-theta)/theta) + 2 m log(s1/s0)] / [m (1/s0^2 - 1/s1^2)]``
    (Ke & Fan, derived there; the authors' code uses a fixed threshold instead).
    """
    if not (group_size >= 1 and 0 < spike_std < slab_std and 0 < inclusion < 1):
        raise ValueError("need group_size >= 1, 0 < spike_std < slab_std and 0 < inclusion < 1; "
                         f"got {group_size}, {spike_std}, {slab_std}, {inclusion}")
    m = group_size
    num = 2 * math.log((1 - inclusion) / inclusion) + 2 * m * math.log(slab_std / spike_std)
    return num / (m * (1 / spike_std**2 - 1 / slab_std**2))


def hard_prune_groups(w: Tensor, grouping: str, hard_threshold: float,
                      rule: str = "mean_square") -> Tensor:
    """Groups to remove permanently (True = prune), by ``mean(w_g^2)`` (Ke & Fan FC/GNN) or by
    ``max(w_g) - min(w_g)`` (``rule="range"``, Ke & Fan CNN) below ``hard_threshold``."""
    if not hard_threshold >= 0:
        raise ValueError(f"hard_threshold must be >= 0, got {hard_threshold}")
    if rule == "mean_square":
        return group_mean_square(w, grouping) < hard_threshold
    if rule == "range":
        return group_range(w, grouping) < hard_threshold
    raise ValueError(f"unknown rule {rule!r}; choose 'mean_square' or 'range'")


def group_is_zero(w: Tensor, grouping: str) -> Tensor:
    """True for each group whose weights are all exactly zero (a removed unit/channel)."""
    return ~group_view(w, grouping).ne(0).any(dim=1)


@torch.no_grad()
def sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over all parameters (Ke & Fan's ``count_sparsity``)."""
    zeros = total = 0
    for p in model.parameters():
        zeros += int((p == 0).sum())
        total += p.numel()
    return zeros / max(1, total)


@torch.no_grad()
def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Zero fraction of each module's own parameters (modules without parameters left out)."""
    out = {}
    for name, m in model.named_modules():
        ps = list(m.parameters(recurse=False))
        if ps:
            out[name or "model"] = (sum(int((p == 0).sum()) for p in ps)
                                    / sum(p.numel() for p in ps))
    return out
