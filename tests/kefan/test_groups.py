"""Group views, statistics and the spike-and-slab E-step against naive loops."""

import math

import pytest
import torch

from bayescale.kefan.groups import (
    expand_group_mask,
    group_mean_square,
    group_range,
    group_snr,
    group_view,
    hard_prune_groups,
    num_groups,
    spike_slab_estep,
    spike_slab_threshold,
)


def _naive_groups(w, grouping):
    out, cin = w.shape[:2]
    if grouping == "out":
        return [w[i].flatten() for i in range(out)]
    if grouping == "in":
        return [w[:, j].flatten() for j in range(cin)]
    return [w[i, j].flatten() for i in range(out) for j in range(cin)]


@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 3, 2), (3, 2, 5)])
@pytest.mark.parametrize("grouping", ["out", "in", "kernel"])
def test_statistics_match_naive_loops(shape, grouping):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g, dtype=torch.float64)
    sigma = torch.rand(shape, generator=g, dtype=torch.float64) + 0.1
    groups = _naive_groups(w, grouping)
    sgroups = _naive_groups(sigma, grouping)
    assert num_groups(w.shape, grouping) == len(groups)
    assert group_view(w, grouping).shape == (len(groups), w.numel() // len(groups))
    torch.testing.assert_close(group_mean_square(w, grouping),
                               torch.stack([(v**2).mean() for v in groups]))
    torch.testing.assert_close(group_range(w, grouping),
                               torch.stack([v.max() - v.min() for v in groups]))
    ratios = [v.norm() / s.norm() for v, s in zip(groups, sgroups, strict=True)]
    torch.testing.assert_close(group_snr(w, sigma, grouping), torch.stack(ratios))


@pytest.mark.parametrize("grouping", ["out", "in", "kernel"])
def test_expand_mask_selects_exactly_the_group(grouping):
    w = torch.arange(4 * 3 * 2 * 2, dtype=torch.float64).view(4, 3, 2, 2)
    n = num_groups(w.shape, grouping)
    for k in range(n):
        mask = torch.zeros(n, dtype=torch.bool)
        mask[k] = True
        sel = w[expand_group_mask(mask, w.shape, grouping)]
        assert torch.equal(sel.sort().values, _naive_groups(w, grouping)[k].sort().values)


def test_single_weight_snr_is_bprune_snr():
    mu, sigma = torch.tensor([[0.3, -2.0]]), torch.tensor([[0.1, 0.5]])
    torch.testing.assert_close(group_snr(mu, sigma, "kernel"), torch.tensor([3.0, 4.0]))


def test_estep_and_hard_prune_rules():
    w = torch.tensor([[0.0, 0.2], [0.0, 0.3]])  # columns: mean sq 0 and 0.065
    assert spike_slab_estep(w, "in", 0.01).tolist() == [False, True]
    assert hard_prune_groups(w, "in", 0.01).tolist() == [True, False]
    assert hard_prune_groups(w, "out", 0.25, rule="range").tolist() == [True, False]
    with pytest.raises(ValueError, match="soft_threshold"):
        spike_slab_estep(w, "in", -1.0)
    with pytest.raises(ValueError, match="grouping"):
        group_view(w, "rows")
    with pytest.raises(ValueError, match=">= 2 dims"):
        group_view(torch.ones(3), "out")


def test_spike_slab_threshold_is_the_equal_posterior_point():
    m, s1, s0, theta = 9, 0.5, 0.01, 0.2
    t = spike_slab_threshold(m, s1, s0, theta)

    def log_joint(ms, std, prior):  # log prior + log N(w_g; 0, std^2 I) with ||w||^2 = m * ms
        return math.log(prior) - m * math.log(std) - m * ms / (2 * std**2)

    assert log_joint(t, s1, theta) == pytest.approx(log_joint(t, s0, 1 - theta), abs=1e-9)
    assert log_joint(1.1 * t, s1, theta) > log_joint(1.1 * t, s0, 1 - theta)
