"""BPrune's SNR pruning of a posterior held outside the network: IVON's N(m, σ²) over plain weights.

An IVON run (Shen et al. 2024) trains a deterministic network; its posterior is a
:class:`bayescale.nn.posterior.ParamPosterior` (mean m in the parameters, σ = 1/sqrt(λ(h + δ)) in
the optimizer). The BPrune criterion is the same as for Bayesian layers, SNR = |m|/σ per weight
(Sharma & Jennings 2020, step 4), and the steps compose the same way:

    post = opt.posterior(model)             # or run.posterior of a finished IVON run
    pruned, post2, info = prune_posterior(model, post, sparsity=0.8)           # unstructured
    small, post3 = structured_prune_posterior(model, post, x[:1], sparsity=0.5)  # units, rebuilt

A pruned weight is removed from the posterior: m = σ = 0, so every draw of it is exactly 0 (the
``"clean"`` mode of :mod:`bayescale.pruning.bprune`; a plain network has no mask buffer, the
zeros live in the mean and the std). Weights of ``nn.Linear`` / ``nn.Conv*`` layers are scored;
biases and BatchNorm parameters are kept. Structured pruning removes a unit's weights, bias and
the BatchNorm affine after it (m and σ alike), then rebuilds the network smaller with
:func:`bayescale.pruning.compact.compact`; a channel is removed only when it is zero in every
draw (zero mean and zero σ), so the compacted posterior is the same predictive distribution.
The unit score is the group SNR ||m_g|| / ||σ_g|| over the unit's weights.

References:
    Sharma & Jennings, "Bayesian neural networks at scale: a performance analysis and pruning
    study", J. Supercomput. 77 (2021), arXiv:2005.11619 (BPrune).
    Shen et al., "Variational Learning is Effective for Large Deep Networks", ICML 2024,
    arXiv:2402.17641 (IVON, the posterior pruned here).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..kefan.groups import expand_group_mask, group_snr
from ..nn.layers import BayesianLayer
from ..nn.posterior import ParamPosterior
from .bprune import masks_from_scores, percent_pruned
from .compact import _NORMS, _PRODUCERS, _boundaries, compact, compaction_plan, unit_masks

__all__ = ["posterior_layers", "posterior_snr_scores", "apply_posterior_masks",
           "prune_posterior", "posterior_unit_scores", "mask_posterior_units",
           "compact_posterior", "structured_prune_posterior", "posterior_prune_table",
           "prune_posterior_run"]


# ------------------------------------------------------------------ binding
def _index(model: nn.Module, posterior: ParamPosterior) -> dict[str, int]:
    """Parameter name in ``model`` -> index in ``posterior`` (matched by identity)."""
    pos = {id(p): i for i, p in enumerate(posterior.params)}
    out = {n: pos[id(p)] for n, p in model.named_parameters() if id(p) in pos}
    if len(out) != len(posterior):
        raise ValueError("the posterior does not describe this model's parameters; build it "
                         "from this model: opt.posterior(model), ParamPosterior.load(path, model) "
                         "or run.posterior of bayescale.train.runs.load_run")
    return out


def _rebind(model: nn.Module, posterior: ParamPosterior, new: nn.Module) -> ParamPosterior:
    """A copy of ``posterior`` over the same-named parameters of ``new`` (a copy of model)."""
    index = _index(model, posterior)
    names = sorted(index, key=index.get)  # type: ignore[arg-type]
    params = dict(new.named_parameters())
    return ParamPosterior([params[n] for n in names], posterior.mean, posterior.std, names)


def posterior_layers(model: nn.Module, posterior: ParamPosterior) -> dict[str, nn.Module]:
    """The plain Linear/Conv layers of ``model`` whose weight the posterior describes.

    Raises:
        ValueError: ``model`` has Bayesian layers, or no such layer.
    """
    if any(isinstance(m, BayesianLayer) for m in model.modules()):
        raise ValueError("this model has Bayesian layers: prune them with "
                         "bayescale.pruning.prune(model); posterior pruning is for a "
                         "posterior over a plain network (IVON)")
    index = _index(model, posterior)
    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, _PRODUCERS) and f"{n}.weight" in index}
    if not layers:
        raise ValueError("the posterior covers no nn.Linear/nn.Conv weight of this model")
    return layers


def _entry(index: Mapping[str, int], posterior: ParamPosterior, name: str
           ) -> tuple[Tensor, Tensor] | None:
    i = index.get(name)
    return None if i is None else (posterior.mean[i], posterior.std[i])


# ------------------------------------------------------------------ unstructured
@torch.no_grad()
def posterior_snr_scores(model: nn.Module, posterior: ParamPosterior) -> dict[str, Tensor]:
    """SNR |m|/σ of every Linear/Conv weight, keyed by layer name (BPrune step 4).

    Removed weights (m = σ = 0) score 0; a frozen weight (σ = 0, m ≠ 0) scores the largest
    finite value, so it is pruned last.
    """
    index = _index(model, posterior)
    out = {}
    for name in posterior_layers(model, posterior):
        m, s = _entry(index, posterior, f"{name}.weight")  # type: ignore[misc]
        big = torch.finfo(s.dtype).max
        snr = torch.where(s > 0, m.abs() / s.clamp_min(torch.finfo(s.dtype).tiny),
                          torch.where(m != 0, big, 0.0))
        out[name] = snr.clamp_max(big)
    return out


def _zero(param: Tensor, entry: tuple[Tensor, Tensor] | None, drop: Tensor) -> None:
    """m = σ = 0 (and the parameter = 0) where ``drop`` is True."""
    param.data.masked_fill_(drop.to(param.device), 0.0)
    if entry is not None:
        for t in entry:
            t.masked_fill_(drop.to(t.device), 0.0)


@torch.no_grad()
def apply_posterior_masks(model: nn.Module, posterior: ParamPosterior,
                          masks: Mapping[str, Tensor]) -> nn.Module:
    """Remove weights in place: m = σ = 0 (and the parameter 0) where the mask is False.

    Args:
        masks: per layer name, a bool tensor of the weight's shape, True = kept (e.g. from
            :func:`bayescale.pruning.masks_from_scores` on :func:`posterior_snr_scores`).
    """
    layers, index = posterior_layers(model, posterior), _index(model, posterior)
    for name, k in masks.items():
        if name not in layers:
            raise ValueError(f"masks name a layer the posterior does not cover: {name!r}; "
                             f"layers: {sorted(layers)}")
        w = layers[name].weight
        if k.dtype != torch.bool or k.shape != w.shape:
            raise ValueError(f"mask of {name!r} must be bool of shape {tuple(w.shape)}, got "
                             f"{k.dtype} {tuple(k.shape)}")
        if not k.any():
            raise ValueError(f"the mask would prune all {k.numel()} weights of layer {name!r}; "
                             "use a lower threshold/sparsity, or scope='layer'")
    for name, k in masks.items():
        _zero(layers[name].weight, _entry(index, posterior, f"{name}.weight"), ~k)
    return model


def prune_posterior(model: nn.Module, posterior: ParamPosterior, *,
                    threshold: float | None = None, sparsity: float | None = None,
                    scope: str = "global", inplace: bool = False
                    ) -> tuple[nn.Module, ParamPosterior, dict[str, Any]]:
    """Score by SNR, mask and remove in one call: ``(model, posterior, info)``.

    ``info`` has the fields of :func:`bayescale.pruning.prune`: threshold (for a global
    sparsity the largest pruned SNR, i.e. the equivalent BPrune threshold), target sparsity,
    BPrune's ``percent_pruned`` (2 · count_nonzero(SNR) per layer, before and after). Model and
    posterior are copied unless ``inplace``.
    """
    if not inplace:
        new = copy.deepcopy(model)
        posterior, model = _rebind(model, posterior, new), new
    scores = posterior_snr_scores(model, posterior)
    masks = masks_from_scores(scores, threshold=threshold, sparsity=sparsity, scope=scope)
    if threshold is None and scope == "global":
        pruned = [s[~masks[n]] for n, s in scores.items() if (~masks[n]).any()]
        threshold = max(float(p.max()) for p in pruned) if pruned else 0.0
    before = {n: 2 * int(torch.count_nonzero(s)) for n, s in scores.items()}
    apply_posterior_masks(model, posterior, masks)
    after = {n: 2 * int(torch.count_nonzero(s))
             for n, s in posterior_snr_scores(model, posterior).items()}
    info = {"criterion": "snr", "mode": "clean", "scope": scope, "threshold": threshold,
            "target_sparsity": sparsity, "percent_pruned": percent_pruned(before, after),
            "nonzeros_before": before, "nonzeros_after": after}
    return model, posterior, info


# ------------------------------------------------------------------ structured
@torch.no_grad()
def posterior_unit_scores(model: nn.Module, posterior: ParamPosterior) -> dict[str, Tensor]:
    """Group SNR ||m_g|| / ||σ_g|| per output unit of each layer that feeds another layer."""
    posterior_layers(model, posterior)
    index = _index(model, posterior)
    out = {}
    for b in _boundaries(model):
        entry = _entry(index, posterior, f"{b.producer}.weight")
        if entry is not None:
            out[b.producer] = group_snr(entry[0], entry[1], "out")
    return out


@torch.no_grad()
def mask_posterior_units(model: nn.Module, posterior: ParamPosterior,
                         keep: Mapping[str, Tensor]) -> nn.Module:
    """Remove units in place (every draw of their output is 0): m = σ = 0 for the unit's
    weights and bias and for the affine of the BatchNorm(s) before the next layer."""
    bounds = {b.producer: b for b in _boundaries(model)}
    index = _index(model, posterior)
    for name, k in keep.items():
        if name not in bounds:
            raise ValueError(f"{name!r} is not a prunable layer; choose from {sorted(bounds)}")
        w = model.get_submodule(name).weight
        if k.dtype != torch.bool or k.shape != (w.shape[0],) or not k.any():
            raise ValueError(f"keep mask of {name!r} must be bool of shape ({w.shape[0]},) "
                             "with at least one unit kept")
    for name, k in keep.items():
        layer = model.get_submodule(name)
        _zero(layer.weight, _entry(index, posterior, f"{name}.weight"),
              ~expand_group_mask(k, layer.weight.shape, "out"))
        owners = [(name, layer)] + [(n, model.get_submodule(n)) for n in bounds[name].between
                                    if isinstance(model.get_submodule(n), _NORMS)]
        for owner, mod in owners:
            for pname in ("bias",) if mod is layer else ("weight", "bias"):
                p = getattr(mod, pname, None)
                if p is not None:
                    _zero(p, _entry(index, posterior, f"{owner}.{pname}"), ~k)
    return model


def _holding(model: nn.Module, index: Mapping[str, int], values: Sequence[Tensor],
             rest: str) -> nn.Module:
    """A copy of ``model`` whose posterior parameters hold ``values``; the others are kept
    (``rest="keep"``), their absolute value (``"abs"``) or zero (``"zero"``)."""
    new = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in new.named_parameters():
            if name in index:
                p.copy_(values[index[name]])
            elif rest != "keep":
                p.copy_(p.abs() if rest == "abs" else torch.zeros_like(p))
    return new


@torch.no_grad()
def compact_posterior(model: nn.Module, posterior: ParamPosterior, example_input: Tensor
                      ) -> tuple[nn.Module, ParamPosterior]:
    """A physically smaller network and its posterior, without the units that are zero in
    every draw (m = σ = 0: after :func:`mask_posterior_units`). Model and posterior are not
    modified; the compacted posterior gives the same predictive distribution.

    Raises:
        ValueError: a unit with zero weights still has a random bias (its constant output
            cannot be folded into the next layer exactly); remove it with
            :func:`mask_posterior_units`, which zeroes the bias too.
    """
    posterior_layers(model, posterior)
    index = _index(model, posterior)
    # |m| + σ is zero exactly where every draw is zero: plan the cuts on that support
    support = _holding(model, index, [m.abs() + s for m, s in zip(posterior.mean,
                                                                  posterior.std, strict=True)],
                       "abs")
    plan = compaction_plan(support, example_input)
    if plan.bias_delta:
        raise ValueError(f"layers {sorted(plan.bias_delta)} would receive a folded bias from "
                         "units with zero weights but a nonzero (random) bias; remove those "
                         "units with mask_posterior_units, which zeroes their bias as well")
    small = compact(_holding(model, index, posterior.mean, "keep"), example_input, plan=plan)
    small_std = compact(_holding(model, index, posterior.std, "zero"), example_input, plan=plan)
    names = sorted(index, key=index.get)  # type: ignore[arg-type]
    params, stds = dict(small.named_parameters()), dict(small_std.named_parameters())
    post = ParamPosterior([params[n] for n in names], [params[n] for n in names],
                          [stds[n] for n in names], names)
    return small, post


def structured_prune_posterior(model: nn.Module, posterior: ParamPosterior,
                               example_input: Tensor, *, sparsity: float | None = None,
                               threshold: float | None = None, scope: str = "layer",
                               layers: list[str] | None = None
                               ) -> tuple[nn.Module, ParamPosterior]:
    """Score units by group SNR, remove the lowest and rebuild smaller: ``(small, posterior)``.

    Args:
        sparsity / threshold: fraction of units to remove, or a unit-SNR threshold.
        scope: ``"layer"`` (each layer loses the same fraction) or ``"global"``.
        layers: restrict pruning to these layers (default: every layer but the last).
    """
    new = copy.deepcopy(model)
    post = _rebind(model, posterior, new)
    scores = posterior_unit_scores(new, post)
    if layers is not None:
        scores = {n: scores[n] for n in layers}
    keep = unit_masks(scores, sparsity=sparsity, threshold=threshold, scope=scope)
    mask_posterior_units(new, post, keep)
    return compact_posterior(new, post, example_input)


# ------------------------------------------------------------------ the BPrune table
@torch.no_grad()
def posterior_prune_table(model: nn.Module, posterior: ParamPosterior, data: Any,
                          thresholds: Sequence[float] = (), *, sparsities: Sequence[float] = (),
                          scope: str = "global", num_samples: int = 100, num_passes: int = 50,
                          batch_size: int = 1000) -> list[dict[str, Any]]:
    """:func:`bayescale.pruning.bprune_table` for a posterior over a plain network: one row
    per threshold or sparsity (mode ``"clean"``), the same fields, draws from the posterior."""
    from ..uncertainty.metrics import accuracy, heldout_log_likelihood, mean_single_sample_accuracy
    from ..uncertainty.predict import mc_predict, timed_mc_predict

    x, y = (data.x, data.y) if hasattr(data, "x") else data
    if not thresholds and not sparsities:
        raise ValueError("give at least one threshold or sparsity for the table")
    if num_samples < 1 or num_passes < 1:
        raise ValueError(f"num_samples and num_passes must be >= 1, got {num_samples}, "
                         f"{num_passes}")
    settings = [{"threshold": float(t)} for t in thresholds]
    settings += [{"sparsity": float(s), "scope": scope} for s in sparsities]
    rows = []
    for kw in settings:
        pruned, post, info = prune_posterior(model, posterior, **kw)
        pruned.eval()
        row = {k: info[k] for k in ("mode", "criterion", "scope", "threshold",
                                    "target_sparsity", "percent_pruned")}
        samples = mc_predict(pruned, x, num_passes, batch_size=batch_size, posterior=post,
                             return_samples=True)
        probs, seconds = timed_mc_predict(pruned, x, num_samples, batch_size=batch_size,
                                          posterior=post)
        row.update(acc_single=mean_single_sample_accuracy(samples, y),
                   acc_mc=accuracy(probs, y), heldout_nats=heldout_log_likelihood(probs, y),
                   infer_time_s=seconds, num_samples=num_samples, num_passes=num_passes,
                   num_test=int(x.shape[0]))
        rows.append(row)
    return rows


def prune_posterior_run(run: Any, data: tuple[Tensor, Tensor], thresholds: Sequence[float], *,
                        sparsities: Sequence[float] = (), scope: str = "global",
                        modes: Sequence[str] = ("clean",), criterion: str = "snr",
                        num_samples: int = 100, num_passes: int = 50, save: bool = False,
                        plots: bool = True, plot_thresholds: Sequence[float] = ()
                        ) -> dict[str, Any]:
    """``bayescale prune RUN`` for an IVON run (``RUN/posterior.pt``): the clean-mode SNR table
    in ``RUN/prune/`` (BPrune's ``bprune`` mode, rho = 0, has no meaning for a σ held by the
    optimizer and is skipped)."""
    from .bprune import write_table_csv

    if "clean" not in modes or criterion != "snr" or save:
        raise ValueError("an IVON run is pruned by SNR in clean mode (m = sigma = 0), without "
                         "--save: use --mode clean (or both) and no --criterion/--save, or prune "
                         "in Python with bayescale.pruning.prune_posterior(run.model, "
                         "run.posterior, ...)")
    rows = posterior_prune_table(run.model, run.posterior, data, thresholds,
                                 sparsities=sparsities, scope=scope, num_samples=num_samples,
                                 num_passes=num_passes)
    out = run.run_dir / "prune"
    result: dict[str, Any] = {"rows": rows, "csv": write_table_csv(rows, out / "bprune.csv")}
    if plots:
        from .plots import plot_accuracy_vs_sparsity, plot_snr_distribution

        scores = posterior_snr_scores(run.model, run.posterior)
        result["plots"] = [plot_snr_distribution(scores, out / "snr.png", plot_thresholds),
                           plot_accuracy_vs_sparsity(rows, out / "accuracy_vs_pruned.png")]
    return result
