"""Per-draw predictions of a classifier summarised: metrics, per-input uncertainty, OOD scores.

Pure functions from the (T, N, C) probabilities of T weight draws to what ``bayescale evaluate``
writes to ``RUN/eval/`` (:data:`PREDICTION_KEYS`), and :func:`load_predictions` to read it back.
The decomposition is Depeweg et al. 2018 (arXiv:1710.07283); OOD scores follow Hendrycks & Gimpel
2017 (arXiv:1610.02136).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .metrics import aurc, classification_metrics, heldout_log_likelihood, ood_metrics
from .predict import decompose, timed_mc_predict

__all__ = ["EVAL_DIR", "PREDICTION_KEYS", "load_predictions", "mc_sample_probs", "summarize",
           "ood_summary", "decompose_draws", "first_index_per_class"]

EVAL_DIR = "eval"  # evaluate's own folder inside the run directory
PREDICTION_KEYS = {  # what predictions.npz holds (N test inputs, M OOD inputs, T draws, K classes)
    "probs": "(N, C) MC-averaged probabilities of the test set",
    "labels": "(N,) test labels",
    "total": "(N,) predictive entropy, nats", "aleatoric": "(N,) expected entropy, nats",
    "epistemic": "(N,) mutual information, nats",
    "sample_accuracy": "(T,) accuracy of each single weight draw",
    "class_index": "(K,) test index of the first example of each class",
    "class_true_probs": "(T, K) p(y_true | x, w_t) of those examples over the T draws",
    "class_images": "(K, ...) those inputs (for the image insets)",
    "ood_probs": "(M, C)", "ood_total": "(M,)", "ood_aleatoric": "(M,)", "ood_epistemic": "(M,)",
    "num_samples": "T", "num_bins": "ECE bins",
}


def mc_sample_probs(model: torch.nn.Module | list[torch.nn.Module], x: Tensor,
                    num_samples: int | str = "auto", *, batch_size: int = 1000,
                    desc: str = "MC", progress: bool = True, posterior: Any = None,
                    tol: float | None = None, max_samples: int = 300,
                    return_info: bool = False) -> tuple[Any, ...]:
    """Per-draw probabilities (T, N, C) and the seconds the T draws took (progress bar on).

    ``num_samples`` is a fixed T (the seed's 300, BPrune's 400) or ``"auto"``: draw until the MC
    standard error of the predictive probabilities is below ``tol``, at most ``max_samples``
    draws (:func:`~bayescale.uncertainty.mc_predict`); T is ``probs.shape[0]``. A deterministic
    network under ``"auto"`` gives T = 1. ``model`` may be a list of networks (weight samples
    collected by the Ke & Fan optimizer): then each member is one draw and T = its length
    (Bayesian model averaging). ``posterior`` (a :class:`~bayescale.nn.posterior.ParamPosterior`,
    e.g. an IVON run's) draws the weights of a deterministic ``model`` in place. With
    ``return_info`` the :class:`~bayescale.uncertainty.predict.MCInfo` comes third."""
    members = isinstance(model, (list, tuple))
    (probs, info), seconds = timed_mc_predict(
        list(model) if members else model, x, None if members else num_samples,
        batch_size=batch_size, return_samples=True, return_info=True, posterior=posterior,
        tol=tol, max_samples=max_samples, progress=progress, desc=desc)
    return (probs, seconds, info) if return_info else (probs, seconds)


def decompose_draws(sample_probs: Tensor) -> dict[str, Tensor]:
    """:func:`~bayescale.uncertainty.decompose`, exact for identical draws (a deterministic
    network repeated T times): those have mutual information exactly 0, not float round-off."""
    if torch.equal(sample_probs, sample_probs[:1].expand_as(sample_probs)):
        sample_probs = sample_probs[:1]
    return decompose(sample_probs)


def first_index_per_class(labels: Tensor, num_classes: int) -> Tensor:
    """Index of the first example of each class present (seed Fig. 4: one image per class)."""
    first = [int(torch.nonzero(labels == c)[0]) for c in range(num_classes)
             if bool((labels == c).any())]
    return torch.tensor(first, dtype=torch.int64)


def summarize(sample_probs: Tensor, labels: Tensor, num_bins: int = 15) -> dict[str, Any]:
    """Metrics and per-input uncertainty of per-draw probabilities (T, N, C) (pure).

    Returns:
        ``{"metrics": {...}, "arrays": {...}}``; the arrays are those of :data:`PREDICTION_KEYS`
        for the test set.
    """
    mean = sample_probs.double().mean(0).float()
    parts = decompose_draws(sample_probs)
    m = classification_metrics(sample_probs, labels, num_bins)
    m["heldout_log_likelihood"] = heldout_log_likelihood(mean, labels)
    m["aurc_entropy"] = aurc(mean, labels, parts["total"])
    m["mean_total"], m["mean_aleatoric"], m["mean_epistemic"] = (
        float(parts[k].double().mean()) for k in ("total", "aleatoric", "epistemic"))
    idx = first_index_per_class(labels, sample_probs.shape[-1])
    arrays = {"probs": mean, "labels": labels, **parts,
              "sample_accuracy": (sample_probs.argmax(-1) == labels).float().mean(1),
              "class_index": idx, "class_true_probs": sample_probs[:, idx, labels[idx]]}
    return {"metrics": m, "arrays": arrays}


def ood_summary(parts_in: dict[str, Tensor], parts_out: dict[str, Tensor]) -> dict[str, Any]:
    """OOD detection by predictive entropy and by mutual information (OOD = positive)."""
    return {"entropy": ood_metrics(parts_in["total"], parts_out["total"]),
            "mutual_information": ood_metrics(parts_in["epistemic"], parts_out["epistemic"])}



def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a ``predictions.npz`` (or of the run directory holding ``eval/``)."""
    path = Path(path)
    if path.is_dir():
        path = path / EVAL_DIR / "predictions.npz"
    if not path.is_file():
        raise FileNotFoundError(f"no predictions at {str(path)!r}; run `bayescale evaluate RUN` "
                                "first")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
