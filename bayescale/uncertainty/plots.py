"""Figures from SAVED results (never re-running a model): posterior convergence, MC draws per
class, reliability, in- vs out-of-distribution uncertainty, accuracy vs coverage, training curves,
and the uncertainty study's accuracy and ECE against shift level.

Inputs are what ``bayescale train`` and ``bayescale evaluate`` wrote: a run directory
(``posterior/step_*.pt``, ``train.csv``, ``eval.csv``) or the arrays of ``eval/predictions.npz``
(:func:`bayescale.evaluate.load_predictions`). Each function saves one PNG and returns its path.
Matplotlib's object API with the Agg canvas is used (no pyplot, no global backend switch); it is
an optional dependency: ``pip install "bayescale[plot]"``.

References:
    Seed tutorial figures: Fig. 3, posterior means / std devs per layer at two training
    steps; Fig. 4, density over MC draws of the true-class probability, one test image per class.
    Guo et al. 2017, arXiv:1706.04599 (reliability diagram); Geifman & El-Yaniv 2017
    (accuracy-coverage / selective prediction); Ovadia et al. 2019, arXiv:1906.02530, Fig. 2
    (accuracy and calibration under dataset shift).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .metrics import accuracy_coverage, auroc, ece, reliability

__all__ = ["load_posterior_snapshots", "plot_posterior_convergence", "plot_true_class_draws",
           "plot_reliability", "plot_uncertainty_histograms", "plot_accuracy_coverage",
           "plot_training_curve", "plot_shift_curves", "STUDY_ORDER"]

Predictions = Mapping[str, np.ndarray] | str | Path
_DPI = 90  # small PNGs (<150 KB) that still read well in a report
# the uncertainty study's methods in their fixed order: method i is drawn in colour C<i>
STUDY_ORDER = ("deterministic", "temperature_scaled", "mc_dropout", "deep_ensemble", "bnn",
               "sghmc_bma", "ivon")


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('plots need matplotlib: pip install "bayescale[plot]"') from err
    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, out: str | Path, dpi: int = _DPI) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def _preds(predictions: Predictions) -> Mapping[str, np.ndarray]:
    if isinstance(predictions, str | Path):
        from .summary import load_predictions

        return load_predictions(predictions)
    return predictions


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a))


# ------------------------------------------------------------------------------ posterior
def load_posterior_snapshots(run_dir: str | Path) -> dict[int, dict[str, dict[str, torch.Tensor]]]:
    """``{step: posterior_stats}`` from ``RUN/posterior/step_*.pt`` (``weights_only`` loads)."""
    files = sorted(Path(run_dir, "posterior").glob("step_*.pt"))
    if not files:
        raise FileNotFoundError(f"no posterior snapshots in {Path(run_dir, 'posterior')}; they are "
                                "written by `bayescale train` for models with Bayesian layers")
    return {int(f.stem.split("_")[1]): torch.load(f, map_location="cpu", weights_only=True)
            for f in files}


def _pick_steps(steps: Sequence[int], wanted: Sequence[int] | None, most: int = 4) -> list[int]:
    if wanted is not None:
        missing = sorted(set(wanted) - set(steps))
        if missing:
            raise ValueError(f"no posterior snapshot at steps {missing}; saved steps: {steps}")
        return sorted(wanted)
    if len(steps) <= most:
        return list(steps)
    idx = np.unique(np.linspace(0, len(steps) - 1, most).round().astype(int))
    return [steps[i] for i in idx]


def plot_posterior_convergence(run_dir: str | Path, out: str | Path,
                               steps: Sequence[int] | None = None) -> Path:
    """Seed Fig. 3: histogram densities of mu and sigma per Bayesian layer, one line per step.

    Args:
        run_dir: a run directory with ``posterior/step_*.pt``.
        out: the PNG to write.
        steps: which snapshots (default: up to 4 spread from first to last).
    """
    snaps = load_posterior_snapshots(run_dir)
    chosen = _pick_steps(sorted(snaps), steps)
    layers = list(snaps[chosen[0]])
    if not layers:
        raise ValueError(f"{run_dir}: the posterior snapshots hold no Bayesian layer (a "
                         "deterministic network has no posterior to plot)")
    fig = _figure(8.0, 2.3 * len(layers) + 0.4)
    axes = fig.subplots(len(layers), 2, squeeze=False)
    cmap = [f"C{i}" for i in range(len(chosen))]
    for row, layer in enumerate(layers):
        for col, key in enumerate(("mu", "sigma")):
            ax = axes[row, col]
            for color, step in zip(cmap, chosen, strict=True):
                s = snaps[step][layer]
                edges, hist = s[f"{key}_edges"].double(), s[f"{key}_hist"].double()
                width = (edges[1:] - edges[:-1]).clamp_min(1e-30)
                density = hist / (hist.sum() * width)
                ax.plot(((edges[1:] + edges[:-1]) / 2).numpy(), density.numpy(), color=color,
                        label=f"step {step}")
            ax.set_title(f"{layer}: {'posterior mean mu' if key == 'mu' else 'posterior sd sigma'}",
                         fontsize=9)
            ax.set_ylabel("density", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[row, 0].legend(fontsize=7)
    fig.suptitle("Posterior convergence (histograms per layer and training step)", fontsize=10)
    return _save(fig, out)


# ------------------------------------------------------------------------------ MC draws
def _image(ax: Any, img: np.ndarray) -> None:
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    lo, hi = float(img.min()), float(img.max())
    ax.imshow((img - lo) / (hi - lo if hi > lo else 1.0), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_true_class_draws(predictions: Predictions, out: str | Path,
                          class_names: Sequence[str] | None = None, bins: int = 20) -> Path:
    """Seed Fig. 4: per class, a histogram over the T weight draws of p(y_true | x, w_t).

    Uses ``class_index``, ``class_true_probs`` (T, K), ``labels`` and ``class_images`` of the
    saved predictions; the image is drawn as an inset.
    """
    p = _preds(predictions)
    draws, idx = np.asarray(p["class_true_probs"]), np.asarray(p["class_index"])
    labels = np.asarray(p["labels"])[idx]
    k = draws.shape[1]
    cols = min(5, k)
    rows = -(-k // cols)
    fig = _figure(2.0 * cols, 1.75 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    edges = np.linspace(0.0, 1.0, bins + 1)
    for j, ax in enumerate(axes.flat):
        if j >= k:
            ax.axis("off")
            continue
        ax.hist(draws[:, j], bins=edges, color="C0")
        ax.axvline(float(draws[:, j].mean()), color="C3", lw=1)
        name = class_names[labels[j]] if class_names else str(labels[j])
        ax.set_title(f"{name} (#{idx[j]}): mean {draws[:, j].mean():.2f}", fontsize=8)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
        if "class_images" in p:
            _image(ax.inset_axes([0.02, 0.5, 0.35, 0.45]), p["class_images"][j])
    fig.supxlabel("p(true class | x, w_t) over the MC draws (red: mean)", fontsize=9)
    fig.suptitle(f"MC draws (T = {draws.shape[0]}) of the true-class probability, one test "
                 "image per class", fontsize=10)
    return _save(fig, out)


# ------------------------------------------------------------------------------ calibration
def plot_reliability(predictions: Predictions, out: str | Path, num_bins: int | None = None
                     ) -> Path:
    """Reliability diagram of the MC-averaged probabilities: accuracy vs confidence per bin."""
    p = _preds(predictions)
    probs, labels = _t(p["probs"]), _t(p["labels"]).long()
    bins = int(num_bins or p.get("num_bins", 15))
    r = reliability(probs, labels, bins)
    lower, upper = r["bin_lower"].numpy(), r["bin_upper"].numpy()
    count = r["count"].numpy()
    has = count > 0
    fig = _figure(4.6, 4.6)
    ax, ax_n = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    ax.bar(lower[has], r["accuracy"].numpy()[has], width=(upper - lower)[has], align="edge",
           edgecolor="k", color="C0", label="accuracy")
    ax.bar(lower[has], (r["confidence"] - r["accuracy"]).numpy()[has],
           bottom=r["accuracy"].numpy()[has], width=(upper - lower)[has], align="edge",
           color="C3", alpha=0.35, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability ({bins} bins): ECE = {ece(probs, labels, bins):.4f}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax_n.bar(lower, count, width=upper - lower, align="edge", color="C7")
    ax_n.set_xlabel("confidence (max predictive probability)")
    ax_n.set_ylabel("count")
    ax_n.set_xlim(0, 1)
    return _save(fig, out)


# ------------------------------------------------------------------------------ uncertainty
def plot_uncertainty_histograms(predictions: Predictions, out: str | Path,
                                ood_name: str = "OOD", bins: int = 40) -> Path:
    """Predictive entropy and mutual information, in- vs out-of-distribution (density)."""
    p = _preds(predictions)
    has_ood = "ood_total" in p
    fig = _figure(8.0, 3.0)
    axes = fig.subplots(1, 2)
    for ax, key, label in ((axes[0], "total", "predictive entropy (nats)"),
                           (axes[1], "epistemic", "mutual information (nats)")):
        s_in = np.asarray(p[key], dtype=np.float64)
        s_out = np.asarray(p[f"ood_{key}"], dtype=np.float64) if has_ood else s_in[:0]
        hi = max(float(np.max(s_in, initial=0.0)), float(np.max(s_out, initial=0.0)), 1e-6)
        edges = np.linspace(0.0, hi, bins + 1)
        ax.hist(s_in, bins=edges, density=True, alpha=0.6, color="C0", label="in-distribution")
        title = label
        if has_ood:
            ax.hist(s_out, bins=edges, density=True, alpha=0.6, color="C1", label=ood_name)
            title += f": AUROC {auroc(_t(s_in), _t(s_out)):.3f}"
        if hi <= 1e-6:
            title += " (all zero: deterministic)"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("density")
    return _save(fig, out)


def plot_accuracy_coverage(predictions: Predictions, out: str | Path) -> Path:
    """Accuracy of the retained test inputs when keeping the least uncertain fraction."""
    p = _preds(predictions)
    probs, labels = _t(p["probs"]), _t(p["labels"]).long()
    fig = _figure(4.6, 3.6)
    ax = fig.subplots()
    for key, label in (("total", "predictive entropy"), ("epistemic", "mutual information"),
                       (None, "1 - max probability")):
        u = None if key is None else _t(p[key]).double()
        c = accuracy_coverage(probs, labels, u)
        ax.plot(c["coverage"].numpy(), c["accuracy"].numpy(), label=label)
    ax.set_xlabel("coverage (fraction of test inputs kept)")
    ax.set_ylabel("accuracy on the kept inputs")
    ax.set_xlim(0, 1)
    ax.set_title("Accuracy vs coverage (most certain first)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, out)


# ------------------------------------------------------------------------------ training
def _read_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    cols: dict[str, np.ndarray] = {}
    for key in rows[0] if rows else []:
        try:
            cols[key] = np.array([float(r[key]) if r[key] != "" else np.nan for r in rows])
        except ValueError:
            continue
    return cols


def plot_training_curve(run_dir: str | Path, out: str | Path) -> Path:
    """Training loss / NLL and train vs MC test accuracy over steps (``train.csv``,
    ``eval.csv``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "train.csv").is_file():
        raise FileNotFoundError(f"{run_dir} has no train.csv; is it a `bayescale train` run?")
    tr = _read_csv(run_dir / "train.csv")
    ev = _read_csv(run_dir / "eval.csv") if (run_dir / "eval.csv").is_file() else {}
    fig = _figure(8.0, 3.0)
    ax_l, ax_a = fig.subplots(1, 2)
    mk = "." if len(tr.get("step", ())) <= 20 else None  # a few rows: show the points
    ax_l.plot(tr["step"], tr["loss"], marker=mk, label="loss (NLL + beta KL / N)")
    ax_l.plot(tr["step"], tr["nll"], marker=mk, label="train NLL")
    if "test_nll" in ev:
        ax_l.plot(ev["step"], ev["test_nll"], "o-", label="test NLL (MC)")
    ax_l.set_yscale("log")
    ax_l.set_xlabel("step")
    ax_l.set_title("loss (nats)", fontsize=9)
    ax_l.legend(fontsize=7)
    ax_a.plot(tr["step"], tr["train_acc"], marker=mk, label="train accuracy")
    if "test_acc" in ev:
        ax_a.plot(ev["step"], ev["test_acc"], "o-", label="test accuracy (MC)")
    ax_a.set_xlabel("step")
    ax_a.set_title("accuracy", fontsize=9)
    ax_a.legend(fontsize=7)
    return _save(fig, out)


# ------------------------------------------------------------------------------ shift study
def _shift_label(kind: str) -> str:
    return {"rotation": "rotation (degrees)", "noise": "noise sd"}.get(
        kind, f"{kind.replace('_', ' ')} severity")


def _shift_figure(methods: Mapping[str, Mapping[str, Any]], title: str | None = None) -> Any:
    """The figure of :func:`plot_shift_curves` (not saved): axes ``[metric row, shift column]``."""
    if not methods:
        raise ValueError("no methods to plot: pass {name: {'per_shift': [...]}, ...}")
    for name, m in methods.items():
        if not m.get("per_shift"):
            raise ValueError(f"method {name!r} has no per_shift results to plot")
    kinds = list(dict.fromkeys(p["shift"] for m in methods.values() for p in m["per_shift"]))
    fig = _figure(4.2 * len(kinds), 6.4)
    axes = fig.subplots(2, len(kinds), squeeze=False)
    for j, kind in enumerate(kinds):
        for i, metric in enumerate(("accuracy", "ece")):
            ax = axes[i][j]
            for k, (name, m) in enumerate(methods.items()):
                pts = [p for p in m["per_shift"] if p["shift"] == kind]
                ax.plot([p["level"] for p in pts], [p[metric] for p in pts], marker="o", ms=3,
                        lw=1.4, label=name,
                        color=f"C{STUDY_ORDER.index(name) if name in STUDY_ORDER else k}")
            ax.set_xlabel(_shift_label(kind), fontsize=9)
            ax.set_ylabel(metric if metric == "accuracy" else "ECE (15 bins)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title or "accuracy and calibration under shift", fontsize=10)
    return fig


def plot_shift_curves(methods: Mapping[str, Mapping[str, Any]], out: str | Path,
                      title: str | None = None, dpi: int = _DPI) -> Path:
    """Accuracy (top row) and ECE (bottom row) against shift level: one column per shift kind,
    one line per method (Ovadia et al. 2019, Fig. 2).

    Args:
        methods: ``{name: {"per_shift": [{"shift", "level", "accuracy", "ece"}, ...]}}``, e.g. the
            ``methods`` of an uncertainty study result JSON; a name in :data:`STUDY_ORDER` keeps
            its colour whichever methods are present.
        out: the PNG to write.
        title: the figure title (default "accuracy and calibration under shift").
        dpi: resolution of the PNG.

    Raises:
        ValueError: no methods, or a method without ``per_shift`` results.
    """
    return _save(_shift_figure(methods, title), out, dpi)
