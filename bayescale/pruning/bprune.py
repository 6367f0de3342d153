"""SNR pruning of trained Bayesian networks (BPrune, Sharma & Jennings 2020).

Pruning is three pure steps (optax-style composition) and one write:

    scores = snr_scores(model)                                  # |mu| / sigma per weight
    masks = masks_from_scores(scores, threshold=2.0)            # BPrune: one absolute threshold
    masks = masks_from_scores(scores, sparsity=0.8, scope="layer")   # or a target sparsity
    apply_masks(model, masks, mode="clean")                     # or mode="bprune"

A mask is a bool tensor per Bayesian layer (keyed by the layer's qualified name), True = kept.
Two modes, both apply a mask to mu and sigma together:

* ``"clean"``: the weight is removed: exactly 0 in every forward, no noise, out of the KL. The
  mask is the layer's persistent ``weight_mask`` buffer (saved in the state_dict, loadable into a
  fresh model, reversible with :func:`remove_masks`); mu and rho are left untouched.
* ``"bprune"``: BPrune's own operation (BPrune step 5): mu <- 0 and rho <- 0, so a pruned weight
  becomes N(0, ln(2)^2) noise, sigma = softplus(0) = ln 2. Parameters are overwritten (not
  reversible). On layers whose init caps sigma (``rho_max``, the TFP VGG/ResNet preset) sigma is
  read through the cap (softplus(log 0.2) = 0.18); TF's BPrune bypassed the cap.

"% pruned" is counted as BPrune does (BPrune step 6): nonzeros = sum over layers of
2 * count_nonzero(SNR) (mu and sigma per weight; pruned entries have SNR 0), and
% pruned = 100 * (1 - nonzeros_after / nonzeros_before). :func:`bprune_table` builds the whole
BPrune table (threshold -> % pruned -> accuracy -> held-out nats -> MC inference time).

References:
    Sharma & Jennings, "Bayesian neural networks at scale: a performance analysis and pruning
    study", J. Supercomput. 77 (2021), arXiv:2005.11619; BPrune 0.0.1 (``Prune_BNN.py``).
    Blundell et al., "Weight uncertainty in neural networks" (SNR pruning), arXiv:1505.05424.
"""

from __future__ import annotations

import copy
import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..nn.layers import BayesianLayer

__all__ = ["MODES", "SCOPES", "CRITERIA", "prunable_layers", "snr_scores", "magnitude_scores",
           "threshold_masks", "sparsity_masks", "masks_from_scores", "apply_masks",
           "remove_masks", "get_masks", "pruned_fraction", "bprune_nonzeros", "percent_pruned",
           "prune", "bprune_table", "write_table_csv", "prune_run", "finetune"]

MODES = ("clean", "bprune")
SCOPES = ("global", "layer")
CRITERIA = ("snr", "magnitude")
BPRUNE_ZERO = 1e-44  # BPrune replaces threshold 0.0 by this (prunes SNR <= 1e-44, i.e. zeros)

Masks = dict[str, Tensor]


# ------------------------------------------------------------------ layers and scores
def prunable_layers(model: nn.Module) -> dict[str, BayesianLayer]:
    """The Bayesian layers of ``model`` by qualified name.

    Raises:
        ValueError: the model has no Bayesian layer.
    """
    layers = {name: m for name, m in model.named_modules() if isinstance(m, BayesianLayer)}
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Bayesian layers (BayesLinear/BayesConv*) "
                         "to prune by SNR; convert it with bayescale.bayesianize(model), or remove "
                         "zero units of a deterministic net with bayescale.pruning.compact.compact")
    return layers


def _effective_mu(layer: BayesianLayer) -> Tensor:
    mu = layer.weight_mu.detach()
    return mu * layer.weight_mask if layer._masked else mu


@torch.no_grad()
def snr_scores(model: nn.Module) -> Masks:
    """Signal-to-noise ratio |mu| / sigma of every Bayesian weight (BPrune step 4).

    sigma = softplus(rho) (capped where the init sets ``rho_max``). Weights already pruned in
    clean mode score 0, as BPrune's mu = 0 does.
    """
    return {name: _effective_mu(l).abs() / l.weight_sigma.detach()
            for name, l in prunable_layers(model).items()}


@torch.no_grad()
def magnitude_scores(model: nn.Module) -> Masks:
    """|mu| of every Bayesian weight: the magnitude-pruning baseline (sigma ignored)."""
    return {name: _effective_mu(l).abs() for name, l in prunable_layers(model).items()}


# ------------------------------------------------------------------ masks
def _check_scores(scores: Mapping[str, Tensor]) -> None:
    if not scores:
        raise ValueError("no scores given: compute them with snr_scores(model)")
    for name, s in scores.items():
        if not torch.isfinite(s).all() or (s < 0).any():
            raise ValueError(f"scores of {name!r} must be finite and >= 0")


def threshold_masks(scores: Mapping[str, Tensor], threshold: float) -> Masks:
    """BPrune's rule: prune every weight with score <= ``threshold`` in every layer.

    One absolute threshold for all layers (not a percentile); 0.0 prunes only zero scores
    (BPrune's 1e-44).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0 (an SNR |mu|/sigma), got "
                         f"{threshold!r}")
    _check_scores(scores)
    tau = threshold if threshold > 0 else BPRUNE_ZERO
    return {name: s > tau for name, s in scores.items()}


def _lowest(s: Tensor, k: int) -> Tensor:
    """Keep-mask of a flat score vector with exactly its ``k`` lowest entries False (stable)."""
    keep = torch.ones(s.numel(), dtype=torch.bool, device=s.device)
    keep[torch.argsort(s.reshape(-1), stable=True)[:k]] = False
    return keep


def sparsity_masks(scores: Mapping[str, Tensor], sparsity: float,
                   scope: str = "global") -> Masks:
    """Prune exactly floor(sparsity * N) lowest-scoring weights.

    Args:
        scores: per-layer scores (:func:`snr_scores`, :func:`magnitude_scores`).
        sparsity: fraction to prune, in [0, 1).
        scope: ``"global"`` (N = all weights, one ranking across layers) or ``"layer"`` (each
            layer loses floor(sparsity * its N)). Ties are broken by position (deterministic).
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) \
            or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a fraction in [0, 1) (0.8 = prune 80%), got "
                         f"{sparsity!r}")
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose one of {SCOPES}")
    _check_scores(scores)
    if scope == "layer":
        return {name: _lowest(s, math.floor(sparsity * s.numel())).view(s.shape)
                for name, s in scores.items()}
    flat = torch.cat([s.reshape(-1).double() for s in scores.values()])
    keep = _lowest(flat, math.floor(sparsity * flat.numel()))
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = keep[start:start + s.numel()].view(s.shape)
        start += s.numel()
    return out


def masks_from_scores(scores: Mapping[str, Tensor], *, threshold: float | None = None,
                      sparsity: float | None = None, scope: str = "global") -> Masks:
    """Masks (True = kept) from one absolute ``threshold`` or a target ``sparsity`` (one of
    the two; see :func:`threshold_masks` and :func:`sparsity_masks`)."""
    if (threshold is None) == (sparsity is None):
        raise ValueError("give exactly one of threshold= (BPrune's absolute SNR threshold) or "
                         "sparsity= (fraction of weights to prune)")
    if threshold is not None:
        return threshold_masks(scores, threshold)
    return sparsity_masks(scores, sparsity, scope)


def _check_masks(layers: Mapping[str, BayesianLayer], masks: Mapping[str, Tensor]) -> None:
    unknown = set(masks) - set(layers)
    if unknown:
        raise ValueError(f"masks name layers the model lacks: {sorted(unknown)}; build them from "
                         f"this model's scores (layers: {sorted(layers)})")
    for name, m in masks.items():
        if m.dtype != torch.bool or m.shape != layers[name].weight_mu.shape:
            raise ValueError(f"mask of {name!r} must be bool of shape "
                             f"{tuple(layers[name].weight_mu.shape)}, got {m.dtype} "
                             f"{tuple(m.shape)}")
        if not m.any():
            raise ValueError(f"the mask would prune all {m.numel()} weights of layer {name!r} "
                             "(its output would no longer depend on its input); use a lower "
                             "threshold/sparsity, or scope='layer' to prune each layer by the "
                             "same fraction")


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, Tensor], mode: str = "clean") -> nn.Module:
    """Prune ``model`` in place: ``mode="clean"`` sets the layers' ``weight_mask`` (ANDed with
    any mask already set), ``mode="bprune"`` sets mu = rho = 0 where the mask is False.

    Raises:
        ValueError: unknown mode, masks that do not fit the model, or a layer left empty.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    layers = prunable_layers(model)
    masks = {n: m.to(layers[n].weight_mu.device) if n in layers else m for n, m in masks.items()}
    if mode == "clean":
        masks = {n: m & layers[n].weight_mask if n in layers and layers[n]._masked else m
                 for n, m in masks.items()}
    _check_masks(layers, masks)
    for name, m in masks.items():
        layer = layers[name]
        if mode == "clean":
            layer.set_weight_mask(m.clone())
        else:
            layer.weight_mu.masked_fill_(~m, 0.0)
            layer.weight_rho.masked_fill_(~m, 0.0)
    return model


def remove_masks(model: nn.Module) -> nn.Module:
    """Undo clean-mode pruning in place (bprune mode overwrote mu and rho: nothing to undo)."""
    for layer in prunable_layers(model).values():
        layer.set_weight_mask(None)
    return model


def get_masks(model: nn.Module) -> Masks:
    """The clean-mode masks of ``model`` (all True for an unpruned layer)."""
    return {name: (l.weight_mask.clone() if l._masked
                   else torch.ones_like(l.weight_mu, dtype=torch.bool))
            for name, l in prunable_layers(model).items()}


# ------------------------------------------------------------------ counting (BPrune step 6)
def bprune_nonzeros(model: nn.Module) -> dict[str, int]:
    """BPrune's per-layer non-zero count: 2 * count_nonzero(SNR) (mu and sigma per weight)."""
    return {name: 2 * int(torch.count_nonzero(s)) for name, s in snr_scores(model).items()}


def percent_pruned(nonzeros_before: Mapping[str, int], nonzeros_after: Mapping[str, int]
                   ) -> float:
    """BPrune's "% Prune" = 100 * (1 - sum(after) / sum(before)) (BPrune step 6)."""
    before, after = sum(nonzeros_before.values()), sum(nonzeros_after.values())
    if before <= 0:
        raise ValueError("nonzeros_before is 0: count them on the unpruned model")
    return 100.0 * (1.0 - after / before)


def pruned_fraction(model: nn.Module) -> float:
    """Fraction of Bayesian weights pruned (SNR exactly 0: masked, or mu = 0 after bprune)."""
    scores = snr_scores(model)
    total = sum(s.numel() for s in scores.values())
    return sum(int((s == 0).sum()) for s in scores.values()) / total


# ------------------------------------------------------------------ one call
def prune(model: nn.Module, *, threshold: float | None = None, sparsity: float | None = None,
          scope: str = "global", criterion: str = "snr", mode: str = "clean",
          inplace: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Score, mask and apply in one call; returns ``(pruned model, info)``.

    ``info`` holds the criterion, mode, threshold (for a global sparsity: the largest pruned
    score, i.e. the equivalent BPrune threshold), target sparsity, ``percent_pruned`` (BPrune's
    count) and per-layer non-zeros before/after. The model is copied unless ``inplace``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
    scores = (snr_scores if criterion == "snr" else magnitude_scores)(model)
    masks = masks_from_scores(scores, threshold=threshold, sparsity=sparsity, scope=scope)
    if threshold is None and scope == "global":
        pruned = [s[~masks[n]] for n, s in scores.items()]
        pruned = [p for p in pruned if p.numel()]
        threshold = max(float(p.max()) for p in pruned) if pruned else 0.0
    before = bprune_nonzeros(model)
    out = model if inplace else copy.deepcopy(model)
    apply_masks(out, masks, mode)
    after = bprune_nonzeros(out)
    info = {"criterion": criterion, "mode": mode, "scope": scope, "threshold": threshold,
            "target_sparsity": sparsity, "percent_pruned": percent_pruned(before, after),
            "nonzeros_before": before, "nonzeros_after": after}
    return out, info


def finetune(model: nn.Module, x: Tensor, y: Tensor, *, epochs: int = 1,
             batch_size: int = 128, lr: float = 1e-3, num_train: int | None = None,
             seed: int = 0) -> nn.Module:
    """A few epochs of ELBO training (Adam, mean NLL + KL / N) of a pruned model, in place.

    Pruned weights stay removed: the mask zeroes their gradients, and compacted layers no
    longer have them. Returns the model in eval mode.
    """
    from ..nn.elbo import elbo_loss

    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"need epochs >= 0, batch_size >= 1 and lr > 0; got {epochs}, "
                         f"{batch_size}, {lr}")
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], batch_size):
            idx = order[i:i + batch_size]
            loss = elbo_loss(model(x[idx]), y[idx], model, num_train or x.shape[0])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


# ------------------------------------------------------------------ the BPrune table
def _evaluate(model: nn.Module, x: Tensor, y: Tensor, num_samples: int, num_passes: int,
              batch_size: int) -> dict[str, float]:
    """BPrune's metrics (BPrune step 7) on (x, y)."""
    from ..uncertainty.metrics import accuracy, heldout_log_likelihood, mean_single_sample_accuracy
    from ..uncertainty.predict import mc_predict, timed_mc_predict

    sample_probs = mc_predict(model, x, num_passes, batch_size=batch_size, return_samples=True)
    mean_probs, seconds = timed_mc_predict(model, x, num_samples, batch_size=batch_size)
    return {"acc_single": mean_single_sample_accuracy(sample_probs, y),
            "acc_mc": accuracy(mean_probs, y),
            "heldout_nats": heldout_log_likelihood(mean_probs, y),
            "infer_time_s": seconds}


@torch.no_grad()
def bprune_table(model: nn.Module, data: Any, thresholds: Sequence[float] = (), *,
                 sparsities: Sequence[float] = (), scope: str = "global",
                 modes: Sequence[str] = ("clean",), criterion: str = "snr",
                 num_samples: int = 100, num_passes: int = 50, batch_size: int = 1000
                 ) -> list[dict[str, Any]]:
    """The BPrune table: one row per (mode, threshold or sparsity).

    Each row: mode, criterion, scope, threshold, target_sparsity, percent_pruned (BPrune
    step 6), acc_single (mean single-sample accuracy over ``num_passes`` stochastic passes,
    BPrune's "Acc"), acc_mc (accuracy of the probabilities averaged over ``num_samples``
    draws), heldout_nats (mean log of those probabilities at the label) and infer_time_s (wall
    time of the ``num_samples`` MC passes over ``data``). The model itself is not modified.

    Args:
        model: a trained Bayesian classifier (eval mode is set on a copy).
        data: ``(x, y)`` tensors or an object with ``.x`` and ``.y`` (e.g. ``run.data().test``).
        thresholds: absolute SNR thresholds (0.0 = BPrune's inference mode, nothing pruned).
        sparsities: target sparsities (``scope`` global or per layer).
        modes: any of ``"clean"``, ``"bprune"``.
    """
    x, y = (data.x, data.y) if hasattr(data, "x") else data
    if not thresholds and not sparsities:
        raise ValueError("give at least one threshold or sparsity for the table")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    if num_samples < 1 or num_passes < 1:
        raise ValueError(f"num_samples and num_passes must be >= 1, got {num_samples}, "
                         f"{num_passes}")
    base = copy.deepcopy(model).eval()
    settings = [{"threshold": float(t)} for t in thresholds]
    settings += [{"sparsity": float(s), "scope": scope} for s in sparsities]
    rows = []
    for mode in modes:
        for kw in settings:
            pruned, info = prune(base, criterion=criterion, mode=mode, **kw)
            row = {k: info[k] for k in ("mode", "criterion", "scope", "threshold",
                                        "target_sparsity", "percent_pruned")}
            if "threshold" in kw:
                row["scope"] = "global"
            row.update(_evaluate(pruned, x, y, num_samples, num_passes, batch_size))
            row.update(num_samples=num_samples, num_passes=num_passes, num_test=int(x.shape[0]))
            rows.append(row)
    return rows


def write_table_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write :func:`bprune_table` rows as CSV (columns in row order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def prune_run(path: str | Path, *, thresholds: Sequence[float] = (),
              sparsities: Sequence[float] = (), scope: str = "global",
              modes: Sequence[str] = ("clean",), criterion: str = "snr", num_samples: int = 100,
              num_passes: int = 50, num_test: int | None = None, save: bool = False,
              plots: bool = True, baseline: bool = True) -> dict[str, Any]:
    """``bayescale prune RUN``: the BPrune table of a trained run, written to ``RUN/prune/``.

    The table starts with the unpruned model (threshold 0, BPrune's inference mode) when
    ``baseline``. Writes ``bprune.csv``, ``snr.png`` and ``accuracy_vs_pruned.png``; with
    ``save`` (one threshold or sparsity, one mode) also ``model_pruned.pt``, a checkpoint that
    :func:`bayescale.train.runs.load_run` opens (``model.pt`` is never touched).
    """
    from ..train.checkpoint import save_checkpoint
    from ..train.config import config_to_dict
    from ..train.runs import load_run

    run = load_run(path)
    test = run.data().test
    x, y = test.x[:num_test], test.y[:num_test]
    table = ([0.0] if baseline and 0.0 not in thresholds else []) + list(thresholds)
    if run.posterior is not None:  # an IVON run: SNR |m|/sigma of the posterior over its weights
        from .posterior import prune_posterior_run

        return prune_posterior_run(run, (x, y), table, sparsities=sparsities, scope=scope,
                                   modes=modes, criterion=criterion, num_samples=num_samples,
                                   num_passes=num_passes, save=save, plots=plots,
                                   plot_thresholds=thresholds)
    rows = bprune_table(run.model, (x, y), table, sparsities=sparsities, scope=scope,
                        modes=modes, criterion=criterion, num_samples=num_samples,
                        num_passes=num_passes)
    out = run.run_dir / "prune"
    result: dict[str, Any] = {"rows": rows, "csv": write_table_csv(rows, out / "bprune.csv")}
    if plots:
        from .plots import plot_accuracy_vs_sparsity, plot_snr_distribution

        result["plots"] = [plot_snr_distribution(snr_scores(run.model), out / "snr.png",
                                                 thresholds),
                           plot_accuracy_vs_sparsity(rows, out / "accuracy_vs_pruned.png")]
    if save:
        if len(thresholds) + len(sparsities) != 1 or len(modes) != 1:
            raise ValueError("--save needs exactly one threshold or sparsity and one mode")
        kw = {"threshold": thresholds[0]} if thresholds else {"sparsity": sparsities[0]}
        model, info = prune(run.model, scope=scope, criterion=criterion, mode=modes[0], **kw)
        info = {k: v for k, v in info.items() if not k.startswith("nonzeros")}
        result["saved"] = save_checkpoint(out / "model_pruned.pt", {
            "model": model.state_dict(), "config": config_to_dict(run.config),
            "step": run.step, "prune": info})
    return result

