"""Figures for pruning: SNR distribution per layer and accuracy against % pruned.

matplotlib (the ``plot`` extra) is imported lazily with the Agg backend, so these work on
machines without a display. BPrune drew a KDE of SNR per layer (``<layer>_SNR_ratioPlot.png``,
BPrune step 10); here one figure holds a histogram of log10 SNR for every layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["plot_snr_distribution", "plot_accuracy_vs_sparsity"]

_FLOOR = -6  # log10 SNR below this is drawn in the lowest bin



def _save_close(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (parents created) and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("pruning plots need matplotlib: pip install 'bayescale[plot]'") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_snr_distribution(scores: Mapping[str, Tensor], path: str | Path,
                          thresholds: Sequence[float] = ()) -> Path:
    """Histogram of log10(|mu|/sigma) per layer (zeros, i.e. pruned weights, left out).

    Args:
        scores: :func:`bayescale.pruning.bprune.snr_scores` of a model.
        path: output image (PNG, SVG, ... by suffix).
        thresholds: SNR thresholds to mark as vertical lines.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, s in scores.items():
        s = s.detach().reshape(-1).double()
        s = s[s > 0]
        if s.numel():
            # trained layers hold weights with mu ~ 1e-38 (inputs that are always 0): one bin
            ax.hist(torch.log10(s).clamp_min(_FLOOR).cpu().numpy(), bins=80, histtype="step",
                    density=True,
                    label=f"{name} ({s.numel():,})")
    for t in thresholds:
        if t > 0:
            ax.axvline(torch.log10(torch.tensor(float(t))).item(), color="k", ls=":", lw=0.8)
    ax.set_xlabel(f"log10 SNR = log10(|mu| / sigma)   (SNR < 1e{_FLOOR} shown at {_FLOOR})")
    ax.set_ylabel("density")
    ax.set_title("Signal-to-noise ratio of the Bayesian weights")
    ax.legend(fontsize=7)
    return _save_close(fig, path)


def plot_accuracy_vs_sparsity(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Accuracy (single-sample and MC-averaged) against % pruned, one line per mode.

    Args:
        rows: :func:`bayescale.pruning.bprune.bprune_table` rows.
        path: output image.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sub = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["percent_pruned"])
        xs = [r["percent_pruned"] for r in sub]
        ax.plot(xs, [100 * r["acc_mc"] for r in sub], marker="o", label=f"{mode}: MC-averaged")
        ax.plot(xs, [100 * r["acc_single"] for r in sub], marker="x", ls="--",
                label=f"{mode}: single sample")
    ax.set_xlabel("% pruned (BPrune count)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy against pruning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_close(fig, path)
