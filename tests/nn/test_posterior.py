"""``ParamPosterior``: in-place draws, the mean restored, draw moments, SNR, save and load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bayescale.nn.posterior import ParamPosterior


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()


def test_sample_writes_mean_plus_std_times_noise_and_restores():
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    std = [torch.full_like(p, 0.5) for p in net.parameters()]
    post = ParamPosterior.from_module(net, std)
    gen = torch.Generator().manual_seed(3)
    with post.sample(generator=gen):
        drawn = [p.detach().clone() for p in net.parameters()]
    ref = torch.Generator().manual_seed(3)
    for b, d, s in zip(before, drawn, std, strict=True):
        eps = torch.randn(b.shape, generator=ref, dtype=b.dtype)
        torch.testing.assert_close(d, b + s * eps, rtol=0, atol=1e-12)
    for b, p in zip(before, net.parameters(), strict=True):
        assert torch.equal(b, p)


def test_mean_restored_after_an_exception():
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    post = ParamPosterior.from_module(net, 1.0)
    with pytest.raises(RuntimeError, match="boom"), post.sample():
        raise RuntimeError("boom")
    assert all(torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))


def test_draw_moments_match_mean_and_std():
    p = nn.Parameter(torch.zeros(20000, dtype=torch.float64))
    post = ParamPosterior([p], [torch.full_like(p, 2.0)], [torch.full_like(p, 0.3)])
    with post.sample(generator=torch.Generator().manual_seed(0)):
        x = p.detach().clone()
    se_mean = 0.3 / len(x) ** 0.5
    assert abs(x.mean().item() - 2.0) < 5 * se_mean
    se_std = 0.3 / (2 * len(x)) ** 0.5
    assert abs(x.std().item() - 0.3) < 5 * se_std


def test_snr_and_round_trip(tmp_path):
    net = _net()
    std = [torch.rand_like(p) + 0.1 for p in net.parameters()]
    post = ParamPosterior.from_module(net, std)
    for s, m, sd in zip(post.snr(), post.mean, std, strict=True):
        torch.testing.assert_close(s, m.abs() / sd)
    assert list(post.named_snr()) == [n for n, _ in net.named_parameters()]
    post.save(tmp_path / "posterior.pt")
    back = ParamPosterior.load(tmp_path / "posterior.pt", net)
    for a, b in zip(post.std + post.mean, back.std + back.mean, strict=True):
        assert torch.equal(a, b)


def test_shape_mismatch_is_refused():
    p = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        ParamPosterior([p], [torch.zeros(2)], [torch.ones(3)])
