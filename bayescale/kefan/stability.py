"""How stable the selected support of a Ke & Fan run is, from its weight samples alone (pure
functions, no ground truth needed).

A group (an input column of a Linear weight, a filter, ...) is *included* in a weight sample when
its mean square is at least the E-step threshold, i.e. the spike-and-slab E-step would put it
under the slab. Over the samples the chain kept (3 per cycle), each group's *inclusion frequency*
estimates its posterior inclusion probability; the selected model is the median-probability
model (groups with frequency >= 1/2; Barbieri & Berger 2004). A support is *stable* when every
group is included in (nearly) all samples or (nearly) none: a frequency strictly between is a
group the chain could not decide on, the visible sign of a run not to trust.

A dense warm-up that *stalled* is the other such sign (:func:`warmup_stall`): the step size
anneals to its smallest value at the end of the first cycle, so a healthy warm-up ends at (or
near) its lowest training loss; one that ends well above an earlier low lost its fit on the way
(a loss spike that killed units), and what the E-step then prunes was decided on a broken net.

References:
    Ke & Fan, "On the optimization and pruning for Bayesian deep learning", arXiv:2210.12957.
    Barbieri & Berger, "Optimal predictive model selection", Annals of Statistics 32, 2004.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .groups import group_mean_square, noise_floor_threshold

__all__ = ["inclusion_frequency", "support_stability", "support_report", "pruned_signal",
           "warmup_stall"]


@torch.no_grad()
def inclusion_frequency(weights: Sequence[Tensor], grouping: str, threshold: float,
                        rel: float = 0.0) -> Tensor:
    """Fraction of ``weights`` (samples of one weight tensor) in which each group's mean square
    is ``>= threshold`` (a float tensor of one entry per group, in [0, 1]); with ``rel`` > 0 the
    threshold of each sample is the E-step's relative one,
    ``max(threshold, rel * median group mean square)`` (``noise_floor_threshold``).

    Args:
        weights: samples of one weight tensor, all of the same shape (at least one).
        grouping: ``"in"``, ``"out"`` or ``"kernel"`` (:data:`bayescale.kefan.GROUPINGS`).
        threshold: the E-step's ``soft_threshold`` (0 counts every non-zero group).
        rel: the E-step's ``rel_threshold`` (0: a fixed threshold, Ke & Fan's rule).
    """
    if not weights:
        raise ValueError("inclusion_frequency needs at least one weight sample")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    hits = None
    for w in weights:
        w = w.detach().float()
        ms = group_mean_square(w, grouping)
        inc = (ms > 0) & (ms >= noise_floor_threshold(w, grouping, threshold, rel))
        hits = inc.float() if hits is None else hits + inc.float()
    return hits / len(weights)


def support_stability(freq: Tensor, band: float = 0.1) -> dict[str, Any]:
    """Summary of inclusion frequencies: the selected groups (frequency >= 1/2), the undecided
    ones (frequency in ``(band, 1 - band)``) and a verdict.

    Returns a dict with ``selected`` (group indices), ``num_selected``, ``undecided`` (indices),
    ``num_undecided``, ``min_selected_freq`` (lowest frequency among the selected; 1 = every
    sample agrees), ``max_rejected_freq`` (highest among the others) and ``stable`` (no undecided
    group, and at least one selected: a run that kept nothing is no selection to trust).
    """
    if not 0 <= band < 0.5:
        raise ValueError(f"band must be in [0, 0.5), got {band}")
    sel = freq >= 0.5
    undecided = (freq > band) & (freq < 1 - band)
    return {"selected": torch.nonzero(sel).flatten().tolist(), "num_selected": int(sel.sum()),
            "undecided": torch.nonzero(undecided).flatten().tolist(),
            "num_undecided": int(undecided.sum()),
            "min_selected_freq": float(freq[sel].min()) if sel.any() else None,
            "max_rejected_freq": float(freq[~sel].max()) if (~sel).any() else None,
            "stable": bool(sel.any()) and not bool(undecided.any())}


def support_report(weights: Sequence[Tensor], grouping: str, threshold: float,
                   band: float = 0.1) -> dict[str, Any]:
    """:func:`support_stability` of the samples' :func:`inclusion_frequency`, with the
    frequencies themselves (``inclusion_frequency``, a list) and ``samples``/``threshold``:
    the record a run writes so its user sees how stable the selected support was."""
    freq = inclusion_frequency(weights, grouping, threshold)
    return {"samples": len(weights), "grouping": grouping, "threshold": float(threshold),
            "band": band, **support_stability(freq, band),
            "inclusion_frequency": [round(float(f), 4) for f in freq]}


@torch.no_grad()
def pruned_signal(grad: Tensor, kept: Tensor, rel: float = 8.0) -> dict[str, Any]:
    """A score test for the groups pruned for good (Rao's score test: the loss gradient at the
    constrained point w_g = 0). ``grad`` is the gradient of the training loss with respect to
    one weight (all of the training set, at the final weights), ``kept`` the boolean mask of
    its kept ``"in"`` groups (columns). The pruned columns' gradients share a common part (the
    inputs are correlated), so each column is scored by its distance to their elementwise
    median, in units of the median distance; a pruned column ``rel`` times further out than
    the typical one still has signal the run threw away (an input pruned too early).

    Returns ``pruned_with_signal`` (column indices, most deviant first), ``max_ratio`` (the
    largest distance ratio; 3-5 over ~1000 pure noise columns in the robustness study, 80 for
    true inputs pruned in a run stopped early) and ``num_pruned``.
    """
    if grad.dim() != 2 or kept.shape != (grad.shape[1],):
        raise ValueError(f"need a [out, in] gradient and one kept flag per column, got "
                         f"{tuple(grad.shape)} and {tuple(kept.shape)}")
    idx = torch.nonzero(~kept).flatten()
    if len(idx) < 3:
        return {"pruned_with_signal": [], "max_ratio": None, "num_pruned": len(idx)}
    g = grad[:, idx].double()
    dist = (g - g.median(dim=1, keepdim=True).values).norm(dim=0)
    ratio = dist / dist.median().clamp_min(torch.finfo(torch.float64).tiny)
    order = torch.argsort(ratio, descending=True)
    flagged = [int(idx[i]) for i in order if ratio[i] >= rel]
    return {"pruned_with_signal": flagged, "max_ratio": float(ratio.max()),
            "num_pruned": len(idx)}


def warmup_stall(losses: Sequence[float], tol: float = 0.05) -> dict[str, Any]:
    """Whether the dense warm-up stalled: ``losses`` are its epochs' mean training losses in
    order; it *stalled* when the last is more than ``tol`` (relative) above the lowest (the
    robustness study's failed ``interaction`` run without the spike guard: lowest 2.30 at epoch
    46, last 3.456).

    Returns ``stalled``, ``end_loss``, ``min_loss``, ``min_epoch`` (0-based) and ``epochs``;
    fewer than two finite losses give ``stalled`` False.
    """
    if tol < 0:
        raise ValueError(f"tol is a relative excess (>= 0), got {tol}")
    vals = [float(v) for v in losses]
    finite = [(i, v) for i, v in enumerate(vals) if v == v and abs(v) != float("inf")]
    if len(finite) < 2:
        return {"stalled": False, "end_loss": vals[-1] if vals else None, "min_loss": None,
                "min_epoch": None, "epochs": len(vals)}
    i_min, v_min = min(finite, key=lambda t: t[1])
    end = finite[-1][1]
    return {"stalled": bool(end > v_min + tol * abs(v_min)), "end_loss": end,
            "min_loss": v_min, "min_epoch": i_min, "epochs": len(vals)}
