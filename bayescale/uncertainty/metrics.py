"""Evaluation metrics on predictive probabilities and uncertainty scores (pure tensor functions).

Conventions (chosen to match torch-uncertainty / torchmetrics so numbers are comparable):

* Inputs: probabilities ``probs`` (N, C) that sum to 1 over classes (not logits), integer labels
  ``y`` (N,) in [0, C). Per-sample probabilities are (T, N, C). Every function returns a Python
  float (or a dict of tensors for curves); all arithmetic runs in float64.
* Logs are natural: NLL and log-likelihoods are in nats.
* Brier score: sum over classes of the squared error to the one-hot label, mean over examples
  (range [0, 2]; torch-uncertainty ``BrierScore`` with ``reduction="mean"``).
* ECE: top-label confidence, ``num_bins`` equal-width bins [i/B, (i+1)/B), the last bin closed
  at 1; ECE = sum_b (n_b / N) |accuracy_b - confidence_b| (Guo et al. 2017; torchmetrics
  ``MulticlassCalibrationError(norm="l1")``, 15 bins in torch-uncertainty). torchmetrics puts
  confidences of exactly 1.0 in an extra bin of their own; here they belong to the last bin.
* OOD detection: out-of-distribution is the POSITIVE class and a HIGHER score means MORE OOD
  (e.g. predictive entropy, mutual information, or 1 - max prob); torch-uncertainty's routine
  labels OOD as 1 and scores it with -confidence. AUROC is the Mann-Whitney probability
  P(s_out > s_in) + 0.5 P(s_out = s_in); AUPR is the step-wise average precision
  sum_k (R_k - R_{k-1}) P_k over distinct thresholds (torchmetrics ``BinaryAveragePrecision``);
  FPR95 is the false-positive rate at the distinct threshold whose recall (TPR) is CLOSEST to
  0.95 (Hendrycks' ``fpr_and_fdr_at_recall``, as torch-uncertainty's ``FPR95``).
* Selective prediction: examples are kept in order of increasing uncertainty; AURC is the mean
  risk (error rate) over the coverages 1/N, ..., N/N (Geifman & El-Yaniv 2017), tied
  uncertainties entering together.

References:
    Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, arXiv:1706.04599.
    Brier, "Verification of forecasts expressed in terms of probability", 1950.
    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution
    Examples", ICLR 2017, arXiv:1610.02136.
    Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks", NeurIPS 2017.
    Sharma & Jennings 2020 / BPrune (spec section 3.3 step 7): mean single-sample accuracy and
    held-out log-likelihood.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "accuracy",
    "nll",
    "brier",
    "ece",
    "reliability",
    "auroc",
    "aupr",
    "fpr_at_95_tpr",
    "ood_metrics",
    "accuracy_coverage",
    "aurc",
    "mean_single_sample_accuracy",
    "heldout_log_likelihood",
    "classification_metrics",
]

PROB_SUM_TOL = 1e-3  # |sum_c p_c - 1| allowed (float32 softmax over 1000 classes: ~1e-6)


# ------------------------------------------------------------------ validation
def _check_finite(t: Tensor, name: str) -> None:
    bad = ~torch.isfinite(t)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} contains NaN/Inf at index {idx}; clean the inputs first")


def _check_probs(probs: Tensor, name: str = "probs", dims: tuple[int, ...] = (2,)) -> None:
    if not isinstance(probs, Tensor) or not probs.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of probabilities, got "
                        f"{type(probs).__name__ if not isinstance(probs, Tensor) else probs.dtype}")
    if probs.dim() not in dims:
        want = " or ".join({2: "(N, C)", 3: "(T, N, C)"}[d] for d in dims)
        raise ValueError(f"{name} must have shape {want}, got {tuple(probs.shape)}")
    if probs.shape[-1] < 1:
        raise ValueError(f"{name} needs at least one class, got shape {tuple(probs.shape)}")
    _check_finite(probs, name)
    if probs.numel() == 0:
        return
    if probs.min() < -PROB_SUM_TOL:
        raise ValueError(f"{name} has negative entries (min {probs.min().item():.3g}); pass "
                         "probabilities, e.g. torch.softmax(logits, -1), not logits")
    dev = (probs.double().sum(-1) - 1.0).abs()
    if dev.max() > PROB_SUM_TOL:
        idx = tuple(int(i) for i in (dev == dev.max()).nonzero()[0])
        raise ValueError(
            f"{name} must sum to 1 over classes (within {PROB_SUM_TOL}); row {idx} sums to "
            f"{1 + (probs.double().sum(-1)[idx] - 1).item():.6g}; pass torch.softmax(logits, -1)")


def _check_labels(labels: Tensor, n: int, num_classes: int, name: str = "labels") -> None:
    if (not isinstance(labels, Tensor) or labels.dtype.is_floating_point
            or labels.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor of class indices (N,), got "
                        f"{labels.dtype if isinstance(labels, Tensor) else type(labels).__name__}; "
                        "convert with labels.long()")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the probabilities, got "
                         f"{tuple(labels.shape)}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} must lie in [0, {num_classes - 1}] for {num_classes} classes, "
                         f"got range [{int(labels.min())}, {int(labels.max())}]; check "
                         "num_classes or the label encoding")


def _check(probs: Tensor, labels: Tensor, dims: tuple[int, ...] = (2,)) -> None:
    _check_probs(probs, "probs", dims)
    _check_labels(labels, probs.shape[-2], probs.shape[-1])
    if probs.shape[-2] == 0:
        raise ValueError("no examples: probs has N = 0 rows")


def _check_scores(scores: Tensor, name: str) -> Tensor:
    if not isinstance(scores, Tensor) or not (scores.is_floating_point() or scores.dtype in (
            torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)):
        raise TypeError(f"{name} must be a real tensor of scores (N,), got "
                        f"{scores.dtype if isinstance(scores, Tensor) else type(scores).__name__}")
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor (N,), got {tuple(scores.shape)}")
    _check_finite(scores, name)
    return scores.detach().double().cpu()


# ------------------------------------------------------------------ classification
def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Fraction of examples whose most probable class is the label."""
    _check(probs, labels)
    return (probs.argmax(-1) == labels).double().mean().item()


def nll(probs: Tensor, labels: Tensor, eps: float = 1e-12) -> float:
    """Mean negative log predictive probability of the label, in nats (p clamped at ``eps``)."""
    _check(probs, labels)
    picked = probs.double().gather(1, labels.view(-1, 1).long()).squeeze(1)
    return -torch.log(picked.clamp_min(eps)).mean().item()


def brier(probs: Tensor, labels: Tensor) -> float:
    """Brier score: mean over examples of sum_c (p_c - 1[y = c])^2, in [0, 2].

    Same convention as torch-uncertainty's ``BrierScore(reduction="mean")`` (sum over classes).
    """
    _check(probs, labels)
    p = probs.double()
    onehot = torch.zeros_like(p).scatter_(1, labels.view(-1, 1).long(), 1.0)
    return (p - onehot).square().sum(1).mean().item()


def reliability(probs: Tensor, labels: Tensor, num_bins: int = 15) -> dict[str, Tensor]:
    """Reliability-diagram bins of the top-label confidence (equal width on [0, 1]).

    Returns:
        dict of float64 tensors (num_bins,): ``bin_lower``, ``bin_upper``, ``confidence`` (mean
        top-label probability in the bin), ``accuracy`` (fraction correct in the bin) and
        ``count`` (examples in the bin). ``confidence`` and ``accuracy`` are 0 where
        ``count == 0``. Bin b holds confidences in [lower_b, upper_b), the last bin also 1.0.
    """
    _check(probs, labels)
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}")
    conf, pred = probs.double().max(-1)
    correct = (pred == labels).double()
    edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=torch.float64, device=conf.device)
    idx = (torch.bucketize(conf, edges, right=True) - 1).clamp_(0, num_bins - 1)
    count = torch.zeros(num_bins, dtype=torch.float64, device=conf.device)
    count.index_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros_like(count).index_add_(0, idx, conf)
    acc_sum = torch.zeros_like(count).index_add_(0, idx, correct)
    safe = count.clamp_min(1.0)
    return {"bin_lower": edges[:-1], "bin_upper": edges[1:], "confidence": conf_sum / safe,
            "accuracy": acc_sum / safe, "count": count}


def ece(probs: Tensor, labels: Tensor, num_bins: int = 15) -> float:
    """Expected calibration error: sum_b (n_b / N) |acc_b - conf_b| (top-label, equal width).

    References:
        Guo et al. 2017, arXiv:1706.04599, eq. (3); Naeini et al., AAAI 2015.
    """
    r = reliability(probs, labels, num_bins)
    return ((r["count"] / r["count"].sum()) * (r["accuracy"] - r["confidence"]).abs()).sum().item()


# ------------------------------------------------------------------ OOD detection
def _ranked_counts(scores_in: Tensor, scores_out: Tensor) -> tuple[Tensor, Tensor]:
    """Cumulative (true positives, false positives) at each distinct threshold, high to low.

    Threshold t flags every score >= t as OOD (positive). Returns two float64 tensors (K,).
    """
    s_in, s_out = _check_scores(scores_in, "scores_in"), _check_scores(scores_out, "scores_out")
    scores = torch.cat([s_out, s_in])
    is_out = torch.cat([torch.ones_like(s_out), torch.zeros_like(s_in)])
    order = torch.argsort(scores, descending=True, stable=True)
    scores, is_out = scores[order], is_out[order]
    # last position of each run of equal scores = one threshold
    last = torch.cat([torch.nonzero(scores[1:] != scores[:-1]).flatten(),
                      torch.tensor([scores.numel() - 1])])
    tp = is_out.cumsum(0)[last]
    fp = (last + 1).double() - tp
    return tp, fp


def auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """Area under the ROC curve for telling OOD (positive, higher score) from in-distribution.

    Equals the Mann-Whitney statistic P(s_out > s_in) + 0.5 * P(s_out == s_in).
    """
    tp, fp = _ranked_counts(scores_in, scores_out)
    tpr = torch.cat([tp.new_zeros(1), tp / tp[-1]])
    fpr = torch.cat([fp.new_zeros(1), fp / fp[-1]])
    return torch.trapezoid(tpr, fpr).item()  # trapezoids = ties counted one half


def aupr(scores_in: Tensor, scores_out: Tensor) -> float:
    """Average precision with OOD as the positive class: sum_k (R_k - R_{k-1}) P_k."""
    tp, fp = _ranked_counts(scores_in, scores_out)
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    return (torch.diff(recall, prepend=recall.new_zeros(1)) * precision).sum().item()


def fpr_at_95_tpr(scores_in: Tensor, scores_out: Tensor, recall_level: float = 0.95) -> float:
    """False-positive rate (in-distribution flagged OOD) at the threshold with TPR closest to 95%.

    Thresholds are the distinct scores down to the first one that reaches recall 1; on a tie in
    |recall - recall_level| the lowest such threshold wins (torch-uncertainty ``FPR95``, which
    takes the first argmin over the curve ordered from recall 1 down).
    """
    if not 0.0 <= recall_level <= 1.0:
        raise ValueError(f"recall_level must lie in [0, 1], got {recall_level}")
    tp, fp = _ranked_counts(scores_in, scores_out)
    recall = tp / tp[-1]
    stop = int(torch.searchsorted(tp, tp[-1]))  # first threshold with every OOD example caught
    gap = (recall[: stop + 1] - recall_level).abs()
    best = int(torch.nonzero(gap == gap.min()).flatten()[-1])  # ties: the lowest threshold
    return (fp[best] / fp[-1]).item()


def ood_metrics(scores_in: Tensor, scores_out: Tensor) -> dict[str, float]:
    """AUROC, AUPR and FPR95 (OOD positive, higher score = more OOD) in one dict."""
    return {"auroc": auroc(scores_in, scores_out), "aupr": aupr(scores_in, scores_out),
            "fpr95": fpr_at_95_tpr(scores_in, scores_out)}


# ------------------------------------------------------------------ selective prediction
def _uncertainty_or_default(probs: Tensor, uncertainty: Tensor | None) -> Tensor:
    if uncertainty is None:
        return 1.0 - probs.detach().double().max(-1).values.cpu()  # same ranking as -MSP
    u = _check_scores(uncertainty, "uncertainty")
    if u.shape != probs.shape[:1]:
        raise ValueError(f"uncertainty must have shape ({probs.shape[0]},), got {tuple(u.shape)}")
    return u


def accuracy_coverage(probs: Tensor, labels: Tensor,
                      uncertainty: Tensor | None = None) -> dict[str, Tensor]:
    """Accuracy of the retained examples when keeping those with the lowest uncertainty.

    Args:
        probs: (N, C) predictive probabilities.
        labels: (N,) integer labels.
        uncertainty: (N,) scores, higher = less certain (default ``1 - max prob``).

    Returns:
        dict of float64 tensors (K,), one entry per distinct uncertainty value in increasing
        order: ``coverage`` (fraction of examples with uncertainty <= that value) and
        ``accuracy`` (accuracy on them). The last entry is coverage 1.
    """
    _check(probs, labels)
    u = _uncertainty_or_default(probs, uncertainty)
    correct = (probs.argmax(-1) == labels).double().cpu()
    order = torch.argsort(u, stable=True)
    u, correct = u[order], correct[order]
    last = torch.cat([torch.nonzero(u[1:] != u[:-1]).flatten(), torch.tensor([u.numel() - 1])])
    kept = (last + 1).double()
    return {"coverage": kept / u.numel(), "accuracy": correct.cumsum(0)[last] / kept}


def aurc(probs: Tensor, labels: Tensor, uncertainty: Tensor | None = None) -> float:
    """Area under the risk-coverage curve: (1/N) sum_k risk(k/N), risk = error rate kept.

    Examples with tied uncertainty enter together, so each shares the risk at their common
    coverage. Lower is better; 0 for a perfect classifier.
    """
    rc = accuracy_coverage(probs, labels, uncertainty)
    group = torch.diff(rc["coverage"], prepend=rc["coverage"].new_zeros(1))  # fraction per value
    return (group * (1.0 - rc["accuracy"])).sum().item()


# ------------------------------------------------------------------ BPrune metrics, bundles
def mean_single_sample_accuracy(sample_probs: Tensor, labels: Tensor) -> float:
    """Mean over the T passes of each pass's argmax accuracy (BPrune step 7).

    This is not the accuracy of the MC-averaged prediction (:func:`accuracy` of the mean).
    """
    _check(sample_probs, labels, dims=(3,))
    return (sample_probs.argmax(-1) == labels).double().mean().item()


def heldout_log_likelihood(mean_probs: Tensor, labels: Tensor, eps: float = 1e-12) -> float:
    """Held-out log-likelihood mean_i log p(y_i | x_i) under the MC-averaged probs, in nats.

    BPrune's "held-out nats" (BPrune step 7); equals ``-nll(mean_probs, labels)``.
    """
    return -nll(mean_probs, labels, eps)


def classification_metrics(probs: Tensor, labels: Tensor, num_bins: int = 15) -> dict[str, float]:
    """accuracy, nll, brier and ece of the predictive (mean) probabilities in one dict.

    Args:
        probs: mean probabilities (N, C), or per-sample probabilities (T, N, C); for the latter
            the metrics use their mean over T and ``mean_single_sample_accuracy`` is added.
        labels: (N,) integer labels.
        num_bins: ECE bins.
    """
    _check(probs, labels, dims=(2, 3))
    mean = probs.double().mean(0) if probs.dim() == 3 else probs
    out = {"accuracy": accuracy(mean, labels), "nll": nll(mean, labels),
           "brier": brier(mean, labels), "ece": ece(mean, labels, num_bins)}
    if probs.dim() == 3:
        out["mean_single_sample_accuracy"] = mean_single_sample_accuracy(probs, labels)
    return out
