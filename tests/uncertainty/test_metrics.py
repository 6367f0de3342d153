"""Metrics against straightforward python-loop references on random inputs (ties included)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bayescale.uncertainty import metrics as M


def _random_probs(n: int, c: int, seed: int, sharp: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(sharp * torch.randn(n, c, generator=g, dtype=torch.float64), -1)
    labels = torch.randint(0, c, (n,), generator=g)
    return probs, labels


# ------------------------------------------------------------------ naive references
def ref_ece(probs, labels, num_bins):
    p, y = probs.numpy(), labels.numpy()
    conf, pred = p.max(1), p.argmax(1)
    total = 0.0
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        members = [i for i in range(len(y))
                   if lo <= conf[i] < hi or (b == num_bins - 1 and conf[i] == 1.0)]
        if members:
            acc = sum(pred[i] == y[i] for i in members) / len(members)
            avg_conf = sum(conf[i] for i in members) / len(members)
            total += len(members) / len(y) * abs(acc - avg_conf)
    return total


def ref_auroc(s_in, s_out):  # fraction of (out, in) pairs ranked correctly, ties one half
    wins = 0.0
    for o in s_out.tolist():
        for i in s_in.tolist():
            wins += 1.0 if o > i else 0.5 if o == i else 0.0
    return wins / (len(s_in) * len(s_out))


def _pr_points(s_in, s_out):
    """(recall, precision, fpr) at each distinct threshold from high to low."""
    points = []
    for t in sorted(set(s_in.tolist()) | set(s_out.tolist()), reverse=True):
        tp = sum(o >= t for o in s_out.tolist())
        fp = sum(i >= t for i in s_in.tolist())
        points.append((tp / len(s_out), tp / (tp + fp), fp / len(s_in)))
    return points


def ref_aupr(s_in, s_out):  # step-wise average precision
    ap, prev_recall = 0.0, 0.0
    for recall, precision, _ in _pr_points(s_in, s_out):
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def ref_fpr95(s_in, s_out):
    """Threshold whose recall is closest to 0.95; on ties the lowest such threshold (as
    torch-uncertainty's argmin over the reversed curve), scanning down to recall 1."""
    best = None
    for recall, _, fpr in _pr_points(s_in, s_out):
        if best is None or abs(recall - 0.95) <= best[0]:
            best = (abs(recall - 0.95), fpr)
        if recall == 1.0:
            break
    return best[1]


def _scores(seed: int, ties: bool):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: many ties within and across the two sets
        return (torch.randint(0, 6, (40,), generator=g).double(),
                torch.randint(2, 9, (25,), generator=g).double())
    return torch.randn(40, generator=g, dtype=torch.float64), \
        torch.randn(25, generator=g, dtype=torch.float64) + 1.0


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("seed", range(3))
def test_nll_brier_ece_match_loop_references(seed):
    probs, y = _random_probs(200, 5, seed)
    ref_nll = -sum(math.log(probs[i, y[i]].item()) for i in range(200)) / 200
    ref_brier = sum(sum((probs[i, c].item() - (c == y[i].item())) ** 2 for c in range(5))
                    for i in range(200)) / 200
    assert M.nll(probs, y) == pytest.approx(ref_nll, rel=1e-12)
    assert M.heldout_log_likelihood(probs, y) == pytest.approx(-ref_nll, rel=1e-12)
    assert M.brier(probs, y) == pytest.approx(ref_brier, rel=1e-12)
    for bins in (1, 10, 15):
        assert M.ece(probs, y, bins) == pytest.approx(ref_ece(probs, y, bins), abs=1e-12)


def test_ece_bins_include_boundaries_and_certainty():
    # confidences exactly on bin edges (0.4, 0.6) and exactly 1.0
    probs = torch.tensor([[0.4, 0.3, 0.3], [0.6, 0.4, 0.0], [1.0, 0.0, 0.0], [0.2, 0.2, 0.6]],
                         dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 2])
    r = M.reliability(probs, y, num_bins=5)
    torch.testing.assert_close(r["count"], torch.tensor([0.0, 0.0, 1.0, 2.0, 1.0],
                                                        dtype=torch.float64))
    assert M.ece(probs, y, 5) == pytest.approx(ref_ece(probs, y, 5))
    # a perfectly calibrated confident predictor has ECE 0; Brier of one-hot = 0; accuracy 1
    onehot = torch.eye(3, dtype=torch.float64)[y]
    assert M.ece(onehot, y) == 0 and M.brier(onehot, y) == 0 and M.accuracy(onehot, y) == 1


def test_brier_matches_torch_uncertainty_docstring_values():
    # torch-uncertainty's documented examples (sum over classes, mean over examples)
    assert M.brier(torch.tensor([[0.8, 0.2], [0.3, 0.7]]), torch.tensor([0, 1])) == \
        pytest.approx(0.13, abs=1e-6)
    assert M.brier(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]), torch.tensor([0, 2])) == \
        pytest.approx(0.52, abs=1e-6)


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True), (3, False)])
def test_ood_metrics_match_pairwise_and_stepwise_references(seed, ties):
    s_in, s_out = _scores(seed, ties)
    got = M.ood_metrics(s_in, s_out)
    assert got["auroc"] == pytest.approx(ref_auroc(s_in, s_out), abs=1e-12)
    assert got["aupr"] == pytest.approx(ref_aupr(s_in, s_out), abs=1e-12)
    assert got["fpr95"] == pytest.approx(ref_fpr95(s_in, s_out), abs=1e-12)


def test_ood_metric_orientation_and_extremes():
    s_in, s_out = torch.zeros(10), torch.ones(5)  # perfectly separated, OOD scored higher
    assert M.ood_metrics(s_in, s_out) == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    assert M.auroc(s_out, s_in) == 0.0  # swapped roles: OOD is the positive class
    assert M.auroc(torch.ones(4), torch.ones(3)) == 0.5  # all tied
    assert M.aupr(torch.ones(4), torch.ones(3)) == pytest.approx(3 / 7)  # = OOD prevalence
    # torch-uncertainty's FPR95 test case: recall 100/100 at conf>=0.9 with 50/100 in flagged
    s_in = torch.tensor([0.95] * 50 + [0.85] * 50)
    s_out = torch.full((100,), 0.9)
    assert M.fpr_at_95_tpr(s_in, s_out) == 0.5


def test_accuracy_coverage_and_aurc_against_loop():
    probs, y = _random_probs(60, 4, 7)
    u = torch.randint(0, 8, (60,)).double()  # ties
    rc = M.accuracy_coverage(probs, y, u)
    correct = (probs.argmax(-1) == y).tolist()
    values = sorted(set(u.tolist()))
    assert len(rc["coverage"]) == len(values)
    area = 0.0
    for k, v in enumerate(values):
        kept = [i for i in range(60) if u[i] <= v]
        acc = sum(correct[i] for i in kept) / len(kept)
        assert rc["coverage"][k].item() == pytest.approx(len(kept) / 60)
        assert rc["accuracy"][k].item() == pytest.approx(acc)
        area += sum(1 for i in range(60) if u[i] == v) / 60 * (1 - acc)
    assert M.aurc(probs, y, u) == pytest.approx(area)
    # without ties AURC = (1/N) sum_k risk(k/N), the Geifman & El-Yaniv definition
    u = torch.randperm(60).double()
    order = torch.argsort(u).tolist()
    risks = [1 - sum(correct[i] for i in order[:k]) / k for k in range(1, 61)]
    assert M.aurc(probs, y, u) == pytest.approx(sum(risks) / 60)
    # default uncertainty is 1 - max prob; an oracle uncertainty gives the minimal AURC
    oracle = torch.tensor([0.0 if c else 1.0 for c in correct], dtype=torch.float64)
    assert M.aurc(probs, y, oracle) <= M.aurc(probs, y) + 1e-12
    assert rc["coverage"][-1] == 1 and rc["accuracy"][-1].item() == pytest.approx(np.mean(correct))


def test_bprune_metrics_and_bundle():
    g = torch.Generator().manual_seed(0)
    sample_probs = torch.softmax(torch.randn(6, 30, 3, generator=g), -1)
    y = torch.randint(0, 3, (30,), generator=g)
    per_pass = [(sample_probs[t].argmax(-1) == y).float().mean().item() for t in range(6)]
    assert M.mean_single_sample_accuracy(sample_probs, y) == pytest.approx(np.mean(per_pass))
    bundle = M.classification_metrics(sample_probs, y, num_bins=10)
    mean = sample_probs.mean(0)
    assert bundle["accuracy"] == pytest.approx(M.accuracy(mean, y))
    assert bundle["nll"] == pytest.approx(M.nll(mean, y), rel=1e-6)
    assert bundle["ece"] == pytest.approx(M.ece(mean, y, 10), abs=1e-6)
    assert bundle["mean_single_sample_accuracy"] == pytest.approx(np.mean(per_pass))
    assert set(M.classification_metrics(mean, y)) == {"accuracy", "nll", "brier", "ece"}


def test_bad_inputs_name_the_fix():
    probs, y = _random_probs(5, 3, 0)
    with pytest.raises(ValueError, match="labels"):
        M.accuracy(probs, y[:4])
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        M.nll(probs, torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(TypeError, match="long"):
        M.brier(probs, y.double())
    with pytest.raises(ValueError, match="softmax"):
        M.ece(torch.randn(5, 3), y)  # logits, not probabilities
    with pytest.raises(ValueError, match="sum to 1"):
        M.ece(probs * 0.9, y)
    bad = probs.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/Inf at index \(2, 1\)"):
        M.brier(bad, y)
    with pytest.raises(ValueError, match="NaN/Inf"):
        M.auroc(torch.tensor([0.0, float("inf")]), torch.ones(2))
    with pytest.raises(ValueError, match="1-D"):
        M.aupr(torch.zeros(2, 2), torch.ones(2))
    with pytest.raises(ValueError, match=r"\(T, N, C\)"):
        M.mean_single_sample_accuracy(probs, y)


def test_accuracy_and_nll_match_reference():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    y = torch.tensor([0, 1, 1])
    assert M.accuracy(probs, y) == pytest.approx(1 / 3)
    ref = -(torch.log(torch.tensor(0.7)) + torch.log(torch.tensor(0.3))
            + torch.log(torch.tensor(0.4))) / 3
    assert M.nll(probs, y) == pytest.approx(ref.item())
    with pytest.raises(ValueError, match="labels"):
        M.accuracy(probs, torch.tensor([0, 1]))
