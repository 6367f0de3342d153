"""Inclusion frequencies and support stability (bayescale.kefan.stability) on hand-built weight
samples whose answers are known in closed form."""

import pytest
import torch

from bayescale.kefan.stability import inclusion_frequency, support_stability


def _samples():
    """Four samples of a [3, 4] Linear weight (groups "in" = its 4 columns): column 0 always
    has mean square 1, column 1 in samples 0 and 2 only, column 2 never (all zeros), column 3
    exactly at the threshold 0.25 in sample 1 and 0.01 elsewhere."""
    out = []
    for s in range(4):
        w = torch.zeros(3, 4)
        w[:, 0] = 1.0
        w[:, 1] = 2.0 if s in (0, 2) else 0.0
        w[:, 3] = 0.5 if s == 1 else 0.1
        out.append(w)
    return out


def test_inclusion_frequency_closed_form():
    freq = inclusion_frequency(_samples(), "in", 0.25)
    assert freq.tolist() == pytest.approx([1.0, 0.5, 0.0, 0.25])
    # threshold 0 counts every non-zero group: column 3 is non-zero in every sample
    assert inclusion_frequency(_samples(), "in", 0.0).tolist() == pytest.approx([1, .5, 0, 1])
    # grouping "out": rows 0..2 have mean squares (1 + 4 [+0.25 or 0.01]) / 4 or (1 + x) / 4
    rows = inclusion_frequency(_samples(), "out", 1.0)
    assert rows.tolist() == pytest.approx([0.5, 0.5, 0.5])  # only the samples with column 1


def test_inclusion_frequency_matches_a_naive_loop():
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(5, 7, generator=g) * torch.rand(1, 7, generator=g) for _ in range(6)]
    thr = 0.2
    want = [sum(float((w[:, j] ** 2).mean()) >= thr for w in ws) / len(ws) for j in range(7)]
    assert inclusion_frequency(ws, "in", thr).tolist() == pytest.approx(want)


def test_support_stability_summary():
    s = support_stability(torch.tensor([1.0, 0.5, 0.0, 0.25]))
    assert s["selected"] == [0, 1] and s["num_selected"] == 2
    assert s["undecided"] == [1, 3] and s["num_undecided"] == 2
    assert s["min_selected_freq"] == 0.5 and s["max_rejected_freq"] == 0.25
    assert s["stable"] is False
    clean = support_stability(torch.tensor([1.0, 0.95, 0.0, 0.05]))
    assert clean["stable"] is True and clean["selected"] == [0, 1] and clean["undecided"] == []
    assert support_stability(torch.tensor([1.0, 0.0]), band=0.0)["stable"] is True
    assert support_stability(torch.tensor([1.0, 0.95]), band=0.0)["undecided"] == [1]
    empty = support_stability(torch.zeros(3))
    assert empty["min_selected_freq"] is None and empty["stable"] is False  # nothing kept


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="at least one"):
        inclusion_frequency([], "in", 0.1)
    with pytest.raises(ValueError, match="threshold"):
        inclusion_frequency(_samples(), "in", -1.0)
    with pytest.raises(ValueError, match="band"):
        support_stability(torch.ones(2), band=0.5)


def test_pruned_signal_score_test():
    from bayescale.kefan.stability import pruned_signal

    # 12 input columns of a [3, 12] weight's gradient: all share the common part (1, 1, 1);
    # the pruned noise columns differ from it by 0.1 along one axis (+-e1, +-e2, +-e3 in turn),
    # pruned column 7 by 2 along e1, kept column 0 by 5 (kept columns are not tested)
    g = torch.ones(3, 12)
    axes = [(0, 1), (0, -1), (1, 1), (1, -1), (2, 1), (2, -1)]
    for j in range(12):
        a, sgn = axes[j % 6]
        g[a, j] += 0.1 * sgn
    g[0, 7] = 3.0
    g[1, 0] = 6.0
    kept = torch.zeros(12, dtype=torch.bool)
    kept[0] = True
    out = pruned_signal(g, kept, rel=5.0)
    # elementwise median over the pruned columns is (1, 1, 1) (ties of +-0.1 around it; torch
    # takes the lower middle value: 1 - 0.1 or 1), so noise distances are 0.1 to 0.2 and
    # column 7's is ~2: ratio >= 10
    assert out["pruned_with_signal"] == [7] and out["num_pruned"] == 11
    assert out["max_ratio"] >= 10
    g[0, 7] = 1.1  # no deviant pruned column left
    assert pruned_signal(g, kept, rel=5.0)["pruned_with_signal"] == []
    assert pruned_signal(g, kept)["pruned_with_signal"] == []  # default cut 8
    assert pruned_signal(g, torch.ones(12, dtype=torch.bool))["max_ratio"] is None
    with pytest.raises(ValueError, match="column"):
        pruned_signal(g, kept[:5])


def test_warmup_stall_closed_form():
    from bayescale.kefan.stability import warmup_stall

    # the failed interaction run without the spike guard: a low of 2.30 at epoch 46, then
    # a spike and a plateau at 3.456 to the end of the warm-up
    stalled = [4.14, 3.54, 3.09, 2.74, 2.30, 4.21, 3.65, 3.457, 3.456, 3.456]
    out = warmup_stall(stalled)
    assert out == {"stalled": True, "end_loss": 3.456, "min_loss": 2.30, "min_epoch": 4,
                   "epochs": 10}
    healthy = [4.1, 2.9, 2.2, 2.4, 1.7, 1.2, 1.0]  # noisy at the peak, lowest at the end
    assert warmup_stall(healthy)["stalled"] is False
    # the tolerance is relative to the low: 5% above it passes, just over does not
    assert warmup_stall([1.0, 1.05])["stalled"] is False
    assert warmup_stall([1.0, 1.0501])["stalled"] is True
    assert warmup_stall([1.0, 1.2], tol=0.25)["stalled"] is False
    # non-finite epochs are skipped; fewer than two finite ones decide nothing
    assert warmup_stall([float("nan"), 2.0, 1.0])["stalled"] is False
    assert warmup_stall([3.0])["stalled"] is False and warmup_stall([])["epochs"] == 0
    with pytest.raises(ValueError, match="tol"):
        warmup_stall([1.0, 2.0], tol=-0.1)
